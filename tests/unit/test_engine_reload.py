"""A policy reload rebuilds every watcher from the new policy (issue 12.5), and the policy file is
read again once its watch is in place (issue 18.4). Real inotify, a real policy file, a real engine;
the watchers are recorders standing in for the Docker events stream and the firewall monitor, whose
own reload behaviour is tested with a real dockerd in tests/integration/test_agent.py."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from nodeguard.controls.socket import SocketControl
from nodeguard.engine import Engine, EngineOptions
from nodeguard.events.model import EventName
from nodeguard.host import HostRoot
from nodeguard.policy import Policy
from nodeguard.policy_source import PolicySource
from nodeguard.state import StateStore
from nodeguard.structs import Mode
from nodeguard.watch import Trigger
from tests.support.events import RecordingSink
from tests.support.sandbox import Sandbox

HEAD = "apiVersion: nodeguard.io/v1alpha1\nkind: NodeGuardPolicy\nspec:\n"


class Recorder:
    def __init__(self, policy: Policy) -> None:
        self.mode = policy.spec.controls.runtime.mode or policy.spec.mode
        self.started = threading.Event()
        self.stopped = threading.Event()

    def start(self, trigger: Trigger) -> None:
        self.started.set()

    def stop(self) -> None:
        self.stopped.set()


def wait(pred: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def write_policy(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_text(text)
    os.rename(tmp, path)


def test_a_reload_stops_every_watcher_and_starts_new_ones_from_the_new_policy(
        sandbox: Sandbox, tmp_path: Path) -> None:
    folder = tmp_path / "policy"
    folder.mkdir()
    policy_file = folder / "policy.yaml"
    policy_file.write_text(HEAD + "  mode: observe\n  controls:\n    runtime:\n      mode: off\n")
    state = tmp_path / "state"
    built: list[Recorder] = []

    def factory(policy: Policy) -> list[Recorder]:
        built.append(Recorder(policy))
        return [built[-1]]

    source = PolicySource(policy_file, StateStore(state))
    sink = RecordingSink()
    source.load_initial(sink.emit)
    engine = Engine(EngineOptions(HostRoot(sandbox.root), state, policy_file), source, sink,
                    controls=[SocketControl()], watcher_factory=factory)  # type: ignore[arg-type]
    runner = threading.Thread(target=engine.run)
    runner.start()
    try:
        wait(lambda: built and built[0].started.is_set())
        assert built[0].mode is Mode.OFF
        write_policy(policy_file, HEAD + "  mode: observe\n  controls:\n    runtime:\n      mode: observe\n")
        wait(lambda: len(built) == 2 and built[1].started.is_set())
        assert built[0].stopped.is_set(), "the old watcher keeps running after the reload"
        assert built[1].mode is Mode.OBSERVE
        loaded = [e for e in sink.events if e.name is EventName.POLICY_LOADED]
        assert len(loaded) == 2
    finally:
        engine.stop()
        runner.join(30)
    assert built[1].stopped.is_set()


def test_a_policy_changed_before_the_watch_is_in_place_is_loaded(sandbox: Sandbox, tmp_path: Path) -> None:
    folder = tmp_path / "policy"
    folder.mkdir()
    policy_file = folder / "policy.yaml"
    policy_file.write_text(HEAD + "  mode: observe\n")
    state = tmp_path / "state"
    sink = RecordingSink()
    source = PolicySource(policy_file, StateStore(state))
    source.load_initial(sink.emit)
    # Swapped after the first read, before the engine (and its watch) starts: no inotify event will say so.
    write_policy(policy_file, HEAD + "  mode: enforce\n")
    engine = Engine(EngineOptions(HostRoot(sandbox.root), state, policy_file), source, sink,
                    controls=[SocketControl()], watchers=[])
    runner = threading.Thread(target=engine.run)
    runner.start()
    try:
        wait(lambda: engine.policy.spec.mode is Mode.ENFORCE)
    finally:
        engine.stop()
        runner.join(30)
    modes = [e.attributes.get("nodeguard.mode") for e in sink.events if e.name is EventName.POLICY_LOADED]
    assert modes == ["observe", "enforce"]
