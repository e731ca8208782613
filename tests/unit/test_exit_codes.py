"""The exit-code table: one enum, and README's table says the same."""

from __future__ import annotations

import re
from pathlib import Path

from nodeguard.exit_codes import ExitCode

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| (\d+) \| `(\w+)` \| (.+) \|$")


def _readme_table() -> dict[int, tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    return {int(m[1]): (m[2], m[3]) for line in section.splitlines() if (m := ROW.match(line))}


def test_readme_exit_code_table_matches_the_enum() -> None:
    assert _readme_table() == {int(c): (c.name, c.__doc__) for c in ExitCode}


def test_every_code_is_documented_and_the_values_stay() -> None:
    assert [(c.name, int(c)) for c in ExitCode] == [("OK", 0), ("FAILED", 1), ("USAGE", 2)]
    assert all(c.__doc__ and c.__doc__ != ExitCode.__doc__ for c in ExitCode)
