"""CIS Docker Benchmark v1.6.0, sections 1-3: the catalog, nodeguard's coverage, and the summary.

The catalog lists every recommendation of the host, daemon and daemon-file sections (numbered as
docker-bench-security numbers them for v1.6.0). What nodeguard checks is not written here: it is
read from the controls' rules (`Rule.cis`), so the README table generated from it (`python -m
nodeguard.cis --write README.md`) cannot claim a check that the code does not make; a test
compares the two.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nodeguard.structs import Finding, Status

if TYPE_CHECKING:
    from nodeguard.controls.base import Control

BENCHMARK = "CIS Docker Benchmark v1.6.0"
SECTIONS = ("1", "2", "3")


@dataclass(frozen=True)
class CisItem:
    id: str
    title: str
    # Why nodeguard has no rule for it (shown only when no rule carries this id).
    why_not: str | None = None
    # Why no rule for it is enforceable (shown when checked but not enforced).
    why_report_only: str | None = None


_AUDIT_ONLY = "audit rules load on the host (`augenrules --load`; refused once immutable)"
_RESTART = "needs a daemon restart and can stop every container: reported"

CATALOG: tuple[CisItem, ...] = (
    CisItem("1.1.1", "Ensure a separate partition for containers has been created",
            why_report_only="repartitioning is the operator's job"),
    CisItem("1.1.2", "Ensure only trusted users are allowed to control Docker daemon"),
    CisItem("1.1.3", "Ensure auditing is configured for the Docker daemon", why_report_only=_AUDIT_ONLY),
    CisItem("1.1.4", "Ensure auditing is configured for Docker files and directories - /run/containerd",
            why_report_only=_AUDIT_ONLY),
    CisItem("1.1.5", "Ensure auditing is configured for Docker files and directories - /var/lib/docker",
            why_report_only=_AUDIT_ONLY),
    CisItem("1.1.6", "Ensure auditing is configured for Docker files and directories - /etc/docker",
            why_report_only=_AUDIT_ONLY),
    CisItem("1.1.7", "Ensure auditing is configured for Docker files and directories - docker.service",
            why_report_only=_AUDIT_ONLY),
    CisItem("1.1.8", "Ensure auditing is configured for Docker files and directories - containerd.sock",
            why_report_only=_AUDIT_ONLY),
    CisItem("1.1.9", "Ensure auditing is configured for Docker files and directories - docker.socket",
            why_report_only=_AUDIT_ONLY),
    CisItem("1.1.10", "Ensure auditing is configured for Docker files and directories - /etc/default/docker",
            why_report_only=_AUDIT_ONLY),
    CisItem("1.1.11", "Ensure auditing is configured for Docker files and directories - /etc/docker/daemon.json",
            why_report_only=_AUDIT_ONLY),
    CisItem("1.1.12", "Ensure auditing is configured for Docker files and directories - "
            "/etc/containerd/config.toml", why_report_only=_AUDIT_ONLY),
    CisItem("1.1.13", "Ensure auditing is configured for Docker files and directories - /etc/sysconfig/docker",
            why_report_only=_AUDIT_ONLY),
    CisItem("1.1.14", "Ensure auditing is configured for Docker files and directories - /usr/bin/containerd",
            why_report_only=_AUDIT_ONLY),
    CisItem("1.1.15", "Ensure auditing is configured for Docker files and directories - /usr/bin/containerd-shim",
            why_report_only=_AUDIT_ONLY),
    CisItem("1.1.16", "Ensure auditing is configured for Docker files and directories - "
            "/usr/bin/containerd-shim-runc-v1", why_report_only=_AUDIT_ONLY),
    CisItem("1.1.17", "Ensure auditing is configured for Docker files and directories - "
            "/usr/bin/containerd-shim-runc-v2", why_report_only=_AUDIT_ONLY),
    CisItem("1.1.18", "Ensure auditing is configured for Docker files and directories - /usr/bin/runc",
            why_report_only=_AUDIT_ONLY),
    CisItem("1.2.1", "Ensure the container host has been Hardened",
            why_not="manual: hardening the OS is its own benchmark (CIS for the distribution)"),
    CisItem("1.2.2", "Ensure that the version of Docker is up to date",
            why_not="the engine version is read through the Docker API by the runtime control",
            why_report_only="upgrading the engine is a package operation: reported"),
    CisItem("2.1", "Run the Docker daemon as a non-root user, if possible",
            why_not="rootless mode is read from `docker info` by the runtime control",
            why_report_only="a rootless daemon is a different installation: reported (opt-in rule)"),
    CisItem("2.2", "Ensure network traffic is restricted between containers on the default bridge"),
    CisItem("2.3", "Ensure the logging level is set to 'info'"),
    CisItem("2.4", "Ensure Docker is allowed to make changes to iptables"),
    CisItem("2.5", "Ensure insecure registries are not used"),
    CisItem("2.6", "Ensure aufs storage driver is not used",
            why_report_only="changing the storage driver hides every image and container: reported"),
    CisItem("2.7", "Ensure TLS authentication for Docker daemon is configured"),
    CisItem("2.8", "Ensure the default ulimit is configured appropriately",
            why_report_only="the right limits depend on the workloads: reported"),
    CisItem("2.9", "Enable user namespace support",
            why_report_only="enabling it hides every existing image and container: reported"),
    CisItem("2.10", "Ensure the default cgroup usage has been confirmed", why_report_only=_RESTART),
    CisItem("2.11", "Ensure base device size is not changed until needed", why_report_only=_RESTART),
    CisItem("2.12", "Ensure that authorization for Docker client commands is enabled",
            why_report_only="a plugin must be installed and configured first; naming a missing one makes "
            "dockerd exit: reported"),
    CisItem("2.13", "Ensure centralized and remote logging is configured",
            why_report_only="the log destination is site-specific: reported"),
    CisItem("2.14", "Ensure containers are restricted from acquiring new privileges"),
    CisItem("2.15", "Ensure live restore is enabled"),
    CisItem("2.16", "Ensure Userland Proxy is Disabled"),
    CisItem("2.17", "Ensure that a daemon-wide custom seccomp profile is applied if appropriate",
            why_report_only=_RESTART),
    CisItem("2.18", "Ensure that experimental features are not implemented in production"),
    CisItem("3.1", "Ensure that the docker.service file ownership is set to root:root"),
    CisItem("3.2", "Ensure that docker.service file permissions are appropriately set"),
    CisItem("3.3", "Ensure that docker.socket file ownership is set to root:root"),
    CisItem("3.4", "Ensure that docker.socket file permissions are set to 644 or more restrictive"),
    CisItem("3.5", "Ensure that the /etc/docker directory ownership is set to root:root"),
    CisItem("3.6", "Ensure that /etc/docker directory permissions are set to 755 or more restrictively"),
    CisItem("3.7", "Ensure that registry certificate file ownership is set to root:root"),
    CisItem("3.8", "Ensure that registry certificate file permissions are set to 444 or more restrictively"),
    CisItem("3.9", "Ensure that TLS CA certificate file ownership is set to root:root"),
    CisItem("3.10", "Ensure that TLS CA certificate file permissions are set to 444 or more restrictively"),
    CisItem("3.11", "Ensure that Docker server certificate file ownership is set to root:root"),
    CisItem("3.12", "Ensure that the Docker server certificate file permissions are set to 444 or more "
            "restrictively"),
    CisItem("3.13", "Ensure that the Docker server certificate key file ownership is set to root:root"),
    CisItem("3.14", "Ensure that the Docker server certificate key file permissions are set to 400"),
    CisItem("3.15", "Ensure that the Docker socket file ownership is set to root:docker"),
    CisItem("3.16", "Ensure that the Docker socket file permissions are set to 660 or more restrictively"),
    CisItem("3.17", "Ensure that the daemon.json file ownership is set to root:root"),
    CisItem("3.18", "Ensure that daemon.json file permissions are set to 644 or more restrictive"),
    CisItem("3.19", "Ensure that the /etc/default/docker file ownership is set to root:root"),
    CisItem("3.20", "Ensure that the /etc/sysconfig/docker file permissions are set to 644 or more restrictively"),
    CisItem("3.21", "Ensure that the /etc/sysconfig/docker file ownership is set to root:root"),
    CisItem("3.22", "Ensure that the /etc/default/docker file permissions are set to 644 or more restrictively"),
    CisItem("3.23", "Ensure that the Containerd socket file ownership is set to root:root"),
    CisItem("3.24", "Ensure that the Containerd socket file permissions are set to 660 or more restrictively"),
)
_BY_ID = {item.id: item for item in CATALOG}


def section_of(cis_id: str) -> str:
    return cis_id.split(".", 1)[0]


def _id_key(cis_id: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in cis_id.split("."))


@dataclass(frozen=True)
class Coverage:
    item: CisItem
    rules: tuple[str, ...]  # "control/rule"
    enforced_by: tuple[str, ...]

    @property
    def checked(self) -> bool:
        return bool(self.rules)

    @property
    def enforced(self) -> bool:
        return bool(self.enforced_by)


def coverage(controls: Iterable[type[Control]] | None = None) -> list[Coverage]:
    """Per catalog id: the rules that check it and those that can put it back (from the code)."""
    if controls is None:
        from nodeguard.controls import ALL_CONTROLS

        controls = ALL_CONTROLS
    rules: dict[str, list[str]] = {}
    enforced: dict[str, list[str]] = {}
    for cls in controls:
        for r in cls.rules:
            if r.cis is None:
                continue
            rules.setdefault(r.cis, []).append(f"{cls.name}/{r.id}")
            if r.enforceable:
                enforced.setdefault(r.cis, []).append(f"{cls.name}/{r.id}")
    return [Coverage(item, tuple(rules.get(item.id, ())), tuple(enforced.get(item.id, ()))) for item in CATALOG]


def summarize(findings: Sequence[Finding]) -> dict[str, dict[str, object]]:
    """Per CIS section: how many ids pass, fail, are skipped (or not checked) in this audit.

    An id fails when any finding of it fails, passes when one passes and none fails, and is
    skipped when all its findings are skips (rule off, file absent). Catalog ids with no finding
    at all count as `not_checked`. `ids` gives each id's verdict.
    """
    verdicts: dict[str, str] = {}
    for f in findings:
        if not f.cis:
            continue
        have = verdicts.get(f.cis)
        if f.status is Status.FAIL or have == "fail":
            verdicts[f.cis] = "fail"
        elif f.status is Status.PASS or have == "pass":
            verdicts[f.cis] = "pass"
        else:
            verdicts[f.cis] = "skip"
    sections = sorted({*SECTIONS, *(section_of(i) for i in verdicts)}, key=lambda s: _id_key(s))
    out: dict[str, dict[str, object]] = {}
    for sec in sections:
        ids = sorted({i for i in verdicts if section_of(i) == sec} | {i.id for i in CATALOG if section_of(i.id) == sec},
                     key=_id_key)
        per_id = {i: verdicts.get(i, "not_checked") for i in ids}
        counts: dict[str, object] = {k: sum(1 for v in per_id.values() if v == k)
                                     for k in ("pass", "fail", "skip", "not_checked")}
        counts["ids"] = per_id
        out[sec] = counts
    return out


# -- the README table --------------------------------------------------------------------------

TABLE_START = "<!-- cis-coverage:start (generated by `python -m nodeguard.cis --write README.md`) -->"
TABLE_END = "<!-- cis-coverage:end -->"


def render_markdown(rows: Sequence[Coverage] | None = None) -> str:
    rows = coverage() if rows is None else rows
    lines = [
        "| CIS | recommendation | checked by | enforced | why not |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        it = row.item
        checked = ", ".join(f"`{r}`" for r in row.rules) if row.checked else "not checked"
        if row.enforced:
            enforced, why = "yes", ""
        elif row.checked:
            enforced, why = "report", it.why_report_only or ""
        else:
            enforced, why = "no", it.why_not or "not checked yet"
        lines.append(f"| {it.id} | {it.title} | {checked} | {enforced} | {why} |")
    n_checked = sum(r.checked for r in rows)
    n_enforced = sum(r.enforced for r in rows)
    lines.append("")
    lines.append(f"{BENCHMARK}, sections 1-3: {len(rows)} recommendations, {n_checked} checked, "
                 f"{n_enforced} enforceable, {len(rows) - n_checked} not checked.")
    return "\n".join(lines)


def readme_block(text: str) -> str | None:
    m = re.search(re.escape(TABLE_START) + r"\n(.*?)" + re.escape(TABLE_END), text, re.S)
    return m.group(1).removesuffix("\n") if m else None


def write_readme(path: Path) -> bool:
    """Replace the generated block in `path`; True when it changed."""
    text = path.read_text(encoding="utf-8")
    block = f"{TABLE_START}\n{render_markdown()}\n{TABLE_END}"
    if readme_block(text) is None:
        raise SystemExit(f"{path}: no {TABLE_START!r} marker")
    new = re.sub(re.escape(TABLE_START) + r".*?" + re.escape(TABLE_END), lambda _: block, text, flags=re.S)
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nodeguard.cis", description="CIS coverage table")
    parser.add_argument("--write", type=Path, metavar="README", help="update the generated table in this file")
    args = parser.parse_args(argv)
    if args.write:
        changed = write_readme(args.write)
        print(f"{args.write}: {'updated' if changed else 'already up to date'}")
    else:
        sys.stdout.write(render_markdown() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
