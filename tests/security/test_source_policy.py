"""The source policy as a user meets it in one line: what is refused (and why), what keeps working.

These are the rules every entry point applies (the API, config `streams:`, the CLI, fleet jobs and
cameras); tests/security/test_source_attacks.py and friends prove against the real service that a
refused source is never opened.
"""

from __future__ import annotations

import os

import pytest

from segstream.pipeline.config import ConfigError, parse_config
from segstream.pipeline.sources.policy import MAX_URL_LENGTH, SourceRefused, check_source, protocol_whitelist

DEFAULT = parse_config({}).sources
REDIS_CRLF = "rtsp://127.0.0.1:6379/a\r\nSET canary 1\r\nX"

HOSTILE = {
    "crlf raw": (REDIS_CRLF, "control characters"),
    "crlf percent-encoded": ("rtsp://127.0.0.1:6379/a%0d%0aSET%20canary%201%0D%0AX", "control characters"),
    "crlf encoded twice": ("rtsp://127.0.0.1:6379/a%250d%250aSET", "control characters"),
    "nul in the user info": ("rtsp://u%00@cam/s", "control characters"),
    "DEL": ("rtsp://cam/s\x7f", "control characters"),
    "C1 next line": ("rtsp://cam/s\x85SET", "control characters"),
    "gopher": ("gopher://127.0.0.1:6379/_SET%20canary%201%0d%0a", "control characters"),
    "gopher plain": ("gopher://127.0.0.1:6379/_INFO", "scheme 'gopher' is not allowed"),
    "tcp listen": ("tcp://127.0.0.1:9999?listen=1", "scheme 'tcp' is not allowed"),
    "file url": ("file:///etc/passwd", "file: URLs are not accepted"),
    "file url, no slashes": ("file:/etc/passwd", "file: URLs are not accepted"),
    "concat": ("concat:/etc/passwd|/etc/hosts", "scheme 'concat' is not allowed"),
    "data": ("data:video/mp4;base64,AAAA", "scheme 'data' is not allowed"),
    "pipe": ("pipe:0", "scheme 'pipe' is not allowed"),
    "fd": ("fd:3", "scheme 'fd' is not allowed"),
    "unix": ("unix:///run/redis.sock", "scheme 'unix' is not allowed"),
    "upper-case scheme still judged": ("CONCAT:/etc/passwd", "scheme 'concat' is not allowed"),
    "udp on any address": ("udp://0.0.0.0:5004", "listening"),
    "udp on a local port": ("udp://@:5004", "listening"),
    "udp from loopback": ("udp://127.0.0.1:5004", "listening"),
    "udp with localport": ("udp://239.0.0.1:5004?localport=6000", "listen"),
    "srt listener": ("srt://cam:9000?mode=listener", "listen"),
    "srt without host": ("srt://:9000", "listens"),
    "rtmp listen": ("rtmp://cam/app?listen=1", "listen"),
    "rtsp flags listen": ("rtsp://cam/s?rtsp_flags=listen", "listen"),
    "no host": ("http:///etc/passwd", "no host"),
    "bad port": ("rtsp://cam:99999/s", "not a valid URL"),
    "single slash": ("rtsp:/cam/s", "look like rtsp://"),
    "too long": ("rtsp://cam/" + "a" * MAX_URL_LENGTH, "at most 2048"),
}


@pytest.mark.parametrize("origin", ["api", "trusted"])
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_urls_are_refused_from_every_origin_with_their_cause(name, origin):
    url, cause = HOSTILE[name]
    with pytest.raises(SourceRefused) as refused:
        check_source(url, DEFAULT, origin)
    message = str(refused.value)
    assert cause in message, message
    assert "\r" not in message and "\n" not in message and len(message) < 400, message


@pytest.mark.parametrize("url", ["rtsp://10.20.0.7:554/Streaming/Channels/101", "rtsps://cam.plant.local/live",
                                 "rtmp://10.0.0.9/live/key", "srt://10.0.0.9:9000?mode=caller", "udp://239.0.0.1:5004",
                                 "http://10.1.1.1/clip.mp4", "https://files.example.com/a/b.mp4?X-Amz-Signature=abc",
                                 "https://files.example.com/b.mp4?mode=night&width=640",
                                 "rtsp://admin:p%40ss@10.0.0.7/live"])
def test_normal_camera_and_file_urls_pass_unchanged(url):
    for origin in ("api", "trusted"):
        assert check_source(url, DEFAULT, origin).location == url


def test_each_scheme_may_open_only_the_protocols_it_needs():
    assert protocol_whitelist("rtsp://cam/s") == "rtsp,rtsps,tcp,tls,udp,rtp"
    assert protocol_whitelist("https://h/a.mp4") == "http,https,tls,tcp,crypto"
    assert protocol_whitelist("/media/a.mp4") == "file"
    for whitelist in (protocol_whitelist(u) for u in ("rtsp://c", "http://h", "https://h", "rtmp://h", "udp://239.0.0.1:1")):
        assert not {"file", "concat", "subfile", "pipe", "fd", "data", "unix", "gopher"} & set(whitelist.split(","))


def test_api_local_paths_need_a_media_root_and_every_refusal_reads_the_same(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    (root / "ok.mp4").write_bytes(b"x")
    private = tmp_path / "private.mp4"
    private.write_bytes(b"x")
    os.symlink(private, root / "escape.mp4")
    (root / "folder").mkdir()
    with pytest.raises(SourceRefused, match="no sources.media_root is configured"):
        check_source(str(root / "ok.mp4"), DEFAULT, "api")
    policy = parse_config({"sources": {"media_root": str(root)}}).sources
    assert check_source(str(root / "ok.mp4"), policy, "api").location == str((root / "ok.mp4").resolve())
    texts = set()
    for path in (str(private), str(root / ".." / "private.mp4"), str(root / "escape.mp4"), "/etc/passwd",
                 "relative.mp4", "subfile,,start,0,end,0,,:/etc/passwd", "/dev/video0"):
        with pytest.raises(SourceRefused) as refused:
            check_source(path, policy, "api")
        texts.add(str(refused.value))
    assert len(texts) == 1, texts
    # The folder and the missing file pass the policy (under the root); opening them gives the same text
    # (StreamControl, checked against the real service in test_source_attacks.py).


def test_trusted_origins_read_local_files_anywhere_or_only_under_a_media_root_when_set(tmp_path):
    clip = tmp_path / "a.mp4"
    assert check_source(str(clip), DEFAULT, "trusted").location == str(clip.resolve())
    # a relative path that looks like an FFmpeg protocol is opened as the file it names, never as a protocol
    admitted = check_source("subfile,,start,0,end,0,,:/etc/passwd", DEFAULT, "trusted")
    assert admitted.location.startswith("/") and admitted.protocols == "file"
    policy = parse_config({"sources": {"media_root": str(tmp_path / "media")}}).sources
    with pytest.raises(SourceRefused, match="outside sources.media_root"):
        check_source(str(clip), policy, "trusted")


def test_allow_listen_opens_listening_forms_only_when_configured():
    relaxed = parse_config({"sources": {"allow_listen": True, "schemes": ["udp", "srt"]}}).sources
    assert check_source("udp://0.0.0.0:5004", relaxed).location == "udp://0.0.0.0:5004"
    assert check_source("srt://:9000?mode=listener", relaxed)
    with pytest.raises(SourceRefused, match="control characters"):  # never relaxed
        check_source("udp://0.0.0.0:5004\r\n", relaxed)


@pytest.mark.parametrize("schemes, fragment", [(["file"], "file cannot be allowed"), (["concat", "rtsp"], "concat cannot"),
                                               (["gopher"], "gopher cannot")])
def test_schemes_that_read_local_data_can_never_be_configured(schemes, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_config({"sources": {"schemes": schemes}})


def test_media_root_must_be_absolute():
    with pytest.raises(ConfigError, match="sources.media_root: must be an absolute path"):
        parse_config({"sources": {"media_root": "media"}})
