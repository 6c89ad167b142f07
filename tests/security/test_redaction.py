"""Secrets in source URLs are shown as *** in every text a person or a log sees (the service's
places are checked against the real service in test_source_attacks.py, the fleet's in
test_fleet_sources.py)."""

from __future__ import annotations

import pytest

from segstream.pipeline.sources.locations import redact, redact_text

CASES = {
    "rtsp://admin:hunter2@10.0.0.7/live": "rtsp://admin:***@10.0.0.7/live",
    "rtsp://TOKEN123@cam/s": "rtsp://***@cam/s",
    "rtsp://cam/s?user=admin&password=X1": "rtsp://cam/s?user=admin&password=***",
    "rtsp://cam/s?PASSWD=a&Pwd=b&pass=c": "rtsp://cam/s?PASSWD=***&Pwd=***&pass=***",
    "https://h/a.mp4?token=t&access_token=u&apikey=v&x-api-key=w": "https://h/a.mp4?token=***&access_token=***&apikey=***&x-api-key=***",
    "https://b.s3/a.mp4?X-Amz-Signature=s&X-Amz-Credential=c&sig=x&a=1": "https://b.s3/a.mp4?X-Amz-Signature=***&X-Amz-Credential=***&sig=***&a=1",
    "http://h/a?secret=1;auth=2#frag": "http://h/a?secret=***;auth=***#frag",
    "rtsp://u:p@[::1:80/x?key=k": "rtsp://u:***@[::1:80/x?key=***",  # not parseable: still redacted
    "/media/plain file.mp4": "/media/plain file.mp4",
}


@pytest.mark.parametrize("url", sorted(CASES))
def test_every_secret_form_is_shown_as_stars(url):
    assert redact(url) == CASES[url]


def test_an_ffmpeg_error_naming_the_secret_is_redacted_too():
    url = "rtsp://TOKEN123@cam/s?password=pw%21x"
    text = f"Server returned 401 Unauthorized for {url} (user TOKEN123, password pw!x)"
    shown = redact_text(text, url)
    assert "TOKEN123" not in shown and "pw!x" not in shown and "pw%21x" not in shown, shown
    assert "rtsp://***@cam/s?password=***" in shown


def test_a_raw_slash_or_at_sign_in_a_password_does_not_move_it_out_of_sight():
    assert redact("rtsp://user:pa/ss@cam/x?a=1") == "rtsp://user:***@cam/x?a=1"
    assert redact("rtsp://user:p@ss@cam/x") == "rtsp://user:***@cam/x"
    assert redact("redis://:hunter2@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
