"""`python -m nodeguard` and the `nodeguard` command.

`nodeguard version` is answered here, before the CLI is built: the fastest path for the one
command scripts call in loops. Everything else goes to nodeguard.cli.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    # pydantic looks for plugins in the entry points of every installed distribution when it builds
    # its first model (~8 ms for ~90 distributions) and imports whatever it finds into this root
    # process. nodeguard uses none; its policy is validated as written, not as a plugin rewrites it.
    # setdefault: an operator who sets the variable (even empty: every plugin on) decides.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    if sys.argv[1:] == ["version"]:
        from nodeguard._version import __version__

        sys.stdout.write(__version__ + "\n")
        return
    from nodeguard.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
