#!/usr/bin/env python3
"""Container health probe (Docker HEALTHCHECK): exit 0 when healthy, 1 otherwise.

``ctrain-healthz <service>`` GETs ``http://127.0.0.1:$CTRAIN_<SERVICE>_HTTP_PORT/healthz``
(the service's default port when unset) and wants a 200. ``ctrain-healthz --tcp PORT``
only checks that something accepts connections on PORT (the model server's REST port).
Standard library only: the slim runtime image has no curl.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request

DEFAULT_PORTS = {
    "ingest": 8081,
    "validator": 8082,
    "trigger": 8083,
    "promoter": 8084,
    "monitor": 8085,
}


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--tcp":
        try:
            with socket.create_connection(("127.0.0.1", int(argv[1])), timeout=2):
                return 0
        except OSError as e:
            print(f"port {argv[1]}: {e}", file=sys.stderr)
            return 1
    if len(argv) != 1 or argv[0] not in DEFAULT_PORTS:
        print("usage: ctrain-healthz {ingest|validator|trigger|promoter|monitor} | --tcp PORT")
        return 2
    name = argv[0]
    port = int(os.environ.get(f"CTRAIN_{name.upper()}_HTTP_PORT") or DEFAULT_PORTS[name])
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return 0 if r.status == 200 else 1
    except OSError as e:  # URLError and HTTPError (503 while a dependency is down)
        print(f"{name}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
