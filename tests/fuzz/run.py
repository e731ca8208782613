"""The atheris driver behind every `fuzz_<target>.py`: libFuzzer over one target of targets.py.

    .venv/bin/python -m tests.fuzz.fuzz_policy -max_total_time=60
    .venv/bin/python -m tests.fuzz.fuzz_policy -runs=0 crash-<sha1>     # replay one input
    .venv/bin/python -m tests.fuzz.fuzz_all -max_total_time=15           # every target, one process

`fuzz_all` is what CI runs: libFuzzer can fuzz one function per process, so its first byte picks
the target and the rest is that target's input; its seeds are every target's, prefixed so.

With no corpus folder given, new inputs go to a temporary folder and the checked-in seeds in
tests/fuzz/corpus/<target>/ are read, never written. Per-input limits: 10 s and 2 GiB, so a hang
or an unbounded allocation is reported as a crash.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris


def main(name: str, argv: list[str] | None = None) -> None:
    with atheris.instrument_imports(include=["nodeguard"]):
        from tests.fuzz.targets import TARGETS, all_targets, seeds_folder
    target = TARGETS[name] if name != "all" else all_targets()
    args = list(sys.argv if argv is None else argv)
    if not any(a.startswith("-timeout=") for a in args):
        args.append("-timeout=10")
    if not any(a.startswith("-rss_limit_mb=") for a in args):
        args.append("-rss_limit_mb=2048")
    if not [a for a in args[1:] if not a.startswith("-")]:
        work = Path(tempfile.mkdtemp(prefix=f"ng-fuzz-{name}-"))
        (work / "new").mkdir()
        args += [str(work / "new"), str(seeds_folder(name, work))]
    atheris.Setup(args, target)
    atheris.Fuzz()
