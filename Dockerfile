# nodeguard's image: the agent of the Helm chart (charts/nodeguard), or a one-shot audit of a host:
#
#   docker build -t nodeguard .
#   docker run --rm -v /etc:/host/etc:ro -v /run:/host/run:ro nodeguard check --host-root /host
#
# Offline (no package index reachable from the build): put every wheel nodeguard needs in
# ./wheelhouse and build with --build-arg PIP_NO_INDEX=1; give --build-arg APT_PACKAGES= when the
# base image already holds the netfilter tools. The README says which capabilities it runs with.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# -- stage one: nodeguard's wheel and every dependency, installed into a virtualenv -----------------
FROM ${BASE_IMAGE} AS build
ARG PIP_NO_INDEX=0
# 1: byte-compile at install (the root filesystem is read-only at run time, so Python could not
# cache them later). 0 only to make a throwaway test build faster.
ARG PIP_COMPILE=1
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_NO_INDEX=${PIP_NO_INDEX} \
    PIP_FIND_LINKS=/src/wheelhouse
WORKDIR /src
# .dockerignore lets in only pyproject.toml, README.md, nodeguard/ and an optional wheelhouse/.
COPY . /src
RUN mkdir -p /src/wheelhouse \
 && python -m pip wheel --wheel-dir /wheels /src \
 && python -m venv --without-pip /opt/nodeguard \
 && python -m pip --python /opt/nodeguard/bin/python install --no-index --find-links /wheels \
      $([ "$PIP_COMPILE" = 0 ] && echo --no-compile) nodeguard

# -- stage two: the runtime -------------------------------------------------------------------------
FROM ${BASE_IMAGE}
# What the netfilter backends drive: iptables brings libxtables/libip4tc/libip6tc (python-iptables,
# the legacy backend) and iptables-nft-restore (iptables-nft); nftables and libnftables1 are the
# nf_tables backend (libnftables through ctypes, nft as its fallback).
ARG APT_PACKAGES="iptables nftables libnftables1"
RUN if [ -n "$APT_PACKAGES" ]; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $APT_PACKAGES \
      && rm -rf /var/lib/apt/lists/*; \
    fi
COPY --from=build /opt/nodeguard /opt/nodeguard
# /host is where the pod mounts the node's folders (--host-root /host). /var/run is a symlink to
# /run on every current distribution; the same link here makes /var/run/docker.sock resolve to
# the mounted /host/run, which the agent does inside the host root.
RUN mkdir -p /host/etc/docker /host/run /host/var/lib/nodeguard /host/lib/systemd/system \
      /host/usr/lib/systemd/system \
 && ln -s /run /host/var/run
ENV PATH=/opt/nodeguard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
LABEL org.opencontainers.image.title="nodeguard" \
      org.opencontainers.image.description="Holds Docker hosts to a written security policy: audit, watch, enforce, report." \
      org.opencontainers.image.licenses="Apache-2.0"
# Root (uid 0) without root's capabilities: the chart drops ALL and adds back a named few.
USER 0:0
ENTRYPOINT ["nodeguard"]
CMD ["run", "--host-root", "/host", "--state-dir", "/host/var/lib/nodeguard"]
