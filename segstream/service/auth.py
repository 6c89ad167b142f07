"""Bearer-token access control for the service, as a plain ASGI middleware.

With a token set, every request needs `Authorization: Bearer TOKEN`, except the Kubernetes probes
(`/livez`, `/readyz`) and, with --metrics-public, `/metrics`. A browser cannot add a header to an
<img> or a page load, so the viewer works with a cookie instead: the small form `/` shows POSTs
the token to `/login` (form-encoded, or JSON `{"token": ...}`; never in an address, so it stays out
of the history and proxy logs), which sets an HttpOnly, SameSite=Strict cookie holding it (Secure
whenever TLS is on) and redirects to `/`. The cookie is accepted for GET/HEAD only: changing
streams (POST, DELETE) always needs the header, so a cross-site form cannot do it. Every
comparison is constant-time.

A pure ASGI middleware rather than Starlette's BaseHTTPMiddleware: it never buffers the endless
MJPEG responses of the viewer.
"""

from __future__ import annotations

import hmac
import json
from http.cookies import SimpleCookie
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

COOKIE = "segstream_token"
OPEN_PATHS = frozenset({"/livez", "/readyz"})

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]

LOGIN_STYLE = """body{font:15px system-ui,sans-serif;background:#15171a;color:#e8e8e8;display:flex;height:90vh;
align-items:center;justify-content:center}form{background:#23262b;padding:24px;border-radius:8px}
input{font:inherit;padding:6px;margin:8px 0;width:260px}p.bad{color:#f66}"""
# The style is inline (the static files need the token) and allowed by its hash in the CSP (guards.py).
LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>segstream: sign in</title>
<style>""" + LOGIN_STYLE + """</style></head>
<body><form method="post" action="login"><div>segstream viewer: this service needs its access token.</div>
%s<input type="password" name="token" placeholder="token" autocomplete="current-password" autofocus><br>
<button type="submit">open</button></form></body></html>
"""
LOGIN_PATH = "/login"
MAX_LOGIN_BODY = 4096


class TokenAuth:
    """Wraps the app; `token` None or empty: everything is open."""

    def __init__(self, app: ASGIApp, token: str | None, metrics_public: bool = False, secure_cookie: bool = False) -> None:
        self.app = app
        self.token = token or None
        self.open_paths = OPEN_PATHS | ({"/metrics"} if metrics_public else set())
        self.secure_cookie = secure_cookie

    def _matches(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), self.token.encode())

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or self.token is None or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and self._matches(auth[7:].strip()):
            return await self.app(scope, receive, send)
        safe = scope["method"] in ("GET", "HEAD")
        if safe and self._matches(_cookie(headers.get("cookie", ""))):
            return await self.app(scope, receive, send)
        if scope["path"] == LOGIN_PATH and scope["method"] == "POST":
            return await self._login(headers, receive, send)
        if safe and scope["path"] in ("/", LOGIN_PATH):
            return await _respond(send, 401, (LOGIN_PAGE % "").encode(), "text/html; charset=utf-8")
        await _respond(send, 401, json.dumps({"error": "missing or wrong token: send Authorization: Bearer TOKEN"}).encode(),
                       "application/json", [(b"www-authenticate", b'Bearer realm="segstream"')])

    async def _login(self, headers: dict[str, str], receive: Callable, send: Callable) -> None:
        """POST /login: the token from a form field or a JSON body -> cookie + 303 to the viewer."""
        offered = _login_token(await _read_body(receive, MAX_LOGIN_BODY), headers.get("content-type", ""))
        if self._matches(offered):
            jar = SimpleCookie()
            jar[COOKIE] = self.token  # SimpleCookie quotes a token with ; or spaces
            jar[COOKIE].update({"path": "/", "httponly": True, "samesite": "Strict", "secure": self.secure_cookie})
            cookie = jar[COOKIE].OutputString()
            return await _respond(send, 303, b"", "text/plain",
                                  [(b"location", b"./"), (b"set-cookie", cookie.encode("latin-1"))])
        await _respond(send, 401, (LOGIN_PAGE % '<p class="bad">wrong token</p>').encode(), "text/html; charset=utf-8")


async def _read_body(receive: Callable, limit: int) -> bytes:
    """At most `limit` bytes of the request body (the guards bound it already; a login is short)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit or not message.get("more_body", False):
            return b"".join(chunks)[:limit]


def _login_token(body: bytes, content_type: str) -> str | None:
    text = body.decode("utf-8", "replace")
    if content_type.split(";")[0].strip().lower() == "application/json":
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            return None
        token = value.get("token") if isinstance(value, dict) else None
        return token if isinstance(token, str) else None
    return parse_qs(text).get("token", [None])[0]


def _cookie(header: str) -> str | None:
    jar = SimpleCookie()
    try:
        jar.load(header)
    except Exception:  # a malformed Cookie header is just no cookie
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else None


async def _respond(send: Callable, status: int, body: bytes, content_type: str,
                   extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
