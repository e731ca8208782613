"""The agent's one policy source: load, validate, keep the last good copy, reload on change.

The file is compared by content hash, so a reload is cheap to ask for: the engine asks on every
inotify event in the policy's folder *and* on every resync, and once more right after its watches
are in place (a policy swapped between the first read and the watch would otherwise be lost).
A file that does not validate is refused with a `policy.rejected` event and the previous policy
stays in force; at start, the last good copy kept in the state dir stands in for it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from nodeguard.events.model import Event, EventName, lifecycle_event
from nodeguard.policy import Policy, PolicyError, default_policy_text, parse_policy, read_policy_bytes
from nodeguard.state import StateStore
from nodeguard.structs import Mode

log = logging.getLogger(__name__)

LAST_GOOD_POLICY = "policy.yaml"  # under <state-dir>/lastgood/
Emit = Callable[[Event], None]


class PolicySource:
    def __init__(self, path: Path | None, store: StateStore, mode_override: Mode | None = None) -> None:
        self.path = path
        self.store = store
        self.mode_override = mode_override
        self.digest = ""  # sha256 of the bytes last looked at (valid or not)
        self.loaded_digest = ""  # sha256 of the bytes of the policy in force
        self.policy: Policy | None = None

    @staticmethod
    def digest_of(raw: bytes) -> str:
        return hashlib.sha256(raw).hexdigest()

    def _read(self) -> bytes | None:
        if self.path is None:
            return None
        try:
            return read_policy_bytes(self.path)
        except OSError as exc:
            log.warning("cannot read the policy %s: %s", self.path, exc.strerror or exc)
            return None

    def _effective(self, policy: Policy) -> Policy:
        return policy.with_mode(self.mode_override) if self.mode_override else policy

    def load_initial(self, emit: Emit) -> Policy:
        """The policy file (or the embedded default); if invalid, the last good copy; else PolicyError."""
        if self.path is None:
            text = default_policy_text()
            self.digest = self.loaded_digest = self.digest_of(text.encode())
            self.policy = self._effective(parse_policy(text, "<embedded default>"))
            return self.policy
        raw = self._read()
        self.digest = self.digest_of(raw or b"")
        try:
            if raw is None:
                raise PolicyError(str(self.path), [(None, "", "cannot read the file")])
            policy = parse_policy(raw.decode("utf-8", errors="replace"), str(self.path))
        except PolicyError as exc:
            kept = self.store.last_good(LAST_GOOD_POLICY)
            emit(lifecycle_event(EventName.POLICY_REJECTED,
                                 f"policy rejected at start:\n{exc.render()}"
                                 + ("; the last good policy stays in force" if kept else ""),
                                 policy_source=str(self.path), problems=[p[2] for p in exc.problems]))
            if kept is None:
                raise
            self.loaded_digest = self.digest_of(kept)
            self.policy = self._effective(parse_policy(kept.decode("utf-8", errors="replace"),
                                                       "<last good policy>"))
            return self.policy
        self._keep(raw)
        self.loaded_digest = self.digest
        self.policy = self._effective(policy)
        return self.policy

    def adopt(self, policy: Policy) -> Policy:
        """Put a policy validated elsewhere in force (tests, embedders); the file's bytes as they are
        now are its digest, so only a later change of the file reloads."""
        raw = self._read()
        self.digest = self.loaded_digest = self.digest_of(raw) if raw is not None else ""
        self.policy = self._effective(policy)
        return self.policy

    def reload(self, emit: Emit) -> Policy | None:
        """A new valid policy now in force, or None (unchanged, unreadable or rejected)."""
        raw = self._read()
        if raw is None:
            return None
        digest = self.digest_of(raw)
        if digest == self.digest:
            return None
        self.digest = digest
        source = str(self.path)
        try:
            policy = parse_policy(raw.decode("utf-8", errors="replace"), source)
        except PolicyError as exc:
            emit(lifecycle_event(EventName.POLICY_REJECTED,
                                 f"policy rejected, the previous one stays in force:\n{exc.render()}",
                                 policy_source=source, problems=[p[2] for p in exc.problems]))
            return None
        if digest == self.loaded_digest:
            return None  # back to the content in force (after a rejected edit): nothing changes
        self._keep(raw)
        self.loaded_digest = digest
        self.policy = self._effective(policy)
        return self.policy

    def _keep(self, raw: bytes) -> None:
        try:
            self.store.save_last_good(LAST_GOOD_POLICY, raw)
        except OSError as exc:  # a full state disk: the policy still applies, only not across a restart
            log.warning("cannot keep the last good policy: %s", exc.strerror or exc)

    def loaded_event(self) -> Event:
        assert self.policy is not None
        return lifecycle_event(EventName.POLICY_LOADED, f"policy {self.policy.metadata.name} in force",
                               policy_name=self.policy.metadata.name, policy_sha256=self.loaded_digest,
                               policy_labels=[f"{k}={v}" for k, v in sorted(self.policy.metadata.labels.items())],
                               policy_source=str(self.path or "<embedded default>"),
                               mode=self.policy.spec.mode.value)
