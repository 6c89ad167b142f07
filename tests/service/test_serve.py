"""`segstream serve` as an operator meets it: the real command on a free port, a real redis-server,
real gstreamer RTSP cameras, the real model, and the viewer in a real headless Chromium.

One service process serves the whole module (the model loads once, which is itself checked); the
tests run in file order and build on each other like an operator's session: cameras added, one
removed, metrics scraped, the viewer opened, Redis lost and back, then SIGTERM and a restart that
runs the cameras of the book again (a single serve is a fleet of one: its cameras are in the
fleet's camera book, `<prefix>fleet:cameras`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from redis_server import PrivateRedis, free_port, stop_process
from servers import RtspServer
from servers import wait_for  # noqa: E402

TOKEN = "s3cret token;with=odd chars"
PREFIX = "segstream:"
CAMERAS = ("cam1", "cam2", "cam3")


@dataclass
class Service:
    process: subprocess.Popen
    base: str
    log: Path
    redis: PrivateRedis
    camera_url: Callable[[str], str]

    def call(self, method: str, path: str, body: Any = None, token: str | None = TOKEN,
             headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, Any, dict]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=dict(headers or {}))
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, payload, got = response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as err:
            status, payload, got = err.code, err.read(), dict(err.headers)
        kind = got.get("content-type", "")
        return status, (json.loads(payload) if "json" in kind else payload.decode(errors="replace")), got

    def streams(self) -> dict[str, dict]:
        status, body, _ = self.call("GET", "/streams")
        assert status == 200, body
        return {s["id"]: s for s in body}

    def metrics(self) -> dict[str, Any]:
        status, text, _ = self.call("GET", "/metrics")
        assert status == 200, text
        return {family.name: family for family in text_string_to_metric_families(text)}

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


def frames_on_redis(client, stream_id: str) -> list[dict]:
    """The frame entries (not status or EOS entries) on a stream, oldest first."""
    entries = [json.loads(fields[b"data"]) for _, fields in client.xrange(f"{PREFIX}{stream_id}")]
    return [e for e in entries if "frame" in e and "instances" in e]


def start_service(folder: Path, redis: PrivateRedis, port: int, name: str) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("segstream")
    log = folder / f"{name}.log"
    return subprocess.Popen([str(exe), "serve", "--config", str(folder / "service.yaml"), "--http", f"127.0.0.1:{port}",
                             "--token", TOKEN], stdout=subprocess.DEVNULL, stderr=log.open("w"), env={**os.environ})


def wait_alive(service: Service, timeout: float = 120) -> None:
    def alive() -> bool:
        if service.process.poll() is not None:
            raise AssertionError(f"segstream serve exited with {service.process.returncode}:\n{service.stderr()}")
        try:
            # /livez answers from the start (while Redis is awaited and the model loads); ready is up
            return service.call("GET", "/readyz", token=None)[0] == 200
        except OSError:
            return False

    wait_for(alive, timeout, "the service to be ready (/readyz 200)", every=0.5)


def media_folder(tmp_path_factory) -> Path:
    """The service's `sources.media_root`: local files may be posted from here only."""
    path = tmp_path_factory.getbasetemp() / "serve-media"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def cameras():
    server = RtspServer(width=320, height=180, fps=10)
    server.args += ["--mounts", str(len(CAMERAS))]  # /cam1 .. /cam3 on one server
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def service(tmp_path_factory, cameras):
    folder = tmp_path_factory.mktemp("serve")
    redis = PrivateRedis(appendonly=True)  # our own: this module kills and restarts it
    redis.start()
    config = {
        "model": {"input_size": [128, 224], "score_threshold": 0.3},
        "redis": {"url": redis.url, "prefix": PREFIX, "maxlen": 100_000},
        "output": {"progress": False},
        "source": {"open_timeout": 2, "stall_timeout": 3},
        "viewer": {"fps": 5},
        "sources": {"media_root": str(media_folder(tmp_path_factory))},
    }
    (folder / "service.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = start_service(folder, redis, port, "serve")
    # cam3 carries a password, which must never be shown
    svc = Service(process, f"http://127.0.0.1:{port}", folder / "serve.log", redis,
                  lambda name: f"rtsp://{'viewer:hunter2@' if name == 'cam3' else ''}127.0.0.1:{cameras.port}/{name}")
    svc.folder = folder  # type: ignore[attr-defined]
    svc.name = f"{os.uname().nodename}-{process.pid}"  # type: ignore[attr-defined]  (its default fleet name)
    svc.port = port  # type: ignore[attr-defined]
    try:
        wait_alive(svc)
        yield svc
    finally:
        stop_process(svc.process, grace=20)
        redis.stop()


def test_three_cameras_added_over_http_publish_and_the_removed_one_stops(service):
    for name in CAMERAS:
        status, body, headers = service.call("POST", "/streams", {"id": name, "url": service.camera_url(name)})
        assert status == 201, body
        assert body["id"] == name and body["kind"] == "live"
        assert body["state"] in ("connecting", "live")
        assert headers["location"] == f"/streams/{name}"
    wait_for(lambda: all(s["frames_published"] > 0 for s in service.streams().values()), 60,
             "every camera to publish frames")
    client = service.redis.client()
    assert all(frames_on_redis(client, name) for name in CAMERAS)
    assert set(client.hkeys(f"{PREFIX}fleet:cameras")) == {n.encode() for n in CAMERAS}
    assert {s["worker"] for s in service.streams().values()} == {service.name}

    status, body, _ = service.call("DELETE", "/streams/cam2")
    assert status == 200 and body["id"] == "cam2"
    streams = service.streams()
    assert set(streams) == {"cam1", "cam3"}
    for s in streams.values():
        assert s["state"] == "live" and s["fps_out"] > 0 and s["latency_p50"] is not None
    assert streams["cam1"]["url"] == service.camera_url("cam1")
    assert "hunter2" not in streams["cam3"]["url"] and "hunter2" not in service.stderr()
    assert service.call("GET", "/streams/cam2")[0] == 404
    assert service.call("GET", "/streams/cam1")[1]["id"] == "cam1"
    wait_for(lambda: set(client.hkeys(f"{PREFIX}fleet:cameras")) == {b"cam1", b"cam3"}, 10,
             "cam2 to leave the camera book")

    # cam2 stopped publishing (DELETE answered once its last entry was on Redis); the others go on.
    before = {name: len(frames_on_redis(client, name)) for name in CAMERAS}
    time.sleep(2.0)
    after = {name: len(frames_on_redis(client, name)) for name in CAMERAS}
    assert after["cam2"] == before["cam2"]
    assert after["cam1"] > before["cam1"] and after["cam3"] > before["cam3"]


def test_bad_requests_get_the_status_and_name_the_field(service):
    status, body, _ = service.call("POST", "/streams", {"id": "cam1", "url": service.camera_url("cam1")})
    assert status == 409 and "cam1" in body["error"]
    status, body, _ = service.call("POST", "/streams", {"id": "cam9"})
    assert status == 422 and body["field"] == "url"
    status, body, _ = service.call("POST", "/streams", {"id": "cam9", "url": "rtsp://x/y", "colour": "red"})
    assert status == 422 and body["field"] == "colour"
    status, body, _ = service.call("POST", "/streams", {"id": "no spaces/allowed", "url": "rtsp://x/y"})
    assert status == 422 and body["field"] == "id"
    # A missing file and one outside the media root read the same: the API cannot map the disk.
    for path in ("/no/such/clip.mp4", str(service.folder / "service.yaml"),
                 str(service.folder.parent / "serve-media" / "gone.mp4")):
        status, body, _ = service.call("POST", "/streams", {"id": "gone", "url": path})
        assert status == 400 and body["field"] == "url", body
        assert body["error"] == "url: no readable video file at that path under the media root", body
    status, body, _ = service.call("POST", "/streams", raw=b"{not json")
    assert status == 400 and "JSON" in body["error"]
    assert service.call("GET", "/streams/nope")[0] == 404
    assert service.call("DELETE", "/streams/nope")[0] == 404
    # a camera nobody answers for is accepted and shown while it is retried
    dark = f"rtsp://127.0.0.1:{free_port()}/dark"
    status, body, _ = service.call("POST", "/streams", {"id": "dark", "url": dark})
    assert status == 201 and body["state"] in ("connecting", "reconnecting"), body
    time.sleep(2.5)
    assert service.streams()["dark"]["state"] in ("connecting", "reconnecting")
    assert service.call("DELETE", "/streams/dark")[0] == 200
    assert set(service.streams()) == {"cam1", "cam3"}


def test_metrics_agree_with_what_is_on_redis(service):
    client = service.redis.client()
    first = service.metrics()
    on_redis = {name: len(frames_on_redis(client, name)) for name in ("cam1", "cam3")}
    second = service.metrics()

    def published(families: dict, stream: str) -> float:
        return next(s.value for s in families["segstream_frames_published"].samples
                    if s.name == "segstream_frames_published_total" and s.labels["stream"] == stream)

    for name, count in on_redis.items():
        # XADD happens before the counter moves: at most the frames in flight apart
        assert published(first, name) <= count <= published(second, name) + 2, (name, count)
    up = {s.labels["stream"]: s.value for s in second["segstream_stream_up"].samples}
    assert up == {"cam1": 1.0, "cam3": 1.0}
    histogram = {s.name: s.value for s in second["segstream_capture_to_publish_seconds"].samples
                 if s.labels["stream"] == "cam1" and s.labels.get("le") in (None, "+Inf")}
    assert histogram["segstream_capture_to_publish_seconds_count"] >= published(first, "cam1")
    assert histogram["segstream_capture_to_publish_seconds_sum"] > 0
    stages = {s.labels["stage"] for s in second["segstream_stage_busy_seconds"].samples}
    assert stages and all(s.value >= 0 for s in second["segstream_stage_busy_seconds"].samples)
    assert next(iter(second["segstream_redis_up"].samples)).value == 1.0
    assert next(iter(second["segstream_model_loads"].samples)).value == 1.0
    batches = next(iter(second["segstream_engine_batches"].samples)).value
    frames = next(iter(second["segstream_engine_batch_frames"].samples)).value
    assert batches > 0 and frames >= batches
    assert "segstream_queue_depth" in second and "segstream_model_info" in second


def test_without_the_token_everything_but_the_probes_is_401(service):
    for path in ("/streams", "/streams/cam1", "/metrics", "/viewer/status", "/static/viewer.js"):
        assert service.call("GET", path, token=None)[0] == 401, path
        assert service.call("GET", path, token="wrong")[0] == 401, path
    assert service.call("POST", "/streams", {"id": "x", "url": "rtsp://x/y"}, token=None)[0] == 401
    assert service.call("DELETE", "/streams/cam1", token=None)[0] == 401
    assert service.call("GET", "/livez", token=None)[0] == 200
    assert service.call("GET", "/readyz", token=None)[0] == 200
    # the viewer page: a sign-in form that POSTs the token (never in an address), then the token
    # kept in a cookie (good for reading only)
    status, page, _ = service.call("GET", "/", token=None)
    assert status == 401 and "token" in page and 'method="post"' in page
    query = urllib.parse.urlencode({"token": TOKEN})
    assert service.call("GET", f"/?{query}", token=None)[0] == 401  # a token in the address logs nobody in
    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as redirect:
        opener.open(urllib.request.Request(f"{service.base}/login", data=query.encode(), method="POST",
                                           headers={"Content-Type": "application/x-www-form-urlencoded"}))
    assert redirect.value.code == 303
    cookie = redirect.value.headers["set-cookie"].split(";")[0]
    assert "HttpOnly" in redirect.value.headers["set-cookie"]
    assert service.call("GET", "/streams", token=None, headers={"Cookie": cookie})[0] == 200
    assert service.call("DELETE", "/streams/cam1", token=None, headers={"Cookie": cookie})[0] == 401
    assert "cam1" in service.streams()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.fixture(scope="module")
def shapes_clip(tmp_path_factory) -> Path:
    from segstream.shapes.clip import render_clip

    folder = media_folder(tmp_path_factory)  # posted over the API: under the service's media root
    video = folder / "shapes.mp4"
    # Long enough (3+ s even with OpenVINO) for the page, which polls /streams every second, to
    # open the clip's MJPEG stream while it still runs.
    render_clip(video, folder / "shapes.gt.json", seed=11, frames=60, fps=10)
    return video


def decoded_frame(video: Path, index: int) -> np.ndarray:
    import av

    with av.open(str(video)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == index:
                return frame.to_ndarray(format="rgb24")
    raise AssertionError(f"{video} has no frame {index}")


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--force-device-scale-factor=1", "--window-size=1400,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=DriverService(executable_path="/usr/bin/chromedriver"))


def sign_in(browser, base: str) -> None:
    """Type the token into the viewer's sign-in form and submit it, as a person would."""
    from selenium.webdriver.common.by import By

    browser.get(f"{base}/")
    field = browser.find_element(By.NAME, "token")
    field.send_keys(TOKEN)
    field.submit()
    wait_for(lambda: browser.get_cookie("segstream_token") is not None, 10, "the sign-in cookie")


def test_viewer_in_headless_chromium_shows_masks_where_the_objects_are(service, shapes_clip, tmp_path):
    from segstream.pipeline.drawing import MASK_ALPHA, class_colour
    from segstream.pipeline.wire.entries import decode_mask

    status, before, _ = service.call("GET", "/viewer/status")
    assert before["rendered"] == 0 and before["watchers"] == {}  # nobody watched: nothing was drawn
    browser = chromium()
    try:
        sign_in(browser, service.base)  # once; then the cookie
        browser.get(f"{service.base}/#clip")
        wait_for(lambda: "cam1" in browser.page_source, 20, "the stream list in the page")
        # the clip starts only now, so the page is already waiting for it
        status, body, _ = service.call("POST", "/streams", {"id": "clip", "url": str(shapes_clip), "kind": "file"})
        assert status == 201, body
        client = service.redis.client()
        eos = lambda: [e for e in (json.loads(f[b"data"]) for _, f in client.xrange(f"{PREFIX}clip")) if e.get("eos")]
        wait_for(eos, 90, "the clip's end-of-stream entry")
        last = frames_on_redis(client, "clip")[-1]
        drawn = lambda: service.call("GET", "/viewer/status")[1]
        wait_for(lambda: drawn()["last_rendered"].get("clip") == last["frame"], 15,
                 lambda: f"the viewer to draw the clip's last frame {last['frame']}: {drawn()}")
        shown = ("const i = document.getElementById('live');"
                 "return i.naturalWidth > 0 && i.getBoundingClientRect().width > 0;")
        wait_for(lambda: browser.execute_script(shown), 15, "the browser to show the MJPEG part")
        time.sleep(1.0)  # and the last part, drawn above, to replace the one it shows first
        shot = tmp_path / "viewer.png"
        browser.save_screenshot(str(shot))
        if os.environ.get("SEGSTREAM_VIEWER_SCREENSHOT"):  # docs/service.md's picture comes from here
            browser.save_screenshot(os.environ["SEGSTREAM_VIEWER_SCREENSHOT"])
        box = browser.execute_script("const r = document.getElementById('live').getBoundingClientRect();"
                                     "return [r.left, r.top, r.width, r.height];")
        status, watching, _ = service.call("GET", "/viewer/status")
        assert watching["watchers"] == {"clip": 1}
    finally:
        browser.quit()

    from PIL import Image

    left, top, width, height = (round(v) for v in box)
    assert (width, height) == (last["width"], last["height"])  # 640x360: drawn at its size, ≤ 640 wide
    screen = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)[top:top + height, left:left + width]
    original = decoded_frame(shapes_clip, last["frame"]).astype(np.float32)
    instances = [i for i in last["instances"] if i["score"] >= 0.5]
    assert instances, f"the model found nothing in frame {last['frame']} of the clip"
    covered, checked = np.zeros((height, width), bool), 0
    from scipy import ndimage

    for inst in instances:
        mask = decode_mask(inst["mask"]).astype(bool)
        covered |= mask
        inner = ndimage.binary_erosion(mask, iterations=3)  # away from the edges, the box and the label
        x1, y1, _, _ = (int(v) for v in inst["box"])
        inner[:max(0, y1 + 14)] = False  # the label sits on the box's top edge
        if inner.sum() < 50:
            continue
        expected = (1 - MASK_ALPHA) * original[inner].mean(0) + MASK_ALPHA * np.array(class_colour(inst["class_id"], inst.get("track_id")))
        seen = screen[inner].mean(0)
        assert np.abs(seen - expected).max() < 30, (inst["label"], seen, expected)
        checked += 1
    assert checked, "no object large enough to check its mask colour"
    outside = ~ndimage.binary_dilation(covered, iterations=8)
    for inst in last["instances"]:  # boxes and labels of any score are drawn: not "outside"
        x1, y1, x2, y2 = (int(v) for v in inst["box"])
        outside[max(0, y1 - 20):y2 + 4, max(0, x1 - 4):x2 + 4] = False
    assert np.abs(screen[outside].mean(0) - original[outside].mean(0)).max() < 15  # elsewhere: the frame itself

    # the browser left: nothing is drawn any more
    wait_for(lambda: service.call("GET", "/viewer/status")[1]["watchers"] == {}, 10, "the watcher to leave")
    drawn = service.call("GET", "/viewer/status")[1]["rendered"]
    time.sleep(1.0)
    assert service.call("GET", "/viewer/status")[1]["rendered"] == drawn
    assert service.call("DELETE", "/streams/clip")[0] == 200


def test_readyz_is_503_while_redis_is_down_and_200_after(service):
    client = service.redis.client()
    service.redis.kill()
    wait_for(lambda: service.call("GET", "/readyz", token=None)[0] == 503, 20, "/readyz to say 503")
    status, body, _ = service.call("GET", "/readyz", token=None)
    assert body["redis"] is False
    assert service.call("GET", "/livez", token=None)[0] == 200  # alive, just not ready
    redis_up = service.metrics()["segstream_redis_up"]
    assert next(iter(redis_up.samples)).value == 0.0
    service.redis.restart()
    wait_for(lambda: service.call("GET", "/readyz", token=None)[0] == 200, 30, "/readyz to say 200 again")
    client = service.redis.client()
    count = len(frames_on_redis(client, "cam1"))
    wait_for(lambda: len(frames_on_redis(client, "cam1")) > count, 20, "cam1 to publish again")


def test_sigterm_drains_exits_zero_and_a_restart_runs_the_cameras_of_the_book(service):
    assert next(iter(service.metrics()["segstream_model_loads"].samples)).value == 1.0  # one load for everything
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(timeout=40) == 0, service.stderr()
    client = service.redis.client()
    assert set(client.hkeys(f"{PREFIX}fleet:cameras")) == {b"cam1", b"cam3"}  # files over the API are not kept

    service.process = start_service(service.folder, service.redis, service.port, "serve-again")
    service.log = service.folder / "serve-again.log"
    wait_alive(service)
    wait_for(lambda: set(service.streams()) == {"cam1", "cam3"}, 20, "the remembered cameras to come back")
    count = len(frames_on_redis(client, "cam3"))
    wait_for(lambda: len(frames_on_redis(client, "cam3")) > count, 30, "cam3 to publish after the restart")
    service.process.kill()  # its SIGTERM was checked above
