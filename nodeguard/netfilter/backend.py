"""What a firewall backend is: read nodeguard's own table/chain, write it, take it away.

Backends own exactly one table (nf_tables) or one chain plus its jump (xtables) and never read
or write anything else beyond what they need to find the jump. `apply` is idempotent by
construction: it reads first and writes only when what the kernel holds differs from what the
policy asks for, so applying twice changes nothing (not even the nf_tables generation).
"""

from __future__ import annotations

import abc
import subprocess
import threading
from collections import deque

from nodeguard.netfilter.model import ChainState, Desired, FirewallState


class BackendError(RuntimeError):
    """The backend could not read or write netfilter (missing tool, kernel refused, lock timeout)."""


# Tools nodeguard itself ran to commit (iptables-nft-restore, the nft binary): their nf_tables
# generations are our own writes, and must not wake the watcher for another pass (a table that
# stays odd after our write would otherwise keep it busy). Pids are recorded as the child
# starts, long before it can commit.
_own_children: deque[int] = deque(maxlen=64)


def is_own_child(pid: int | None) -> bool:
    return pid is not None and pid in _own_children


def run_tool(argv: list[str], stdin: str | None, timeout: float = 30) -> tuple[int, str, str]:
    """Run a netfilter tool of ours: (returncode, stdout, stderr); its commits count as our own."""
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        _own_children.append(proc.pid)
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return -1, "", f"{argv[0]} did not finish within {timeout:g}s"
        return proc.returncode, out, err


def chains_match(have: ChainState, want: ChainState) -> bool:
    return have.exists and have.hooked and have.rules == want.rules


class Backend(abc.ABC):
    name: str

    def __init__(self) -> None:
        # One writer at a time inside this process; the kernel/xtables lock handles the others.
        self._write_lock = threading.Lock()

    @abc.abstractmethod
    def describe(self) -> str:
        """Where nodeguard's rules live with this backend, for people."""

    @abc.abstractmethod
    def desired_chains(self, desired: Desired) -> tuple[ChainState, ...]:
        """The chains as they must be, in the order `read_state` reports them."""

    @abc.abstractmethod
    def read_state(self) -> FirewallState:
        """Read nodeguard's table/chain without changing anything (not even loading a table)."""

    @abc.abstractmethod
    def _write(self, desired: Desired, state: FirewallState) -> None:
        """Replace nodeguard's rules with `desired` in as few atomic commits as the API allows."""

    @abc.abstractmethod
    def _delete(self, state: FirewallState) -> bool:
        """Remove nodeguard's table/chain and jump; True when something was removed."""

    def in_place(self, desired: Desired, state: FirewallState | None = None) -> bool:
        state = state or self.read_state()
        if state.error is not None:
            return False
        want = self.desired_chains(desired)
        return len(state.chains) == len(want) and all(chains_match(h, w) for h, w in zip(state.chains, want,
                                                                                          strict=True))

    def apply(self, desired: Desired) -> bool:
        """Make the kernel hold `desired`; False when it already did (nothing was written)."""
        with self._write_lock:
            state = self.read_state()
            if state.error is not None:
                raise BackendError(state.error)
            if self.in_place(desired, state):
                return False
            self._write(desired, state)
            return True

    def remove(self) -> bool:
        with self._write_lock:
            state = self.read_state()
            if state.error is not None:
                raise BackendError(state.error)
            return self._delete(state)

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release threads or handles (the xtables worker)."""
