"""`segstream worker --http HOST:PORT`: /livez, /readyz and /status (JSON) for an orchestrator's
probes (Kubernetes liveness/readiness). The standard library's threading HTTP server is enough
for three GETs and adds no dependency."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from segstream.pipeline.config import ConfigError


def serve_probes(address: str, live: Callable[[], bool], ready: Callable[[], bool],
                 status: Callable[[], dict[str, Any]]) -> ThreadingHTTPServer:
    host, _, port = address.rpartition(":")
    try:
        bind = (host or "0.0.0.0", int(port))
    except ValueError:
        raise ConfigError(f"--http: {address!r} is not HOST:PORT") from None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            if self.path == "/livez":
                code, body = (200, {"live": True}) if live() else (503, {"live": False})
            elif self.path == "/readyz":
                code, body = (200, {"ready": True}) if ready() else (503, {"ready": False})
            elif self.path == "/status":
                code, body = 200, status()
            else:
                code, body = 404, {"error": "not found"}
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:  # probes every few seconds: no access log
            pass

    try:
        server = ThreadingHTTPServer(bind, Handler)
    except OSError as exc:
        raise ConfigError(f"--http {address}: cannot listen ({exc.strerror or exc})") from None
    threading.Thread(target=server.serve_forever, name="probes", daemon=True).start()
    return server
