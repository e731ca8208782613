"""The runtime rules as pure functions of an observation, and a daemon that is not there."""

from __future__ import annotations

import socket

from nodeguard.controls.base import Context
from nodeguard.controls.runtime import (
    ContainerView,
    MountView,
    RuntimeControl,
    RuntimeObservation,
    security_options,
    version_tuple,
)
from nodeguard.host import HostRoot
from nodeguard.policy import load_policy
from nodeguard.structs import Finding, Status
from tests.support.sandbox import Sandbox

SENSITIVE = {p: p for p in ["/etc", "/proc", "/sys", "/boot", "/dev", "/var/lib/docker", "/root"]}


def container(name: str, *mounts: MountView, **kw: object) -> ContainerView:
    base: dict[str, object] = dict(id=name, name=name, state="running", image="img", privileged=False, cap_add=[],
                                   pid_mode="", network_mode="default", security_opt=["no-new-privileges"],
                                   mounts=list(mounts))
    base.update(kw)
    return ContainerView(**base)  # type: ignore[arg-type]


def bind(host_path: str, rw: bool = True) -> MountView:
    return MountView("bind", host_path, "/mnt", rw, host_path)


def observation(*containers: ContainerView, **kw: object) -> RuntimeObservation:
    obs = RuntimeObservation(socket="/var/run/docker.sock", version={"Version": "24.0.7"},
                             info={"SecurityOptions": ["name=seccomp,profile=builtin", "name=apparmor"],
                                   "LiveRestoreEnabled": True, "LoggingDriver": "json-file"},
                             containers=list(containers), daemon_sockets=["/run/docker.sock"],
                             sensitive=dict(SENSITIVE), configured={"live-restore": True})
    for k, v in kw.items():
        setattr(obs, k, v)
    return obs


def failing(findings: list[Finding], rule: str) -> dict[str | None, Finding]:
    return {f.subject: f for f in findings if f.rule == rule and f.status is Status.FAIL}


def evaluate(obs: RuntimeObservation) -> list[Finding]:
    return RuntimeControl().evaluate(obs, load_policy())


def test_versions_and_security_options_parse() -> None:
    assert version_tuple("20.10.24+dfsg1") == (20, 10, 24)
    assert version_tuple("v1.2") == (1, 2, 0)
    assert version_tuple("dev") is None
    assert security_options({"SecurityOptions": ["name=seccomp,profile=default", "name=userns"]}) == {
        "seccomp": {"profile": "default"}, "userns": {}}


def test_socket_exposed_by_file_or_by_a_folder_holding_it() -> None:
    found = evaluate(observation(container("a", bind("/run/docker.sock")), container("b", bind("/run", rw=False)),
                                 container("c", bind("/run/user/1000"))))
    assert set(failing(found, "docker-socket-mount")) == {"a", "b"}


def test_sensitive_paths_exact_parent_or_writable_child() -> None:
    found = evaluate(observation(
        container("exact", bind("/etc", rw=False)), container("parent", bind("/var/lib")),
        container("child-rw", bind("/etc/ssh")), container("child-ro", bind("/etc/ssl", False)),
        container("root", bind("/", rw=False)), container("data", bind("/srv/data"))))
    sensitive = failing(found, "sensitive-mount")
    assert set(sensitive) == {"exact", "parent", "child-rw", "root"}
    assert sensitive["parent"].details["mounts"][0]["sensitive"] == "/var/lib/docker"


def test_moved_data_root_is_sensitive_too() -> None:
    found = evaluate(observation(container("x", bind("/data/docker/volumes", rw=True)), data_root="/data/docker"))
    assert set(failing(found, "sensitive-mount")) == {"x"}


def test_no_new_privileges_follows_the_daemon_default_unless_overridden() -> None:
    plain = container("plain", security_opt=[])
    off = container("off", security_opt=["no-new-privileges:false"])
    on = container("on", security_opt=["no-new-privileges=true"])
    found = evaluate(observation(plain, off, on))
    assert set(failing(found, "no-new-privileges")) == {"plain", "off"}
    found = evaluate(observation(plain, off, on, configured={"no-new-privileges": True, "live-restore": True}))
    assert set(failing(found, "no-new-privileges")) == {"off"}


def test_capabilities_beyond_the_default_set() -> None:
    found = evaluate(observation(container("a", cap_add=["NET_ADMIN", "CHOWN"]), container("b", cap_add=["ALL"]),
                                 container("c", cap_add=["CAP_KILL"])))
    caps = failing(found, "added-capabilities")
    assert set(caps) == {"a", "b"} and caps["a"].observed == ["NET_ADMIN"]


def test_clean_fleet_gives_one_pass_per_container_rule() -> None:
    found = evaluate(observation(container("ok")))
    for rule in RuntimeControl.CONTAINER_RULES:
        assert [f.status for f in found if f.rule == rule] == [Status.PASS], rule
    assert failing(found, "config-applied") == {}
    assert failing(found, "seccomp-active") == {}


def test_unconfined_seccomp_and_pending_log_driver() -> None:
    obs = observation(info={"SecurityOptions": ["name=seccomp,profile=unconfined"], "LoggingDriver": "json-file",
                            "LiveRestoreEnabled": True},
                      configured={"live-restore": True, "log-driver": "journald"})
    found = evaluate(obs)
    assert failing(found, "seccomp-active")
    pending = failing(found, "config-applied")["log-driver"]
    assert pending.details["restart_required"] is True and pending.observed == "json-file"


def test_old_engine_fails() -> None:
    found = evaluate(observation(version={"Version": "19.03.15"}))
    assert failing(found, "engine-version")[None].observed == "19.03.15"


def test_rootless_sockets_are_found_inside_the_host_root(sandbox: Sandbox) -> None:
    folder = sandbox.path("/run/user/1000")
    folder.mkdir(parents=True)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(folder / "docker.sock"))
    try:
        (sandbox.path("/run/user/1001")).mkdir()
        (sandbox.path("/run/user/1001/docker.sock")).write_text("not a socket")
        ctx = Context(HostRoot(sandbox.root), load_policy())
        control = RuntimeControl()
        obs = control.observe(ctx)
        assert obs.rootless_sockets == ["/run/user/1000/docker.sock"]
        # No daemon: every rule is skipped with the reason, and nothing raised.
        found = control.evaluate(obs, ctx.policy)
        assert {f.status for f in found} == {Status.SKIP}
        assert "no daemon socket at /var/run/docker.sock" in found[0].message
    finally:
        s.close()


def test_a_dead_socket_is_a_clear_skip(sandbox: Sandbox) -> None:
    path = sandbox.path("/run/docker.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens: connection refused
    ctx = Context(HostRoot(sandbox.root), load_policy())
    found = RuntimeControl().evaluate(RuntimeControl().observe(ctx), ctx.policy)
    assert {f.status for f in found} == {Status.SKIP}
    assert "does not answer" in found[0].message and "Traceback" not in found[0].message


def test_rootless_daemons_other_than_the_audited_one_are_reported() -> None:
    found = evaluate(observation(rootless_sockets=["/run/user/1000/docker.sock"]))
    hit = failing(found, "rootless-daemons")["/run/user/1000/docker.sock"]
    assert hit.details["uid"] == "1000"
    found = evaluate(observation(rootless_sockets=["/run/user/1000/docker.sock"],
                                 daemon_sockets=["/run/user/1000/docker.sock"]))
    assert failing(found, "rootless-daemons") == {}
