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
    if sys.argv[1:2] == ["check"] and _may_read_the_daemon(sys.argv[2:]):
        from nodeguard.api_prefetch import start_early

        start_early()
    from nodeguard.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
