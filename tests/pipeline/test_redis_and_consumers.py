"""Redis URLs with credentials and TLS work; consumers read what was published."""

from __future__ import annotations

import subprocess
import threading

import pytest

from servers import segstream_cli
from media import write_clip
from segstream.pipeline.wire.consumer import Subscriber
from redis_server import PrivateRedis
from segstream.pipeline.run import run
from segstream.pipeline.wire.redis_link import RedisLinkError
from segstream.pipeline.wire.entries import decode_mask


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clips") / "auth.mp4", frames=4)


def test_password_protected_redis_accepts_the_url_password(clip, fast_config):
    with PrivateRedis(["--requirepass", "s3cret"], password="s3cret") as url:
        fast_config.redis.url = url
        run([str(clip)], fast_config)
        assert len(Subscriber(url, "auth", from_start=True).read_all()) == 5


def test_acl_user_and_password_in_the_url(clip, fast_config):
    acl = ["--user", "default", "off", "--user", "robot", "on", ">pa55", "~segstream:*", "+@all"]
    with PrivateRedis(acl, username="robot", password="pa55") as url:
        fast_config.redis.url = url
        run([str(clip)], fast_config)
        assert Subscriber(url, "auth", from_start=True).read_all()[-1]["eos"] is True


def test_wrong_password_is_a_clear_error_without_the_password(clip):
    with PrivateRedis(["--requirepass", "right"], password="wrong") as url:
        result = segstream_cli("run", str(clip), "--redis", url)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "refused the credentials" in result.stderr and "wrong" not in result.stderr


def test_tls_redis_with_rediss_url(tmp_path, clip, fast_config):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    server = PrivateRedis(["--port", "0", "--tls-auth-clients", "no", "--tls-cert-file", str(cert),
                           "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert)], scheme="rediss")
    server.extra_args = ["--tls-port", str(server.port), *server.extra_args]
    with server:
        url = f"{server.url}?ssl_ca_certs={cert}"
        fast_config.redis.url = url
        run([str(clip)], fast_config)
        assert len(Subscriber(url, "auth", from_start=True).read_all()) == 5
        with pytest.raises(RedisLinkError):  # the same server refuses plain-text clients
            Subscriber(f"redis://127.0.0.1:{server.port}/0", "auth")


def test_subscriber_sees_frames_live_and_masks_decode(tmp_path, fast_config, redis_url):
    clip = write_clip(tmp_path / "live.mp4", frames=6)
    fast_config.model.score_threshold = 0.0
    subscriber = Subscriber(redis_url, "live", block_ms=20000)
    received = []
    reader = threading.Thread(target=lambda: received.extend(_until_eos(subscriber)))
    reader.start()
    run([str(clip)], fast_config)
    reader.join(30)
    assert [m["frame"] for m in received[:-1]] == list(range(6)) and received[-1]["eos"]
    masks = [decode_mask(inst["mask"]) for m in received[:-1] for inst in m["instances"]]
    assert masks and all(mask.shape == (180, 320) for mask in masks)


def test_subscribe_command_prints_one_line_per_frame_and_stops_at_eos(tmp_path, fast_config, redis_url):
    clip = write_clip(tmp_path / "cli.mp4", frames=5)
    run([str(clip)], fast_config)
    result = segstream_cli("subscribe", "cli", "--redis", redis_url, "--from-start", timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 6
    assert lines[0].startswith("cli frame 0 ") and lines[-1] == "cli end of stream: 5 frames"


def _until_eos(subscriber):
    for message in subscriber:
        yield message
        if message.get("eos"):
            return
