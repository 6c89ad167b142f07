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


def run_guarded(app, path: str = "/streams", method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None,
                body: bytes = b"", **options) -> list[dict]:
    from segstream.service.guards import HttpGuards

    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": path, "method": method, "query_string": b"",
             "headers": [(b"host", b"127.0.0.1:8080"), *(headers or [])]}
    asyncio.run(HttpGuards(app, **{"token_set": False, **options})(scope, receive, send))
    return sent


def test_an_unexpected_handler_error_is_logged_once_and_answered_without_details(caplog):
    async def broken(scope, receive, send):
        raise RuntimeError("secret detail /etc/segstream")

    with caplog.at_level("ERROR", logger="segstream.service"):
        sent = run_guarded(broken)
    start, body = sent
    assert start["status"] == 500 and b"secret detail" not in body["body"] and b"/etc" not in body["body"]
    assert (b"x-frame-options", b"DENY") in start["headers"]
    assert len(caplog.records) == 1 and "RuntimeError" in caplog.records[0].getMessage()
    assert "secret detail" not in caplog.records[0].getMessage()


def test_host_names_are_compared_without_their_port_and_case():
    from segstream.service.guards import host_allowed, host_name

    assert [host_name(h) for h in ("LocalHost:8080", "[::1]:80", "[::1]", "127.0.0.1", "cam.example:")] == \
        ["localhost", "::1", "::1", "127.0.0.1", "cam.example"]
    assert host_allowed("a.plant.example", ["*.plant.example"]) and not host_allowed("plant.example.evil", ["*.plant.example"])
    assert not host_allowed("evilplant.example", ["*.plant.example"]) and host_allowed("x", ["*"])


def test_json_depth_counts_brackets_outside_strings_only():
    from segstream.service.guards import json_depth_within

    assert json_depth_within(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', 2)
    assert json_depth_within(b'{"a": "\\"[[[[[[", "b": [1]}', 2)
    assert not json_depth_within(b'{"a": [[1]]}', 2)
