"""`python -m nodeguard` and the `nodeguard` command.

`nodeguard version` is answered here, before the CLI is built: the fastest path for the one
command scripts call in loops. `nodeguard check` forks its Docker API reader here too, before the
CLI is built, so the reader's import of the Docker SDK overlaps the ~60 ms of click and the CLI
(nodeguard.api_prefetch). Everything else goes to nodeguard.cli.
"""

from __future__ import annotations

import sys


def _may_read_the_daemon(args: list[str]) -> bool:
    """False when `check`'s arguments leave the runtime control out for sure (--only of others, --help)."""
    only: list[str] = []
    for i, arg in enumerate(args):
        if arg in ("--help", "-h"):
            return False
        if arg == "--only" and i + 1 < len(args):
            only.append(args[i + 1])
        elif arg.startswith("--only="):
            only.append(arg.removeprefix("--only="))
    return not only or "runtime" in only


def main() -> None:
    if sys.argv[1:] == ["version"]:
        from nodeguard._version import __version__

        sys.stdout.write(__version__ + "\n")
        return
    checking = sys.argv[1:2] == ["check"]
    if checking and _may_read_the_daemon(sys.argv[2:]):
        from nodeguard.api_prefetch import start_early

        start_early()
    from nodeguard.cli import main as cli_main

    if not checking:
        cli_main()
        return
    try:
        cli_main()
    except SystemExit as exc:
        _exit_now(exc.code)
    _exit_now(0)


def _exit_now(code: object) -> None:
    """End a one-shot `check` without tearing the interpreter down: its report is written (and
    an --output file renamed into place), its reader reaped; freeing 250 modules' objects one by
    one would add ~35 ms (a tenth of `check`) for nothing. What an orderly exit would still do is
    done here: the standard streams flushed, the log handlers closed, the exit code kept."""
    import logging
    import os

    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): printed, status 1, as the interpreter would
        print(code, file=sys.stderr)
        status = 1
    prefetch = sys.modules.get("nodeguard.api_prefetch")
    reader = prefetch.take_early() if prefetch is not None else None
    if reader is not None:  # forked, never taken (a usage error): atexit will not run to end it
        reader.close()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away (`check | head`), a closed stream
            status = status or 1
    os._exit(status)


if __name__ == "__main__":
    main()
