"""One pass over the host: observe and evaluate every control, then apply the policy's modes.

The runtime control talks to the Docker API (network I/O with timeouts); it runs on its own
thread while the file-based controls run here, so a pass pays for the slowest of the two, not
their sum. `check` goes further: its forked reader (nodeguard.api_prefetch) has imported the Docker
SDK and read the daemon by the time the file-based controls are done.

A selection (`--check`/`--skip`, by CIS id or rule id) runs only the controls that own a selected
rule and keeps only the selected rules' findings.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodeguard.controls import Context, Control, all_controls
from nodeguard.host import HostRoot
from nodeguard.policy import Policy
from nodeguard.selection import candidates, runs
from nodeguard.structs import Finding, Mode, Severity, Status

if TYPE_CHECKING:
    from nodeguard.api_prefetch import ForkedDaemonReader

log = logging.getLogger(__name__)

# Controls whose observation waits on the Docker API rather than on files.
_API_CONTROLS = frozenset({"runtime"})


@dataclass
class ControlResult:
    control: Control
    observed: Any
    findings: list[Finding]
    error: str | None = None


@dataclass
class AuditReport:
    results: list[ControlResult] = field(default_factory=list)
    # Wall-clock times of the pass (unix seconds), for the JSON metadata.
    started: float = 0.0
    ended: float = 0.0

    @property
    def findings(self) -> list[Finding]:
        return [f for r in self.results for f in r.findings]

    def iter_findings(self) -> Iterable[Finding]:
        """The findings in report order, without building a list of them."""
        for r in self.results:
            yield from r.findings

    def summary(self) -> dict[str, int]:
        counts = {s.value: 0 for s in Status}
        total = 0
        for f in self.iter_findings():
            counts[f.status.value] += 1
            total += 1
        counts["total"] = total
        return counts

    @property
    def failed(self) -> bool:
        return any(f.status is Status.FAIL for f in self.iter_findings())

    def failed_at(self, threshold: Severity) -> bool:
        """A failing finding of `threshold` severity or above (info counts as below low)."""
        rank = severity_rank(threshold)
        return any(f.status is Status.FAIL and severity_rank(f.severity) >= rank for f in self.iter_findings())


_ORDER = (Severity.INFO, Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL)


def severity_rank(severity: Severity) -> int:
    return _ORDER.index(severity)


def apply_modes(control: Control, findings: Iterable[Finding], policy: Policy) -> list[Finding]:
    """Stamp each finding with its rule's effective mode; a rule that is off becomes a skip.

    A list is stamped in place (its old findings freed one by one, never two copies of 100,000
    members at once), and a finding that already carries its mode is kept as it is."""
    out = findings if isinstance(findings, list) else list(findings)
    modes: dict[str, Mode] = {}
    for i, f in enumerate(out):
        mode = modes.get(f.rule)
        if mode is None:
            mode = modes[f.rule] = control.rule_mode(policy, f.rule)
        if mode is Mode.OFF:
            out[i] = dataclasses.replace(f, status=Status.SKIP, mode=mode,
                                         message=f"rule is off in the policy ({f.message})")
        elif f.mode is not mode:
            out[i] = f.with_mode(mode)
    return out


def evaluate_control(control: Control, ctx: Context) -> ControlResult:
    """Observe + evaluate one control; an unexpected error becomes a finding, never a crash."""
    try:
        observed = control.observe(ctx)
        findings = control.evaluate(observed, ctx.policy)
    except Exception as exc:  # a hostile host must not stop the audit of the other controls
        log.exception("control %s failed", control.name)
        msg = f"{control.name} could not be evaluated: {type(exc).__name__}: {exc}"
        findings = [Finding(control.name, "evaluate", Status.FAIL, Severity.MEDIUM, msg)]
        return ControlResult(control, None, apply_modes(control, findings, ctx.policy), msg)
    return ControlResult(control, observed, apply_modes(control, findings, ctx.policy))


def _selected(result: ControlResult, select: Collection[tuple[str, str]] | None,
              skip: Collection[tuple[str, str]]) -> ControlResult:
    name = result.control.name
    # "evaluate" (the control itself failed) is kept whenever any rule of the control is wanted.
    kept = [f for f in result.findings
            if (f.rule == "evaluate" or select is None or (name, f.rule) in select) and (name, f.rule) not in skip]
    return dataclasses.replace(result, findings=kept)


def run_audit(
    host: HostRoot | str,
    policy: Policy,
    *,
    only: Iterable[str] | None = None,
    select: Collection[tuple[str, str]] | None = None,
    skip: Collection[tuple[str, str]] = (),
    proc: Path = Path("/proc"),
    controls: Iterable[Control] | None = None,
    daemon_reader: ForkedDaemonReader | None = None,
) -> AuditReport:
    """Audit once. `only`: control names or policy keys; `select`/`skip`: (control, rule) pairs.

    `daemon_reader`: a forked reader of the Docker API (`check`, which asks it as soon as the policy
    is loaded); the runtime control collects its answer after the file-based controls ran.
    """
    host = host if isinstance(host, HostRoot) else HostRoot(host)
    ctx = Context(host, policy, proc)
    wanted = set(only) if only else None
    report = AuditReport(started=time.time())
    chosen = choose_controls(policy, wanted=wanted, select=select, skip=skip, controls=controls)
    api = [c for c in chosen if c.name in _API_CONTROLS]
    results: dict[str, ControlResult]
    if api and daemon_reader is not None:
        daemon_reader.request_for(host, policy)  # `check` asked already; a no-op then
        ctx.read_daemon = daemon_reader.read
        # The reads run in the forked process, so the controls here run one after the other, the
        # API ones last, by when the answer is in: no thread, and no Docker SDK in this process.
        results = {c.name: evaluate_control(c, ctx) for c in sorted(chosen, key=lambda c: c.name in _API_CONTROLS)}
    else:
        if api:
            # The Docker SDK is imported here, before the API thread starts: two threads importing at
            # once (this one runs the netfilter worker, which imports python-iptables) can deadlock on
            # the import locks. The shared observations are made once for the same reason.
            import docker  # noqa: F401

            try:
                _ = ctx.daemon_config
            except Exception:  # the daemon-config control reports it in its own finding
                log.debug("daemon configuration not readable", exc_info=True)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-api") as pool:
            pending = {c.name: pool.submit(evaluate_control, c, ctx) for c in api}
            results = {c.name: evaluate_control(c, ctx) for c in chosen if c.name not in pending}
            results.update({name: fut.result() for name, fut in pending.items()})
    report.results = [_selected(results[c.name], select, skip) for c in chosen]
    report.ended = time.time()
    return report


def choose_controls(policy: Policy, *, wanted: Collection[str] | None, select: Collection[tuple[str, str]] | None,
                    skip: Collection[tuple[str, str]], controls: Iterable[Control] | None = None) -> list[Control]:
    """The controls a run covers, in run order (`controls`: every control when None)."""
    if controls is None:
        # Only the controls that can be chosen are imported (the catalog knows their keys and rules).
        controls = all_controls(candidates(wanted, select))
    return [c for c in controls if runs(c.name, c.policy_key, {r.id for r in c.rules}, policy,
                                        wanted=wanted, select=select, skip=skip)]


_DOCKERD_DIRS = ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin", "/bin", "/sbin")


def docker_engine_evidence(host: HostRoot, policy: Policy) -> list[str]:
    """Host paths that show a Docker engine is installed here: a dockerd binary, its socket or pid
    file, daemon.json, or a docker unit. Empty: there is no engine to audit."""
    spec = policy.spec
    candidates = [f"{d}/dockerd" for d in _DOCKERD_DIRS]
    candidates += [spec.controls.socket.path, spec.controls.daemon_config.path, spec.daemon.pid_file]
    candidates += [f"{d}/{unit}" for d in spec.controls.daemon_files.unit_dirs
                   for unit in ("docker.service", "docker.socket")]
    found = []
    for path in candidates:
        try:
            if host.stat(path) is not None:
                found.append(path)
        except OSError:  # unreadable or a loop: something is there
            found.append(path)
    return found
