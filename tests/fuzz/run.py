"""The atheris driver behind every `fuzz_<target>.py`: libFuzzer over one target of targets.py.

    .venv/bin/python -m tests.fuzz.fuzz_policy -max_total_time=60
    .venv/bin/python -m tests.fuzz.fuzz_policy -runs=0 crash-<sha1>     # replay one input

With no corpus folder given, new inputs go to a temporary folder and the checked-in seeds in
tests/fuzz/corpus/<target>/ are read, never written. Per-input limits: 10 s and 2 GiB, so a hang
or an unbounded allocation is reported as a crash.
"""

from __future__ import annotations

import sys
import tempfile

import atheris


def main(name: str, argv: list[str] | None = None) -> None:
    with atheris.instrument_imports(include=["nodeguard"]):
        from tests.fuzz.targets import CORPUS, TARGETS
    args = list(sys.argv if argv is None else argv)
    if not any(a.startswith("-timeout=") for a in args):
        args.append("-timeout=10")
    if not any(a.startswith("-rss_limit_mb=") for a in args):
        args.append("-rss_limit_mb=2048")
    if not [a for a in args[1:] if not a.startswith("-")]:
        args += [tempfile.mkdtemp(prefix=f"ng-fuzz-{name}-"), str(CORPUS / name)]
    atheris.Setup(args, TARGETS[name])
    atheris.Fuzz()
