"""click options built from nodeguard.settings, and the help layout every nodeguard command shares.

An option made here carries no click `envvar`: its variable is read by the setting's one reader
(`Setting.read`), so click and nodeguard can never disagree on which variable wins or how a value
is spelled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from nodeguard.settings import Setting

F = TypeVar("F", bound=Callable[..., Any])

# A terminal's width up to this: help text wraps no narrower than 80, whatever the caller's terminal.
CONTEXT_SETTINGS: dict[str, Any] = {"max_content_width": 120}


class PanelOption(click.Option):
    """An option listed under its own heading in --help ("Event export"), after the others."""

    def __init__(self, *args: Any, panel: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.panel = panel


class DocArgument(click.Argument):
    """A positional argument with a line of help (click before 8.5 has none for arguments)."""

    def __init__(self, *args: Any, doc: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.doc = doc


def _first_paragraph(command: click.Command, limit: int) -> str:
    # A group's command list shows the whole first paragraph (click cuts it at the first sentence,
    # which would drop `check`'s exit codes).
    if command.short_help or not command.help:
        return click.Command.get_short_help_str(command, limit)
    return " ".join(command.help.split("\n\n", 1)[0].split())


class Command(click.Command):
    """Help as the typer CLI wrote it: the arguments, then the options, then each panel of options."""

    def get_short_help_str(self, limit: int = 45) -> str:
        return _first_paragraph(self, limit)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        args = [(p.human_readable_name, p.doc) for p in self.get_params(ctx) if isinstance(p, DocArgument)]
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        panels: dict[str | None, list[tuple[str, str]]] = {None: []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None and isinstance(param, click.Option):
                panels.setdefault(getattr(param, "panel", None), []).append(record)
        for panel, records in panels.items():
            if records:
                with formatter.section(panel or "Options"):
                    formatter.write_dl(records)


class Group(click.Group):
    """A command group: --help when called without a command (exit 2: nothing was done)."""

    command_class = Command
    group_class = type

    def get_short_help_str(self, limit: int = 45) -> str:
        return _first_paragraph(self, limit)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Printed on stdout, exit 2, whatever the click version (8.2 moved it to stderr).
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            click.echo(ctx.get_help(), color=ctx.color)
            ctx.exit(2)
        return super().parse_args(ctx, args)


def group(name: str, help: str) -> Group:
    return Group(name, help=help, no_args_is_help=True, context_settings=CONTEXT_SETTINGS)


def _click_type(s: Setting) -> click.ParamType[Any]:
    if s.choices:
        return click.Choice(s.choices)
    if s.parse is Path:
        return click.Path(path_type=Path)
    if s.parse is float:
        return click.FloatRange(min=s.minimum) if s.minimum is not None else click.FLOAT
    if s.parse is int:
        return click.IntRange(min=int(s.minimum)) if s.minimum is not None else click.INT
    return click.STRING


def setting_option(s: Setting, *, help: str | None = None, resolve: bool = True,
                   panel: str | None = None) -> Callable[[F], F]:
    """The option of setting `s`.

    resolve: the command gets the resolved value (the flag, else the variable, else the default); a
    variable that does not parse is a usage error naming it (exit 2). Without: the command gets
    None when the flag is not given, and hands it to a reader that reads the variables itself
    (ExportOptions.from_env).
    """
    if s.flag is None:
        raise ValueError(f"setting {s.field} has no flag")

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        given = ctx.get_parameter_source(param.name or s.field) is ParameterSource.COMMANDLINE
        if given and value is not None and s.choices:
            value = s.parse(value)  # the string click checked against the choices, as the setting's type
        if not resolve:
            return value  # None unless given
        try:
            return s.resolve(value if given else None)  # click's `value` otherwise is the default, shown in --help
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None

    kwargs: dict[str, Any] = {"help": (help or s.help) + s.env_help, "callback": callback, "cls": PanelOption,
                              "panel": panel}
    if resolve:
        kwargs.update(default=s.default, show_default=s.default is not None)
    else:
        kwargs["default"] = None
    if "/" in s.flag:
        kwargs["is_flag"] = True
    else:
        kwargs["type"] = _click_type(s)
    decls: Sequence[str] = [s.flag]
    return click.option(*decls, s.field, **kwargs)
