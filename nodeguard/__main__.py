"""`python -m nodeguard` and the `nodeguard` command.

`nodeguard version` is answered here, before the CLI is built: the fastest path for the one
command scripts call in loops. Everything else goes to nodeguard.cli.
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["version"]:
        from nodeguard._version import __version__

        sys.stdout.write(__version__ + "\n")
        return
    from nodeguard.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
