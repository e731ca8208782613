"""Run inside a client namespace: try several connections at once, print what happened as JSON.

    python -m tests.support.probe '[{"kind": "docker", "host": "192.0.2.1", "port": 2376, "tls": {...}},
                                    {"kind": "tcp", "host": "2001:db8:2::1", "port": 2375}]'

`docker` connects with the Docker SDK over mutual TLS and asks the daemon for its version;
`tcp` only opens a connection. Each result is {"ok": bool, "detail": str}.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

TIMEOUT = 1.5


def _url(host: str, port: int) -> str:
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def probe(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        if spec["kind"] == "tcp":
            with socket.create_connection((spec["host"], spec["port"]), timeout=spec.get("timeout", TIMEOUT)):
                return {"ok": True, "detail": "connected"}
        import docker

        # requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override the session's CA (the test CA here).
        for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            os.environ.pop(var, None)
        tls = spec["tls"]
        cfg = docker.tls.TLSConfig(client_cert=(tls["cert"], tls["key"]), ca_cert=tls["ca"], verify=True)
        client = docker.DockerClient(base_url=_url(spec["host"], spec["port"]), tls=cfg,
                                     timeout=spec.get("timeout", TIMEOUT))
        version = client.version()["Version"]
        client.close()
        return {"ok": True, "detail": f"docker {version}"}
    except Exception as exc:
        return {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}


def main() -> None:
    specs = json.loads(sys.argv[1])
    with ThreadPoolExecutor(max_workers=len(specs) or 1) as pool:
        results = list(pool.map(probe, specs))
    sys.stdout.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
