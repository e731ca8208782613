"""Time and peak memory of hostile-sized inputs: `sudo .venv/bin/python -m tests.bench.bench_limits`
(`--commands`: only the second table).

The second table runs the real commands as processes on those inputs: `nodeguard check` and
`nodeguard run` (the agent, until its pass is done), each's peak RSS read from wait4(). Its floor
row is a bare interpreter that only imports what `check` and `run` import, measured the same way in
the same run: what is left above it is the input's cost (issue 12: every row under 200 MiB).

Each case runs in a fresh interpreter so its peak RSS is its own: "peak" is the process's maximum
resident set, "added" is that minus the same interpreter's RSS after imports, before the case.
The answers themselves are asserted in tests/unit/test_limits.py; here only the cost is measured.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PRELUDE = """
import json, os, resource, shutil, sys, tempfile, time
from pathlib import Path
from nodeguard.host.accounts import load_accounts
from nodeguard.controls.base import Context
from nodeguard.controls.daemon_config import DaemonConfigControl
from nodeguard.controls.docker_group import DockerGroupControl
from nodeguard.host import HostRoot
from nodeguard.policy import PolicyError, load_policy, parse_policy
from nodeguard.host.shadow import remove_group_member
from tests.support.bigfiles import big_daemon_json, big_group, big_gshadow, big_passwd, big_policy
from tests.support.sandbox import Sandbox, make_sandbox

def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

root = Path(sys.argv[1])
sb = make_sandbox(root) if not (root / "etc").exists() else Sandbox(root)
host = HostRoot(root)
"""

# name -> (input size description, setup code, measured code); `result` is printed as the answer.
CASES: dict[str, tuple[str, str, str]] = {
    "daemon.json 50 MB": ("50 MiB", """
sb.path("/etc/docker/daemon.json").write_bytes(big_daemon_json(50 * 1024 * 1024))
# -- in the measured process --
ctx = Context(host, load_policy())
""", """
c = DaemonConfigControl()
f = {x.rule: x.status.value for x in c.evaluate(c.observe(ctx), ctx.policy)}
result = f"valid-json {f['valid-json']}, plaintext-2375 {f['plaintext-2375']}"
"""),
    "/etc/group: docker with 100,000 members": ("1.1 MB", """
sb.write("/etc/group", big_group(100_000))
sb.write("/etc/gshadow", big_gshadow(100_000))
# -- in the measured process --
ctx = Context(host, load_policy())
""", """
c = DockerGroupControl()
fails = [x for x in c.evaluate(c.observe(ctx), ctx.policy) if x.status.value == "fail"]
result = f"{len(fails)} members refused"
"""),
    "/etc/passwd: 100,000 users": ("5.8 MB", """
sb.write("/etc/passwd", big_passwd(100_000))
# -- in the measured process --
ctx = Context(host, load_policy())
""", """
c = DockerGroupControl()
f = [x for x in c.evaluate(c.observe(ctx), ctx.policy) if x.rule == "primary-group" and x.status.value == "fail"]
result = f"{len(load_accounts(host).users)} users, {len(f)} with docker as primary group"
"""),
    "remove 1 member from the 100,000 (enforce)": ("1.1 MB x2", """
sb.write("/etc/group", big_group(100_000))
sb.write("/etc/gshadow", big_gshadow(100_000), 0o640)
""", """
changed = remove_group_member(host, "docker", "user50000")
result = f"rewrote {changed}"
"""),
    "remove all 100,000 members (enforce, batched)": ("1.1 MB x2", """
sb.write("/etc/group", big_group(100_000))
sb.write("/etc/gshadow", big_gshadow(100_000), 0o640)
# -- in the measured process --
from nodeguard.structs import Mode
policy = load_policy().with_mode(Mode.ENFORCE)
ctx = Context(host, policy)
c = DockerGroupControl()
obs = c.observe(ctx)
failing = [x for x in c.evaluate(obs, policy) if x.status.value == "fail" and x.rule == "member-allowed"]
""", """
outcomes = c.remediate_many(ctx, failing, obs)
result = f"{sum(o.changed for o in outcomes)} removed, group line now {len(sb.read('/etc/group'))} bytes"
"""),
    "policy of 1 MiB": ("1 MiB", """
(root / "policy.yaml").write_text(big_policy(1024 * 1024))
# -- in the measured process --
text = (root / "policy.yaml").read_text()
""", """
p = parse_policy(text, "big.yaml")
result = f"{len(p.spec.controls.docker_group.allowed_members)} allowed members"
"""),
    "policy: YAML alias bomb (9 x 9 levels)": ("0.4 KB", """
# -- in the measured process --
lines = ['a0: &a0 ["lol"]'] + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
text = "x:\\n" + "\\n".join("  " + ln for ln in lines) + \\
    "\\napiVersion: nodeguard.io/v1alpha1\\nkind: NodeGuardPolicy\\nspec:\\n  mode: *a9\\n"
""", """
try:
    parse_policy(text, "bomb.yaml")
    result = "accepted?!"
except PolicyError as exc:
    result = "refused: " + str(exc).split(": ", 2)[-1][:40]
"""),
    "inotify: 100,000 events in a burst": ("100k events", """
# -- in the measured process --
import threading
from nodeguard.watch import FolderWatcher
folder = root / "burst"
folder.mkdir()
fired = [0]
lock = threading.Lock()
def trigger(target, reason):
    with lock:
        fired[0] += 1
w = FolderWatcher({folder: {"daemon-config"}})
w.start(trigger)
""", """
for i in range(25_000):  # create + modify + close + delete: 4 events each
    p = folder / f"f{i % 64}"
    p.write_bytes(b"x")
    p.unlink()
deadline = time.monotonic() + 60
last = -1
while time.monotonic() < deadline and fired[0] != last:
    last = fired[0]
    time.sleep(0.5)
w.stop()
result = f"{fired[0]} triggers delivered"
"""),
}

# Files are written by a first interpreter, measured by a second: generating 50 MB of JSON must not
# count as the audit's peak memory.
SETUP_SCRIPT = """
{prelude}
{setup}
"""
CASE_SCRIPT = """
{prelude}
{setup}
base = rss_mib()
t0 = time.perf_counter()
{measured}
elapsed = time.perf_counter() - t0
shutil.rmtree(root, ignore_errors=True)
print(json.dumps({{"seconds": elapsed, "peak": rss_mib(), "added": rss_mib() - base, "result": result}}))
"""


def run_case(setup: str, measured: str) -> dict[str, object]:
    root = tempfile.mkdtemp(prefix="ng-bench-")
    files, _, in_process = textwrap.dedent(setup).partition("# -- in the measured process --\n")
    script = SETUP_SCRIPT.format(prelude=PRELUDE, setup=files)
    subprocess.run([sys.executable, "-c", script, root], cwd=REPO, check=True, timeout=300)
    script = CASE_SCRIPT.format(prelude=PRELUDE, setup=in_process, measured=textwrap.dedent(measured))
    proc = subprocess.run([sys.executable, "-c", script, root], cwd=REPO, capture_output=True, text=True, timeout=300)
    shutil.rmtree(root, ignore_errors=True)
    if proc.returncode != 0:
        return {"seconds": float("nan"), "peak": float("nan"), "added": float("nan"),
                "result": f"FAILED: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"}
    out: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def command_peak(args: list[str], *, until: object = None, timeout: float = 300,
                 prefix: list[str] | None = None) -> tuple[float, float, str]:
    """(seconds, peak RSS MiB, last stderr line) of `python -m nodeguard ...`; a `run` is stopped
    with SIGTERM once `until()` holds."""
    import signal
    import time

    t0 = time.perf_counter()
    proc = subprocess.Popen([*(prefix or []), sys.executable, "-m", "nodeguard", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if until is not None:
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline and proc.poll() is None:  # type: ignore[operator]
            time.sleep(0.1)
        elapsed = time.perf_counter() - t0
        time.sleep(3)  # the pass's outcome events, then a steady agent
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if until is None:
        elapsed = time.perf_counter() - t0
    err = proc.stderr.read() if proc.stderr else ""
    last = err.strip().splitlines()[-1] if err.strip() else ""
    return elapsed, usage.ru_maxrss / 1024, last


def _agent_done(run_mode: str, group: Path, state: Path, marker: str) -> bool:
    """The agent's pass over the big input is over: the group is clean (enforce) or the state names it."""
    if run_mode == "enforce":
        return "docker:x:990:\n" in group.read_text()
    findings = state / "findings.json"
    return findings.exists() and marker in findings.read_text()


def commands() -> list[tuple[str, float, float, str]]:
    sys.path.insert(0, str(REPO))
    from tests.support.bigfiles import big_daemon_json, big_group, big_gshadow
    from tests.support.sandbox import make_sandbox

    out = []
    floor = subprocess.Popen([sys.executable, "-c", FLOOR_IMPORTS], cwd=REPO)
    _, _, usage = os.wait4(floor.pid, 0)
    out.append(("floor: python + nodeguard's imports", float("nan"), usage.ru_maxrss / 1024, ""))
    if os.geteuid() != 0:
        return [*out, ("(agent cases need root: skipped)", float("nan"), float("nan"), "")]
    for label, mode in (("run --mode observe: a small host (agent floor)", "small-run"),
                        ("check: docker group of 100,000 members", None),
                        ("run --mode observe: group of 100,000", "observe"),
                        ("run --mode enforce: group of 100,000", "enforce"),
                        ("check: daemon.json 50 MB", "json-check"),
                        ("run --mode observe: daemon.json 50 MB", "json-run")):
        root = Path(tempfile.mkdtemp(prefix="ng-bench-"))
        sb = make_sandbox(root / "host")
        if mode == "small-run":
            sb.write("/etc/docker/daemon.json", "{}\n")
        elif mode in ("json-check", "json-run"):
            sb.path("/etc/docker/daemon.json").write_bytes(big_daemon_json(50 * 1024 * 1024))
        else:
            sb.write("/etc/group", big_group(100_000))
            sb.write("/etc/gshadow", big_gshadow(100_000), 0o640)
            # An engine to audit: without one, `check` says "no Docker engine" and reads nothing.
            sb.write("/etc/docker/daemon.json", "{}\n")
        state = root / "state"
        events = root / "events.jsonl"
        try:
            if mode is None or mode == "json-check":
                secs, peak, last = command_peak(["check", "--host-root", str(sb.root), "--format", "json"])
                answer = ""
            else:
                run_mode = "observe" if mode in ("json-run", "small-run") else mode
                marker = "daemon-config" if mode in ("json-run", "small-run") else "member-allowed"
                done = functools.partial(_agent_done, run_mode, sb.path("/etc/group"), state, marker)
                netns = f"ngl-{os.urandom(3).hex()}"
                subprocess.run(["ip", "netns", "add", netns], check=True)
                try:
                    # In a network namespace of its own: the firewall control never touches this machine's.
                    secs, peak, last = command_peak(
                        ["run", "--host-root", str(sb.root), "--state-dir", str(state), "--events-file",
                         str(events), "--mode", run_mode, "--log-level", "error"], until=done,
                        prefix=["nsenter", f"--net=/var/run/netns/{netns}"])
                finally:
                    subprocess.run(["ip", "netns", "del", netns], check=False)
                n = sum(1 for line in events.read_text().splitlines()
                        if '"member-allowed"' in line) if events.exists() else 0
                answer = f"{n} member-allowed events"
            out.append((label, secs, peak, answer or last[:60]))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(f"  {label}: {out[-1][1]:.2f} s", file=sys.stderr, flush=True)
    return out


# What `check` and `run` import before they read the host (the docker SDK, the controls, the sinks).
FLOOR_IMPORTS = ("import docker, nodeguard.cli, nodeguard.agent, nodeguard.audit, nodeguard.report, "
                 "nodeguard.engine, nodeguard.events.pipeline, nodeguard.controls")


def main() -> None:
    rows = []
    for name, (size, setup, measured) in CASES.items():
        if "--commands" in sys.argv[1:]:
            break
        r = run_case(setup, measured)
        rows.append((name, size, r))
        print(f"  {name}: {r['seconds']:.2f} s", file=sys.stderr, flush=True)
    print()
    if rows:
        print(f"{'input':<46} {'size':>10} {'time s':>8} {'peak RSS MiB':>13} {'added MiB':>10}  answer")
        print("-" * 120)
    for name, size, r in rows:
        print(f"{name:<46} {size:>10} {r['seconds']:>8.2f} {r['peak']:>13.0f} {r['added']:>10.0f}  {r['result']}")
    cmd_rows = commands()
    print()
    print(f"{'command (a process, peak RSS from wait4)':<46} {'time s':>8} {'peak RSS MiB':>13}  answer")
    print("-" * 100)
    for label, secs, peak, answer in cmd_rows:
        print(f"{label:<46} {secs:>8.2f} {peak:>13.0f}  {answer}")
    leftovers = [p for p in Path(tempfile.gettempdir()).glob("ng-bench-*")]
    for p in leftovers:
        shutil.rmtree(p, ignore_errors=True)


if __name__ == "__main__":
    main()
