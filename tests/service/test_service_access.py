"""The token rules at the ASGI level (the served app is covered end to end in test_serve.py)."""

from __future__ import annotations

import asyncio

from segstream.service.auth import TokenAuth


def status_of(auth: TokenAuth, path: str, method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None) -> int:
    sent: list[dict] = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    auth.app = app
    scope = {"type": "http", "path": path, "method": method, "headers": headers or [], "query_string": b""}
    asyncio.run(auth(scope, receive, send))
    return sent[0]["status"]


def test_metrics_public_opens_only_metrics():
    closed, public = TokenAuth(None, "t"), TokenAuth(None, "t", metrics_public=True)
    assert status_of(closed, "/metrics") == 401
    assert status_of(public, "/metrics") == 200
    assert status_of(public, "/streams") == 401
    assert status_of(public, "/streams", headers=[(b"authorization", b"Bearer t")]) == 200
    assert status_of(public, "/readyz") == status_of(public, "/livez") == 200


def test_without_a_token_everything_is_open():
    assert status_of(TokenAuth(None, None), "/streams", "POST") == 200
    assert status_of(TokenAuth(None, ""), "/metrics") == 200
