"""The HTTP edge of the service: what every request passes before any handler sees it.

One pure ASGI middleware (never buffers the viewer's endless MJPEG answers), outermost, so its
rules hold for every answer, errors and 404s included:

- security headers on every answer: a Content-Security-Policy that allows only this origin's
  scripts and the login page's one inline style (by hash), `X-Frame-Options: DENY`,
  `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`;
- without a token, only loopback Host names (localhost, 127.0.0.1, [::1], any port) and
  `serve.allowed_hosts`: a web page that rebinds its own name to 127.0.0.1 sends its own name as
  Host and is refused (400) before anything runs (the probes /livez and /readyz excepted: the
  kubelet probes by address, and they carry nothing secret);
- a request with a body needs `Content-Type: application/json` (415), so a cross-site "simple"
  POST (text/plain, form) cannot reach a handler; the login page's form is the one exception;
- bodies are bounded (`serve.max_body_bytes`): a larger Content-Length is answered 413 before a
  byte of the body is read, and a chunked body is counted while it arrives and cut off the same way;
- an exception a handler did not expect is logged once (its type, never the request) and answered
  500 without details, never a traceback; the causes found by fuzzing are fixed where they arise.

`json_body` parses a bounded body with a bounded nesting depth (Python's parser would otherwise
raise RecursionError on a few thousand `[`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from typing import Any, Awaitable, Callable, Iterable

from segstream.service.auth import LOGIN_STYLE

log = logging.getLogger("segstream.service")

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]

#: How much of anything a client sent an answer may repeat.
ECHO_LIMIT = 100
#: The login form posts form-encoded (a browser form cannot send JSON without a script).
FORM_PATHS = frozenset({"/login"})
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
#: Answered whatever the Host: an orchestrator probes the pod's address, and they tell nothing secret.
PROBE_PATHS = frozenset({"/livez", "/readyz"})

_STYLE_HASH = base64.b64encode(hashlib.sha256(LOGIN_STYLE.encode()).digest()).decode()
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self' 'sha256-" + _STYLE_HASH + "'; "
                           "img-src 'self' data: blob:; connect-src 'self'; form-action 'self'; "
                           "frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)


class BodyError(ValueError):
    """The request body cannot be used; `status` (400/413/415) and a message safe to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def clip(text: Any, limit: int = ECHO_LIMIT) -> str:
    """`text` as str, cut to `limit` characters (with '…' when cut): the most an answer repeats."""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "…"


def host_name(header: str) -> str:
    """The name part of a Host header, lower case: 'LocalHost:8080' -> 'localhost', '[::1]:80' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    name, sep, port = header.rpartition(":")
    return name if sep and (port.isdigit() or not port) else header


def host_allowed(name: str, allowed: Iterable[str]) -> bool:
    """Loopback names always; an `allowed` entry matches exactly, '*.example.com' its subdomains, '*' all."""
    if name in LOOPBACK_HOSTS:
        return True
    for pattern in allowed:
        pattern = pattern.strip().lower().strip("[]")
        if pattern == "*" or pattern == name or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False


def json_depth_within(raw: bytes | str, max_depth: int) -> bool:
    """True when no array/object in `raw` nests deeper than `max_depth` (brackets in strings ignored)."""
    depth, in_string, escaped = 0, False, False
    for ch in raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > max_depth:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def json_body(raw: bytes, max_depth: int) -> Any:
    """The parsed JSON of a request body; BodyError(400) when it is not JSON or nests too deep."""
    if not json_depth_within(raw, max_depth):
        raise BodyError(400, f"the body nests deeper than {max_depth} levels")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise BodyError(400, 'the body is not JSON: send a JSON object like {"id": "cam1", "url": "rtsp://..."}') from None


class HttpGuards:
    """Wraps the whole app (see the module doc). `token_set`: a token protects the app, so every
    Host is accepted; `allowed_hosts`: names accepted besides loopback when it does not."""

    def __init__(self, app: ASGIApp, token_set: bool, allowed_hosts: Iterable[str] = (),
                 max_body_bytes: int = 65536) -> None:
        self.app = app
        self.token_set = token_set
        self.allowed_hosts = tuple(allowed_hosts)
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_secured(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            refusal = self._refusal(scope, headers)
            if refusal is None and self._has_body(scope, headers):
                receive = await self._bounded_body(receive, headers)
        except BodyError as exc:
            refusal = exc
        if refusal is not None:
            return await respond_json(send_secured, refusal.status, {"error": str(refusal)})
        try:
            await self.app(scope, receive, send_secured)
        except Exception as exc:  # a cause to find and fix; the client learns nothing of it
            log.error("answered 500 to %s %s: %s", scope["method"], clip(scope["path"], 60), type(exc).__name__)
            if not started:
                await respond_json(send_secured, 500, {"error": "internal error (logged)"})

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> BodyError | None:
        if (not self.token_set and "host" in headers and scope["path"] not in PROBE_PATHS
                and not host_allowed(host_name(headers["host"]), self.allowed_hosts)):
            return BodyError(400, "Host not allowed: without a token only localhost, 127.0.0.1 and [::1] "
                             "(and serve.allowed_hosts) are served")
        return None

    def _has_body(self, scope: Scope, headers: dict[str, str]) -> bool:
        length = headers.get("content-length", "").strip()
        chunked = "transfer-encoding" in headers
        if scope["method"] not in BODY_METHODS and not chunked and length in ("", "0"):
            return False
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json" and not (scope["path"] in FORM_PATHS and media in FORM_TYPES):
            if chunked or length not in ("", "0"):
                raise BodyError(415, "send the body as Content-Type: application/json")
        if length.isdigit() and int(length) > self.max_body_bytes:
            raise BodyError(413, f"the body is larger than {self.max_body_bytes} bytes (serve.max_body_bytes)")
        return chunked or length not in ("", "0")

    async def _bounded_body(self, receive: Callable, headers: dict[str, str]) -> Callable:
        """Read the body (at most max_body_bytes, else BodyError 413) and replay it to the app."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: nothing to answer
                raise BodyError(400, "the request ended before its body")
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                raise BodyError(413, f"the body is larger than {self.max_body_bytes} bytes (serve.max_body_bytes)")
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # afterwards: the client's disconnect, as usual

        return replay


async def respond_json(send: Callable, status: int, body: dict[str, Any],
                       extra: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"cache-control", b"no-store"), *(extra or [])]})
    await send({"type": "http.response.body", "body": data})
