"""The short fuzz run CI does: every seed replayed, then ~15 s of coverage-guided atheris over all targets.

A crash, a hang (10 s per input) or an allocation above 2 GiB fails the test with libFuzzer's
report, which names the input it saved (`crash-<sha1>`); replay it with
`.venv/bin/python -m tests.fuzz.fuzz_all -runs=0 crash-<sha1>`.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import CORPUS, TARGETS, seeds_folder
from tests.support.sandbox import require

REPO = Path(__file__).resolve().parents[2]
FUZZ_SECONDS = 15


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seed_corpus_replays_cleanly(name: str) -> None:
    seeds = sorted((CORPUS / name).iterdir())
    assert seeds, f"tests/fuzz/corpus/{name}/ has no seeds"
    for seed in seeds:
        TARGETS[name](seed.read_bytes())


def test_every_target_has_its_atheris_script() -> None:
    for name in TARGETS:
        assert (REPO / f"tests/fuzz/fuzz_{name}.py").is_file()


def test_short_fuzz_run_of_every_target_finds_no_crash(tmp_path: Path) -> None:
    require(importlib.util.find_spec("atheris") is not None, "atheris is not installed (pip install -e '.[test]')")
    new = tmp_path / "new"  # units the fuzzer finds go here, never into the checked-in corpus
    new.mkdir()
    seeds = seeds_folder("all", tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.fuzz_all", f"-max_total_time={FUZZ_SECONDS}", "-print_final_stats=1",
         f"-artifact_prefix={tmp_path}/", str(new), str(seeds)],
        cwd=REPO, capture_output=True, text=True, timeout=FUZZ_SECONDS * 8)
    report = proc.stderr[-6000:]
    assert proc.returncode == 0, f"the fuzzer found a crash:\n{report}"
    runs = re.search(r"stat::number_of_executed_units: (\d+)", proc.stderr)
    assert runs and int(runs.group(1)) > 100, report
    print(f"fuzz_all: {runs.group(1)} executions in {FUZZ_SECONDS} s, no crash")
