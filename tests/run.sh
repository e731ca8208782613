#!/usr/bin/env bash
# Installs everything the tests need and runs them: the README's test command.
# Debian packages when run as root (dockerd, netfilter tools, busybox for a local image, ACL tools),
# then a virtualenv with nodeguard and its test extras, then lint, types and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  for pair in dockerd:docker.io iptables:iptables nft:nftables busybox:busybox-static setfacl:acl setfattr:attr \
              usermod:passwd nsenter:util-linux ip:iproute2 cgroupfs-mount:cgroupfs-mount auditd:auditd; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  # dockerd 20.10 needs the cgroup v1 hierarchies; the mount is idempotent.
  cgroupfs-mount >/dev/null 2>&1 || true
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

.venv/bin/ruff check nodeguard tests
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
