"""The HTTP defaults of issue 21, tried as an attacker would against a real `segstream serve`
(a real redis-server behind it, loopback only): a web page a LAN user visits, a forged Host after
DNS rebinding, a login through the address bar, a public bind without a token.

Two services serve the module: `open_service` with no token on 127.0.0.1 (what a developer runs),
`guarded` with a token. Each is started once (the model loads once each).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from redis_server import PrivateRedis, free_port, stop_process
from service_process import TOKEN, ServeProcess

SECURITY_HEADERS = ("content-security-policy", "x-frame-options", "x-content-type-options", "referrer-policy")
CAMERA = {"id": "cam1", "url": "rtsp://127.0.0.1:9/cam1", "kind": "live"}  # nobody listens: retried quietly


@pytest.fixture(scope="module")
def open_service(tmp_path_factory, redis):
    svc = ServeProcess(tmp_path_factory.mktemp("open"), redis, token=None,
                       config={"serve": {"allowed_hosts": ["cams.plant.example"]}, "redis": {"url": redis.url, "prefix": "open:"}})
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, redis):
    svc = ServeProcess(tmp_path_factory.mktemp("guarded"), redis, token=TOKEN)
    svc.start()
    yield svc
    svc.stop()


def stream_keys(redis: PrivateRedis, prefix: str) -> set[str]:
    """What the service keeps about API streams in Redis (the camera book's fields)."""
    return {k.decode() for k in redis.client().hkeys(f"{prefix}fleet:cameras")}


# -- a web page the user visits: "simple" cross-site requests ---------------------------------

def test_a_text_plain_post_from_a_web_page_is_refused_and_creates_nothing(open_service, redis):
    body = json.dumps({"id": "evil", "url": "rtsp://127.0.0.1:9/x"})
    for content_type in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                         "multipart/form-data; boundary=x", None):
        headers = {"Origin": "http://attacker.example"} | ({"Content-Type": content_type} if content_type else {})
        answer = open_service.request("POST", "/streams", body, headers)
        assert answer.status == 415, (content_type, answer)
        assert b"application/json" in answer.body
    assert "evil" not in open_service.stream_ids()
    assert "evil" not in stream_keys(redis, "open:")


def test_a_forged_host_is_refused_without_a_token(open_service, redis):
    """DNS rebinding: the attacker's page now resolves to 127.0.0.1 but still says Host: its name."""
    for host in ("attacker.example", "attacker.example:8080", "127.0.0.1.nip.io", "localhost.attacker.example", "0.0.0.0"):
        assert open_service.request("GET", "/streams", headers={"Host": host}).status == 400, host
        answer = open_service.request("POST", "/streams", json.dumps({"id": "rebound", "url": "rtsp://127.0.0.1:9/x"}),
                                      {"Host": host, "Content-Type": "application/json"})
        assert answer.status == 400 and b"Host" in answer.body, (host, answer)
    assert "rebound" not in open_service.stream_ids()
    assert "rebound" not in stream_keys(redis, "open:")
    # the probes answer any Host (a kubelet probes the pod's address); they tell nothing secret
    assert open_service.request("GET", "/readyz", headers={"Host": "10.1.2.3:8080"}).status == 200
    for host in ("localhost", f"localhost:{open_service.port}", "127.0.0.1", f"[::1]:{open_service.port}",
                 "LOCALHOST", "cams.plant.example:8080"):  # the last from serve.allowed_hosts
        assert open_service.request("GET", "/streams", headers={"Host": host}).status == 200, host


def test_with_a_token_any_host_is_served_to_the_token_holder(guarded):
    assert guarded.request("GET", "/streams", headers={"Host": "segstream.plant.example"}).status == 200
    assert guarded.request("GET", "/streams", headers={"Host": "segstream.plant.example"}, auth=False).status == 401


# -- headers ----------------------------------------------------------------------------------

def test_every_answer_carries_the_security_headers(guarded, open_service):
    answers = {
        "200 livez": guarded.request("GET", "/livez", auth=False),
        "200 streams": guarded.request("GET", "/streams"),
        "200 metrics": guarded.request("GET", "/metrics"),
        "200 openapi": guarded.request("GET", "/openapi.json"),
        "401": guarded.request("GET", "/streams", auth=False),
        "401 login page": guarded.request("GET", "/", auth=False),
        "404": guarded.request("GET", "/no/such/page"),
        "404 stream": guarded.request("GET", "/streams/nope"),
        "405": guarded.request("PUT", "/streams", "{}", {"Content-Type": "application/json"}),
        "413": guarded.request("POST", "/streams", "x" * 70_000, {"Content-Type": "application/json"}),
        "415": guarded.request("POST", "/streams", "{}", {"Content-Type": "text/plain"}),
        "422": guarded.post_json("/streams", {"id": "x"}),
        "400 host": open_service.request("GET", "/", headers={"Host": "attacker.example"}),
        "200 viewer": open_service.request("GET", "/"),
    }
    for name, answer in answers.items():
        missing = [h for h in SECURITY_HEADERS if h not in answer.headers]
        assert not missing, f"{name} ({answer.status}) lacks {missing}"
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert answers["404"].status == 404 and answers["405"].status == 405


# -- the viewer's login -----------------------------------------------------------------------

def test_the_login_is_a_post_and_a_token_in_the_address_logs_nobody_in(guarded):
    via_address = guarded.request("GET", "/?" + urllib.parse.urlencode({"token": TOKEN}), auth=False)
    assert via_address.status == 401 and "set-cookie" not in via_address.headers
    page = guarded.request("GET", "/", auth=False).body.decode()
    assert 'method="post"' in page and 'action="login"' in page
    wrong = guarded.request("POST", "/login", "token=not-the-token-at-all", {"Content-Type": "application/x-www-form-urlencoded"}, auth=False)
    assert wrong.status == 401 and "set-cookie" not in wrong.headers and b"wrong token" in wrong.body

    form = guarded.request("POST", "/login", urllib.parse.urlencode({"token": TOKEN}),
                           {"Content-Type": "application/x-www-form-urlencoded"}, auth=False)
    assert form.status == 303 and form.headers["location"] == "./"
    cookie = form.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie  # plain HTTP here
    as_json = guarded.post_json("/login", {"token": TOKEN}, auth=False)
    assert as_json.status == 303 and as_json.headers["set-cookie"] == cookie

    jar = {"Cookie": cookie.split(";")[0]}
    assert guarded.request("GET", "/streams", headers=jar, auth=False).status == 200
    assert guarded.request("GET", "/", headers=jar, auth=False).status == 200  # the viewer itself
    # the cookie is for reading: changing streams needs the header, so a cross-site form cannot
    added = guarded.request("POST", "/streams", json.dumps(CAMERA), {**jar, "Content-Type": "application/json"}, auth=False)
    assert added.status == 401
    assert "cam1" not in guarded.stream_ids()


def test_the_cookie_is_secure_whenever_tls_is_on(tmp_path, redis):
    """A short-lived HTTPS service (self-signed certificate): the login cookie says Secure."""
    import ssl
    import http.client

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    port = free_port()
    exe = Path(sys.executable).with_name("segstream")
    (tmp_path / "c.yaml").write_text(f"model: {{input_size: [128, 224]}}\nredis: {{url: '{redis.url}', prefix: 'tls:'}}\n")
    log = tmp_path / "serve.log"
    process = subprocess.Popen([str(exe), "serve", "--config", str(tmp_path / "c.yaml"), "--http", f"127.0.0.1:{port}",
                                "--tls-cert", str(cert), "--tls-key", str(key)], stdout=subprocess.DEVNULL,
                               stderr=log.open("w"), env={**_env_without_token(), "SEGSTREAM_TOKEN": TOKEN})
    context = ssl.create_default_context(cafile=str(cert))
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log.read_text()
            try:
                conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
                conn.request("POST", "/login", urllib.parse.urlencode({"token": TOKEN}),
                             {"Content-Type": "application/x-www-form-urlencoded"})
                response = conn.getresponse()
                if response.status != 503:  # 503 while the model loads (only the probes answer then)
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        assert response.status == 303
        assert "Secure" in response.getheader("set-cookie") and "HttpOnly" in response.getheader("set-cookie")
    finally:
        stop_process(process)


# -- what the service tells about itself ------------------------------------------------------

def test_readyz_shows_no_filesystem_paths(guarded):
    answer = guarded.request("GET", "/readyz", auth=False)
    assert answer.status == 200
    for key, value in answer.json().items():
        assert not (isinstance(value, str) and ("/" in value or "\\" in value)), (key, value)
    assert str(Path.home()) not in answer.body.decode()


# -- the command line: refused before anything listens ----------------------------------------

def _env_without_token() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "SEGSTREAM_TOKEN"}


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("segstream")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout,
                          env={**_env_without_token(), **(env or {})})


def nobody_listens(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_a_public_bind_without_a_token_is_refused_in_one_line(redis):
    for command, address in ((["serve", "--redis", redis.url], "0.0.0.0:{port}"), (["serve", "--redis", redis.url], ":{port}"),
                             (["run", "in.mp4", "--redis", redis.url], "0.0.0.0:{port}"),
                             (["worker", "--redis", redis.url], "0.0.0.0:{port}")):
        port = free_port()
        result = run_cli(*command, "--http", address.format(port=port))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (command, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("segstream: error: --http:") and "token" in lines[0], lines
        assert "--insecure-no-auth" in lines[0]
        assert nobody_listens(port)


def test_insecure_no_auth_says_so_in_one_line():
    with socket.socket() as taken:  # a taken port: the command stops right after its warning
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli("serve", "--redis", "redis://127.0.0.1:9/0", "--http", f"0.0.0.0:{port}", "--insecure-no-auth")
    lines = result.stderr.strip().splitlines()
    warnings = [line for line in lines if "warning" in line]
    assert len(warnings) == 1 and "--insecure-no-auth" in warnings[0] and "without a token" in warnings[0], lines
    assert lines[-1].startswith("segstream: error: --http: cannot listen"), lines


def test_a_short_token_on_the_command_line_is_refused_and_the_flag_warned_about():
    short = "short-secret-15"  # 15 characters
    result = run_cli("serve", "--redis", "redis://127.0.0.1:9/0", "--http", f"127.0.0.1:{free_port()}", "--token", short)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "segstream: warning: --token shows the token in the process list; prefer $SEGSTREAM_TOKEN or --token-file",
        "segstream: error: --token: the token is 15 characters; it needs at least 16 characters "
        "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"]
    assert short not in result.stderr  # the secret is never printed


def test_a_short_token_from_a_file_or_the_environment_is_refused_too(tmp_path):
    import argparse
    import io

    from segstream.pipeline.config import ConfigError
    from segstream.service.exposure import resolve_token

    short = "short-secret-15"
    (tmp_path / "token").write_text(short + "\n")
    (tmp_path / "good").write_text(TOKEN + "\n")
    flags = lambda **kw: argparse.Namespace(**{"token": None, "token_file": None, **kw})  # noqa: E731
    for args, env in ((flags(token_file=str(tmp_path / "token")), {}), (flags(), {"SEGSTREAM_TOKEN": short})):
        with pytest.raises(ConfigError, match="at least 16 characters") as refused:
            resolve_token(args, env, warn=io.StringIO())
        assert short not in str(refused.value)
    with pytest.raises(ConfigError, match="--token-file: cannot read"):
        resolve_token(flags(token_file=str(tmp_path / "nope")), {})
    assert resolve_token(flags(token_file=str(tmp_path / "good")), {}) == TOKEN
    assert resolve_token(flags(), {"SEGSTREAM_TOKEN": TOKEN}) == TOKEN
    assert resolve_token(flags(), {}) is None


# -- fleet worker probes ----------------------------------------------------------------------

def test_worker_probes_bind_loopback_and_status_needs_the_token(redis):
    port = free_port()
    exe = Path(sys.executable).with_name("segstream")
    worker = subprocess.Popen([str(exe), "worker", "--redis", redis.url, "--http", f":{port}", "--input-size", "128x224"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**_env_without_token(), "SEGSTREAM_TOKEN": TOKEN})
    import http.client

    def get(path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    try:
        deadline = time.monotonic() + 120
        while True:
            assert worker.poll() is None, worker.stderr.read()
            try:
                status, headers, _ = get("/livez")
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.3)
        assert status == 200 and headers["x-frame-options"] == "DENY"
        listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
        local = [line.split()[3] for line in listening.splitlines()]  # State Recv-Q Send-Q Local Peer
        assert local == [f"127.0.0.1:{port}"], listening
        assert get("/status")[0] == 401
        assert get("/status", {"Authorization": "Bearer wrong-token-of-enough-length"})[0] == 401
        status, _, body = get("/status", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and json.loads(body)
        assert get("/readyz")[0] in (200, 503)  # the probes need no token (Kubernetes' carry none)
    finally:
        stop_process(worker)


def test_a_tokenless_worker_shows_its_status_to_loopback_host_names_only(redis):
    import http.client

    port = free_port()
    exe = Path(sys.executable).with_name("segstream")
    worker = subprocess.Popen([str(exe), "worker", "--redis", redis.url, "--http", f"127.0.0.1:{port}", "--input-size", "128x224"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env_without_token())

    def status_with_host(host: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/status", headers={"Host": host})
            return conn.getresponse().status
        finally:
            conn.close()

    try:
        deadline = time.monotonic() + 120
        while True:
            assert worker.poll() is None
            try:
                first = status_with_host(f"127.0.0.1:{port}")
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.3)
        assert first == 200
        assert status_with_host("attacker.example") == 400  # a rebound page cannot read the jobs
        assert status_with_host(f"localhost:{port}") == 200
    finally:
        stop_process(worker)
