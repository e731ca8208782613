"""The exit codes of every `nodeguard` command and of the exec probe (`python -m nodeguard.health`).

One table: the CLI modules and the probe exit with these, and README's exit-code table is held to
it by tests/unit/test_exit_codes.py. Standard library only (the probe imports it).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """A command's outcome, as its exit status. Each member's `__doc__` says when it is used."""

    def __new__(cls, value: int, doc: str) -> ExitCode:
        member = int.__new__(cls, value)
        member._value_ = value
        member.__doc__ = doc
        return member

    OK = (0, "Success: no rule fails (`check`), the heartbeat is fresh (`health`), the event chain is "
             "intact (`events verify`), the rules are in place (`firewall`).")
    FAILED = (1, "The command ran and found a problem: a failing rule at or above `--fail-on`, a stale or "
                 "missing heartbeat, a broken event chain, firewall rules that differ from the policy or could not be "
                 "applied or removed.")
    USAGE = (2, "Nothing was done: a wrong flag or id, an invalid or unreadable policy or input file, no "
                "usable firewall backend, or host writes refused.")
