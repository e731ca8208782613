"""Hostile-sized host files for the resource-limit tests and tests/bench/bench_limits.py."""

from __future__ import annotations

import json

from tests.support.sandbox import DOCKER_GID


def big_daemon_json(size: int) -> bytes:
    """A daemon.json of about `size` bytes: a huge `labels` list, with real settings after it."""
    label = "com.example.padding=" + "x" * 80
    count = max(1, size // (len(label) + 3))
    head = b'{\n  "labels": ['
    body = b", ".join([json.dumps(label).encode()] * count)
    tail = b'],\n  "hosts": ["unix:///var/run/docker.sock", "tcp://0.0.0.0:2375"],\n  "icc": false\n}\n'
    return head + body + tail


def big_passwd(n: int) -> str:
    """root plus `n` users; every tenth has the docker group as its primary group."""
    lines = ["root:x:0:0:root:/root:/bin/bash"]
    for i in range(n):
        gid = DOCKER_GID if i % 10 == 0 else 10_000 + i
        lines.append(f"user{i}:x:{10_000 + i}:{gid}:User {i}:/home/user{i}:/bin/bash")
    return "\n".join(lines) + "\n"


def big_group(n: int) -> str:
    """A docker group whose member list names `n` users on one line."""
    members = ",".join(f"user{i}" for i in range(n))
    return f"root:x:0:\ndocker:x:{DOCKER_GID}:{members}\n"


def big_gshadow(n: int) -> str:
    members = ",".join(f"user{i}" for i in range(n))
    return f"root:*::\ndocker:!::{members}\n"


def big_policy(size: int) -> str:
    """A valid policy of exactly `size` bytes (an allow-list long enough to fill it)."""
    head = ("apiVersion: nodeguard.io/v1alpha1\nkind: NodeGuardPolicy\nspec:\n  controls:\n"
            "    dockerGroup:\n      allowedMembers:\n")
    lines = [head]
    total = len(head)
    i = 0
    while True:
        line = f"        - user{i}\n"
        if total + len(line) > size - 64:
            break
        lines.append(line)
        total += len(line)
        i += 1
    pad = size - total - 2  # "#" ... "\n"
    lines.append("#" + "." * pad + "\n")
    return "".join(lines)
