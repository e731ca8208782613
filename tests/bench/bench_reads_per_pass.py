"""How many times one `check` pass reads each host surface, on a sandbox served by a real dockerd.

    .venv/bin/python -m tests.bench.bench_reads_per_pass [--containers 10]

Needs root and dockerd (a real daemon on a sandbox host root, in its own network namespace, like
the tests). One full audit pass (every control) runs in a child that joined the daemon's network
namespace, so the firewall and listeners controls dump the daemon's netfilter, not this
machine's. Counted: whole-file reads through the host root by path (daemon.json, dockerd's pid
file, the account files) and dumps of nodeguard's chains (`read_state` of the netfilter backend).
Counts, not times: the machine's load does not move them.
"""

from __future__ import annotations

import argparse

from tests.bench.audit_host import audit_host
from tests.support.netns import in_netns
from tests.support.passcount import one_check_pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--containers", type=int, default=10, help="created containers the runtime checks list")
    args = ap.parse_args()
    with audit_host(args.containers) as (sb, d):
        assert d.netns is not None
        seen = in_netns(d.netns, one_check_pass, str(sb.root))
    reads = seen["reads"]
    rows = [("daemon.json", reads.get(seen["daemon_json"], 0)),
            ("dockerd's pid file (the daemon and its flags)", reads.get(seen["pid_file"], 0)),
            ("/etc/passwd", reads.get("/etc/passwd", 0)),
            ("/etc/group", reads.get("/etc/group", 0)),
            ("/etc/gshadow", reads.get("/etc/gshadow", 0)),
            ("netfilter dumps (nodeguard's chains)", seen["dumps"])]
    print(f"one check pass: {len(seen['controls'])} controls, {len(seen['findings'])} findings, "
          f"errors: {seen['errors'] or 'none'}")
    width = max(len(name) for name, _ in rows)
    print(f"{'surface':<{width}}  reads per pass")
    for name, count in rows:
        print(f"{name:<{width}}  {count}")
    others = sorted((n, p) for p, n in reads.items() if n > 1)
    print("other host files read more than once:", ", ".join(f"{p} x{n}" for n, p in others) or "none")


if __name__ == "__main__":
    main()
