"""A real `segstream serve` subprocess for the security tests, and a raw HTTP client for attacking it.

The client is http.client (or a bare socket where a test needs to control what is sent and when),
so a test can send exactly what an attacker would: any Host, any Content-Type, a Content-Length
with no body behind it.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from redis_server import PrivateRedis, free_port, stop_process

TOKEN = "a-token-of-32-characters-or-so-x"
PREFIX = "segstream:"
#: How much of its request an answer may repeat, with room for the fixed text around it.
SHORT = 1024


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ServeProcess:
    """`segstream serve` on 127.0.0.1:port with its own config; `token` None: none set."""

    folder: Path
    redis: PrivateRedis
    token: str | None
    config: dict[str, Any] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> "ServeProcess":
        self.port = free_port()
        config = {"model": {"input_size": [128, 224]}, "output": {"progress": False},
                  "redis": {"url": self.redis.url, "prefix": PREFIX},
                  "source": {"open_timeout": 1, "stall_timeout": 2}, **self.config}
        (self.folder / "service.yaml").write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if k != "SEGSTREAM_TOKEN"}
        if self.token is not None:
            env["SEGSTREAM_TOKEN"] = self.token
        exe = Path(sys.executable).with_name("segstream")
        self.log = self.folder / "serve.log"
        self.process = subprocess.Popen([str(exe), "serve", "--config", str(self.folder / "service.yaml"),
                                         "--http", f"127.0.0.1:{self.port}"],
                                        stdout=subprocess.DEVNULL, stderr=self.log.open("w"), env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"segstream serve exited {self.process.returncode}:\n{self.stderr()}")
            try:
                if self.request("GET", "/readyz").status == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"segstream serve not ready after {timeout} s:\n{self.stderr()}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: bytes | str | None = None, headers: dict[str, str] | None = None,
                auth: bool = True, timeout: float = 30) -> Answer:
        """One request on a fresh connection; the token is sent when set and `auth`."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            sent = dict(headers or {})
            if auth and self.token is not None:
                sent.setdefault("Authorization", f"Bearer {self.token}")
            conn.request(method, path, body=body.encode() if isinstance(body, str) else body, headers=sent)
            response = conn.getresponse()
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()

    def post_json(self, path: str, value: Any, **kwargs: Any) -> Answer:
        return self.request("POST", path, json.dumps(value), {"Content-Type": "application/json"}, **kwargs)

    def stream_ids(self) -> list[str]:
        answer = self.request("GET", "/streams")
        assert answer.status == 200, answer
        return [s["id"] for s in answer.json()]

    def remembered(self) -> set[str]:
        """The stream ids the service wrote to Redis (to be added again after a restart)."""
        return {k.decode() for k in self.redis.client().hkeys(f"{PREFIX}service:streams")}


def raw_exchange(port: int, head: bytes, body_parts: list[bytes] = (), timeout: float = 10) -> tuple[bytes, float]:
    """Send `head` then `body_parts` (stopping early if the server answers or closes), and return
    (what the server answered, seconds until its first byte)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        started = time.monotonic()
        sock.sendall(head)
        got = b""
        sock.settimeout(0.05)
        for part in body_parts:
            try:
                sock.sendall(part)
            except OSError:  # the server closed early: what it said is all we need
                break
            try:
                chunk = sock.recv(65536)
                if chunk:
                    got += chunk
                    break
            except socket.timeout:
                pass
            except OSError:
                break
        first = None
        sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if got and first is None:
                first = time.monotonic() - started
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            got += chunk
            if first is None:
                first = time.monotonic() - started
            if b"\r\n\r\n" in got and _complete(got):
                break
        return got, first if first is not None else float("inf")


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def parse_answer(data: bytes) -> Answer:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(status, headers, body)
