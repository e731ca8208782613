"""Which backend drives this host's netfilter: the policy's choice, or `auto`.

`auto` decides the way Kubernetes' iptables wrappers do, because a node's rules must go where
its other netfilter users (kubelet, kube-proxy, dockerd) put theirs and where its operators look:

0. where nodeguard's own table or chain already is (no flip-flop, no second copy);
1. kubelet's hint chains (`KUBE-IPTABLES-HINT`, `KUBE-KUBELET-CANARY` in the mangle table):
   in nf_tables -> nf_tables; in legacy xtables -> legacy;
2. else where Docker's own chains (`DOCKER`, `DOCKER-USER`, `DOCKER-FORWARD`) live;
3. else nf_tables when the kernel and libnftables have it (Debian 11+, Ubuntu 22.04+, RHEL 8+),
   else legacy xtables.

On an nf_tables host nodeguard uses its own `inet` table (it coexists with iptables-nft's
tables); `iptables-nft` is there for operators who want the rules in iptables-nft's filter table.
Looking never changes anything: a legacy table that is not loaded is not read (reading would
load it), and nft only lists.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from nodeguard.host import HostRoot
from nodeguard.netfilter import nftnl
from nodeguard.netfilter.backend import Backend
from nodeguard.netfilter.libnft import Nft, NftError, netns_id, shared_nft
from nodeguard.netfilter.nft import TABLE as NFT_TABLE
from nodeguard.netfilter.nft import NftablesBackend
from nodeguard.netfilter.xtables import XtablesLegacyBackend, legacy_chain_names, legacy_tables, on_worker
from nodeguard.settings import FIREWALL_ANY_ROOT

HINT_CHAINS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")
DOCKER_CHAINS = ("DOCKER", "DOCKER-USER", "DOCKER-FORWARD")
LOCK_FILE = "/run/xtables.lock"


@dataclass
class Selection:
    """The backend chosen for this host, and why (shown by `nodeguard check`)."""

    requested: str
    name: str | None
    reason: str
    backend: Backend | None = None
    probes: dict[str, str] = field(default_factory=dict)


_cache: dict[tuple[str, str], Backend] = {}
_cache_lock = threading.Lock()


def backend_for(name: str, host: HostRoot) -> Backend:
    """One backend object per (kind, host root) per process: the xtables worker thread lives on."""
    lock_path = host.resolve(LOCK_FILE)
    key = (name, str(lock_path))
    with _cache_lock:
        backend = _cache.get(key)
        if backend is None:
            if name == "nftables":
                backend = NftablesBackend()
            elif name == "iptables-legacy":
                backend = XtablesLegacyBackend(lock_path)
            elif name == "iptables-nft":
                from nodeguard.netfilter.xtables_nft import XtablesNftBackend

                backend = XtablesNftBackend()
            else:
                raise ValueError(f"unknown firewall backend {name!r}")
            _cache[key] = backend
        return backend


def _nft_chains(nft: Nft, table: str) -> set[str] | None:
    """Chain names of an nf_tables table (`ip mangle`), None when the table does not exist.

    Never `nft -j list table(s)`: nft 1.0.6 prints a table's flags in JSON from the wrong
    memory (garbage for `owner`, a heap corruption that killed the process for `persist`), and
    firewalld and nodeguard itself set flags. Listing chains prints no table object.
    """
    family, name = table.split()
    try:
        listing = json.loads(nft.run(f"list chains {family}", json=True) or '{"nftables": []}')
    except (NftError, ValueError):
        return None
    chains = {item["chain"]["name"] for item in listing.get("nftables", [])
              if "chain" in item and item["chain"].get("table") == name}
    if chains:
        return chains
    return set() if _nft_table_exists(name, _FAMILIES.get(family, nftnl.NFPROTO_INET)) else None


_FAMILIES = {"inet": nftnl.NFPROTO_INET, "ip": 2, "ip6": 10}


def _nft_table_exists(name: str, family: int = nftnl.NFPROTO_INET) -> bool:
    try:
        return nftnl.find_table(name, family) is not None
    except OSError:
        return False


def nft_usable(nft: Nft) -> tuple[bool, str]:
    if not nft.available:
        return False, "neither libnftables nor nft is installed"
    try:
        nftnl.list_tables()  # netlink: nft's own listing of tables breaks on table flags (above)
    except OSError as exc:
        return False, f"nf_tables unusable: {exc}"
    return True, f"nf_tables available via {nft.via}"


def legacy_in_kernel() -> tuple[bool, str]:
    """Does this kernel have legacy xtables at all? /proc only: nothing is imported or loaded."""
    if legacy_tables("ipv4") is None and not Path("/proc/net/ip_tables_names").exists():
        return False, "no legacy xtables in this kernel (/proc/net/ip_tables_names missing)"
    return True, "legacy xtables in this kernel"


def legacy_usable() -> tuple[bool, str]:
    ok, why = legacy_in_kernel()
    if not ok:
        return ok, why
    try:
        # Imported on the xtables worker: libxtables' global state belongs to that thread.
        on_worker(importlib.import_module, "iptc")
    except Exception as exc:  # python-iptables raises XTablesError or OSError without libxtables
        return False, f"python-iptables unusable: {exc}"
    return True, "legacy xtables available"


def select_backend(requested: str, host: HostRoot) -> Selection:
    nft = shared_nft()
    nft_ok, nft_why = nft_usable(nft)
    # python-iptables (~80 ms and ~18 MiB to import) is loaded only when its answer matters: a legacy
    # table is loaded and must be read, legacy is chosen, or nf_tables is unusable. An nf_tables
    # host with no legacy table loaded (the usual one) never imports it, in `check` or in the agent.
    in_kernel, kernel_why = legacy_in_kernel()
    library: list[tuple[bool, str]] = []

    def legacy() -> tuple[bool, str]:
        if not library:
            library.append(legacy_usable() if in_kernel else (False, kernel_why))
        return library[0]

    def probes() -> dict[str, str]:
        if not library and in_kernel and "iptc" in sys.modules:  # already imported to read a table
            legacy()
        why = library[0][1] if library else (
            f"{kernel_why}, no legacy table loaded (python-iptables not needed to decide)" if in_kernel
            else kernel_why)
        return {"nftables": nft_why, "iptables-legacy": why}

    def chosen(name: str, reason: str) -> Selection:
        ok = nft_ok if name != "iptables-legacy" else legacy()[0]
        if not ok:
            return Selection(requested, None,
                             f"{reason}, but {probes()[name if name != 'iptables-nft' else 'nftables']}",
                             None, probes())
        return Selection(requested, name, reason, backend_for(name, host), probes())

    if requested != "auto":
        return chosen(requested, f"the policy asks for {requested}")
    if not nft_ok and not legacy()[0]:
        return Selection(requested, None, f"no netfilter backend: {nft_why}; {legacy()[1]}", None, probes())

    # 0. Where nodeguard's own rules already are: switching would leave a copy behind. Asked of
    # netlink: nft's JSON for an owner table is unreliable (see nftnl). A legacy table is read
    # (python-iptables imported) only when the kernel has it loaded; unreadable counts as absent.
    if nft_ok and _nft_table_exists(NFT_TABLE):
        return chosen("nftables", "nodeguard's own table inet nodeguard is already in nf_tables")
    if in_kernel and "NODEGUARD" in (legacy_chain_names("filter") or set()):
        return chosen("iptables-legacy", "nodeguard's own chain NODEGUARD is already in legacy xtables")
    nft_mangle = _nft_chains(nft, "ip mangle") if nft_ok else None
    legacy_mangle = legacy_chain_names("mangle") if in_kernel else None
    for hint in HINT_CHAINS:
        if nft_mangle and hint in nft_mangle:
            return chosen("nftables", f"kubelet's {hint} chain is in nf_tables")
        if legacy_mangle and hint in legacy_mangle:
            return chosen("iptables-legacy", f"kubelet's {hint} chain is in legacy xtables")
    nft_docker = set()
    if nft_ok:
        for table in ("ip filter", "ip nat"):
            nft_docker |= _nft_chains(nft, table) or set()
    legacy_docker = set()
    if in_kernel:
        for table in ("filter", "nat"):
            legacy_docker |= legacy_chain_names(table) or set()
    in_nft = sorted(set(DOCKER_CHAINS) & nft_docker)
    in_legacy = sorted(set(DOCKER_CHAINS) & legacy_docker)
    if in_legacy and not in_nft:
        return chosen("iptables-legacy", f"Docker's chains {in_legacy} are in legacy xtables")
    if in_nft and not in_legacy:
        return chosen("nftables", f"Docker's chains {in_nft} are in nf_tables (iptables-nft)")
    if nft_ok:
        return chosen("nftables", "no kubelet hint or Docker chains decide it; nf_tables is available")
    return chosen("iptables-legacy", "no kubelet hint or Docker chains decide it; only legacy xtables is available")


_decided: dict[tuple[str, str, int, int], Selection] = {}
_decided_lock = threading.Lock()


def decided_backend(requested: str, host: HostRoot) -> Selection:
    """The backend this process chose the first time it looked, kept for as long as it runs.

    `auto` is decided once: a host whose netfilter seems to move (someone deletes our table and
    plants a legacy NODEGUARD chain) must not drag nodeguard's rules, and its watcher, from one
    backend to the other without anybody noticing; the firewall control compares a fresh
    `select_backend` with this one and reports the difference as a finding instead. A host
    where nothing was usable is asked again (nothing was kept, so nothing switches). Keyed by
    pid and network namespace: a fork or a setns looks again.
    """
    key = (requested, str(host.root), os.getpid(), netns_id())
    with _decided_lock:
        selection = _decided.get(key)
        if selection is None or selection.backend is None:
            selection = select_backend(requested, host)
            if selection.backend is not None:
                _decided[key] = selection
        return selection


def forget_decisions() -> None:
    """Decide afresh at the next look (`nodeguard firewall` commands, tests)."""
    with _decided_lock:
        _decided.clear()


ANY_ROOT_ENV = FIREWALL_ANY_ROOT.env[0]


def writes_refused(host: HostRoot, proc: Path = Path("/proc")) -> str | None:
    """Why nodeguard must not change netfilter here, or None when it may.

    Netfilter belongs to the process's network namespace, not to --host-root. A sandbox host root
    (neither `/` nor `/host...`) in the machine's own network namespace (the same as pid 1's) is a
    test or a mistake: the rules would land on the machine. Report, never write, unless
    NODEGUARD_FIREWALL_ANY_ROOT=1. When the namespaces cannot be compared, the answer is "refuse".
    """
    root = str(host.root)
    if root == "/" or root == "/host" or root.startswith("/host/") or FIREWALL_ANY_ROOT.resolve(None):
        return None
    if not _in_machine_netns(proc):
        return None
    return (f"host root {root} is a sandbox but this process is in the machine's own network namespace: "
            f"nodeguard reports and leaves netfilter alone ({ANY_ROOT_ENV}=1 overrides)")


def _in_machine_netns(proc: Path) -> bool:
    """Is this process in pid 1's network namespace? Unknown counts as yes (refuse to write).

    A named namespace (`ip netns add`, bind-mounted under /run/netns) is never the machine's;
    else compare with pid 1's, which some sandboxes forbid reading.
    """
    try:
        mine = os.stat("/proc/self/ns/net")
    except OSError:
        return True
    for folder in ("/run/netns", "/var/run/netns"):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            try:
                st = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                return False
    try:
        return os.stat(proc / "1" / "ns" / "net").st_ino == mine.st_ino
    except OSError:
        return True
