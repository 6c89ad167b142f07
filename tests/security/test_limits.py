"""Limits of a real `segstream serve` (real redis-server behind it): huge and endless bodies are
refused before they are read, deep JSON is a 4xx, the number of streams is capped (remembered
streams count too), and no answer repeats more than a short prefix of what was sent.

The service is started with three streams already remembered in Redis and serve.max_streams = 2,
as if it had been restarted after someone added more than it now allows.
"""

from __future__ import annotations

import json
import time

import pytest

from redis_server import PrivateRedis
from service_process import PREFIX, SHORT, TOKEN, ServeProcess, parse_answer, raw_exchange
from servers import segstream_cli

MAX_STREAMS = 2


def camera(stream_id: str) -> dict:
    return {"id": stream_id, "url": f"rtsp://127.0.0.1:9/{stream_id}", "kind": "live"}  # nobody listens: retried


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    redis = PrivateRedis()
    redis.start()
    book = f"{PREFIX}service:streams"
    for name in ("old1", "old2", "old3"):  # remembered from before: one more than now allowed
        redis.client().hset(book, name, json.dumps(camera(name)))
    svc = ServeProcess(tmp_path_factory.mktemp("limits"), redis, token=TOKEN,
                       config={"serve": {"max_streams": MAX_STREAMS}})
    svc.start()
    yield svc
    svc.stop()
    redis.stop()


def head(port: int, path: str, length: int | None, content_type: str = "application/json", chunked: bool = False) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Authorization: Bearer {TOKEN}",
             f"Content-Type: {content_type}"]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_restored_streams_count_towards_the_cap(service):
    deadline = time.monotonic() + 30
    while len(service.stream_ids()) < MAX_STREAMS and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # the third, had it been added, would be there by now
    assert len(service.stream_ids()) == MAX_STREAMS
    assert "serve.max_streams" in service.stderr()  # the skipped one is named in the log
    assert len(service.remembered()) == 3  # ... and stays remembered: nothing is lost


def test_past_the_cap_a_new_stream_is_409_with_the_reason_and_room_frees_it(service):
    answer = service.post_json("/streams", camera("cam9"))
    assert answer.status == 409, answer
    assert answer.json()["reason"] == "max_streams" and "serve.max_streams" in answer.json()["error"]
    assert "cam9" not in service.stream_ids() and "cam9" not in service.remembered()
    gone = service.stream_ids()[0]
    assert service.request("DELETE", f"/streams/{gone}").status == 200
    assert service.post_json("/streams", camera("cam9")).status == 201
    assert "cam9" in service.stream_ids()


def test_a_60_mb_body_is_refused_at_once_without_being_read(service):
    """Only the head is sent: a server that waited for the 60 MB would never answer."""
    data, seconds = raw_exchange(service.port, head(service.port, "/streams", 60_000_000))
    answer = parse_answer(data)
    assert answer.status == 413 and seconds < 5
    assert len(answer.body) < SHORT and b"max_body_bytes" in answer.body
    assert service.request("GET", "/livez").status == 200


def test_an_endless_chunked_body_is_cut_off_once_past_the_limit(service):
    chunk = b"[" * 16384
    parts = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 64  # 1 MiB if all were taken
    data, _ = raw_exchange(service.port, head(service.port, "/streams", None, chunked=True), parts)
    answer = parse_answer(data)
    assert answer.status == 413 and len(answer.body) < SHORT


def test_an_8_mb_url_is_refused_stored_nowhere_and_not_echoed(service):
    before = service.remembered()
    huge = "rtsp://127.0.0.1:9/" + "A" * 8_000_000
    answer = service.post_json("/streams", {"id": "big", "url": huge})
    assert answer.status == 413 and len(answer.body) < SHORT
    assert "big" not in service.stream_ids() and service.remembered() == before
    listing = service.request("GET", "/streams")
    assert len(listing.body) < 20_000 and b"AAAAAAAAAA" not in listing.body


def test_deeply_nested_json_is_a_4xx_never_a_500(service):
    for body in ("[" * 50_000, "{\"a\":" * 10_000 + "1" + "}" * 10_000,
                 json.dumps({"id": "deep", "url": "rtsp://127.0.0.1:9/x", "kind": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["live"]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]})):
        answer = service.request("POST", "/streams", body, {"Content-Type": "application/json"})
        assert 400 <= answer.status < 500, answer
        assert len(answer.body) < SHORT
    assert "deep" not in service.stream_ids()
    assert "RecursionError" not in service.stderr()


def test_no_answer_repeats_more_than_a_short_prefix_of_the_request(service):
    long_text = "Z" * 50_000
    tries = {
        "long id": service.post_json("/streams", {"id": long_text, "url": "rtsp://127.0.0.1:9/x"}),
        "long unknown key": service.post_json("/streams", {"id": "k", "url": "rtsp://127.0.0.1:9/x", long_text: 1}),
        "many unknown keys": service.post_json("/streams", {"id": "k", "url": "rtsp://127.0.0.1:9/x",
                                                             **{f"k{i}{'Z' * 20}": 1 for i in range(2000)}}),
        "long kind": service.post_json("/streams", {"id": "k", "url": "rtsp://127.0.0.1:9/x", "kind": long_text}),
        "long path": service.request("GET", "/streams/" + "Z" * 8000),
        "not an object": service.post_json("/streams", [long_text]),
        "not JSON": service.request("POST", "/streams", long_text, {"Content-Type": "application/json"}),
        "missing file": service.post_json("/streams", {"id": "f", "url": "/no/such/" + "Z" * 40_000 + ".mp4", "kind": "file"}),
    }
    for name, answer in tries.items():
        assert 400 <= answer.status < 500, (name, answer.status)
        assert len(answer.body) < SHORT, (name, len(answer.body))
        assert "Z" * 200 not in answer.body.decode(errors="replace"), name
    assert len(tries["many unknown keys"].json()["errors"]) <= 10


def test_a_config_with_more_streams_than_allowed_is_refused_in_one_line(tmp_path):
    streams = [camera(f"c{i}") for i in range(3)]
    (tmp_path / "c.yaml").write_text(json.dumps({"serve": {"max_streams": 2}, "streams": streams}))
    result = segstream_cli("serve", "--config", str(tmp_path / "c.yaml"), "--redis", "redis://127.0.0.1:9/0", timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["segstream: error: streams: 3 streams, more than serve.max_streams (2)"]
