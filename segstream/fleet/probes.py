"""`segstream worker --http HOST:PORT`: /livez, /readyz and /status (JSON) for an orchestrator's
probes (Kubernetes liveness/readiness). The standard library's threading HTTP server is enough
for three GETs and adds no dependency.

Like every process that serves HTTP here (docs/security.md): loopback unless told otherwise (`:PORT`
means 127.0.0.1; the command refuses a public address without a token), the probes carry no
secret and need none (as Kubernetes' own probes), `/status` (which names jobs and sources) needs
`Authorization: Bearer TOKEN` when a token is set and, without one, a loopback Host (DNS
rebinding). Every answer has the same security headers as the service's.
"""

from __future__ import annotations

import hmac
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from segstream.pipeline.config import ConfigError

DEFAULT_HOST = "127.0.0.1"
SECURITY_HEADERS = (("X-Frame-Options", "DENY"), ("X-Content-Type-Options", "nosniff"),
                    ("Referrer-Policy", "no-referrer"),
                    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"))
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def parse_address(address: str) -> tuple[str, int]:
    """'HOST:PORT', '[v6]:PORT' or ':PORT' (loopback) -> (host, port); ConfigError otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--http: {address!r} is not HOST:PORT (e.g. 127.0.0.1:8081)")
    return host.strip("[]") or DEFAULT_HOST, int(port)


def _host_name(header: str) -> str:
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    name, sep, port = header.rpartition(":")
    return name if sep and port.isdigit() else header


def serve_probes(address: str, live: Callable[[], bool], ready: Callable[[], bool],
                 status: Callable[[], dict[str, Any]], token: str | None = None) -> ThreadingHTTPServer:
    """Serve the three GETs on a daemon thread; `token`: what /status requires (None: loopback Host only)."""
    bind = parse_address(address)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            path = self.path.split("?", 1)[0]
            if path == "/livez":
                code, body = (200, {"live": True}) if live() else (503, {"live": False})
            elif path == "/readyz":
                code, body = (200, {"ready": True}) if ready() else (503, {"ready": False})
            elif path == "/status":
                code, body = self._status()
            else:
                code, body = 404, {"error": "not found"}
            self._answer(code, body)

        def _status(self) -> tuple[int, dict[str, Any]]:
            if token is not None:
                offered = self.headers.get("Authorization", "")
                if not (offered[:7].lower() == "bearer "
                        and hmac.compare_digest(offered[7:].strip().encode(), token.encode())):
                    return 401, {"error": "missing or wrong token: send Authorization: Bearer TOKEN"}
            elif _host_name(self.headers.get("Host", "localhost")) not in LOOPBACK_HOSTS:
                return 400, {"error": "Host not allowed: without a token only localhost, 127.0.0.1 and [::1]"}
            return 200, status()

        def _refuse(self) -> None:
            self._answer(405, {"error": "only GET"})

        do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

        def _answer(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            for name, value in SECURITY_HEADERS:
                self.send_header(name, value)
            if code == 401:
                self.send_header("WWW-Authenticate", 'Bearer realm="segstream"')
            self.end_headers()
            self.wfile.write(data)

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            # the stdlib's HTML error page repeats the request line; a short JSON answer instead
            self.close_connection = True
            self._answer(code, {"error": "bad request" if code < 500 else "error"})

        def log_message(self, *args: Any) -> None:  # probes every few seconds: no access log
            pass

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in bind[0] else socket.AF_INET
        daemon_threads = True

    try:
        server = Server(bind, Handler)
    except OSError as exc:
        raise ConfigError(f"--http {address}: cannot listen ({exc.strerror or exc})") from None
    threading.Thread(target=server.serve_forever, name="probes", daemon=True).start()
    return server
