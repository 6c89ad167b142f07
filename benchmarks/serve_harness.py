"""What the `segstream serve` benchmarks share: a private Redis, an RTSP server with several
cameras, the real `segstream serve` command on a free port, and a small HTTP client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from redis_server import PrivateRedis, free_port, stop_process  # noqa: E402
from servers import RtspServer, json_request  # noqa: E402


def cameras(count: int, width: int, height: int, fps: int) -> RtspServer:
    """One RTSP server serving /cam1 .. /cam<count>."""
    server = RtspServer(width=width, height=height, fps=fps)
    server.args += ["--mounts", str(count)]
    return server.start()


class Serve:
    """`segstream serve` as a subprocess; `with Serve(config) as s:` ... (SIGTERM on exit if still up)."""

    def __init__(self, config: dict[str, Any], token: str | None = None) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="segstream-serve-bench-"))
        (self.folder / "service.yaml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.log = self.folder / "serve.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "Serve":
        exe = Path(sys.executable).with_name("segstream")
        command = [str(exe), "serve", "--config", str(self.folder / "service.yaml"), "--http", f"127.0.0.1:{self.port}"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self.log.open("w"), env=dict(os.environ))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"segstream serve exited: {self.log.read_text()[-2000:]}")
            try:
                if self.call("GET", "/readyz")[0] == 200:  # /livez answers from the start; ready is up
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError("segstream serve was not ready within 180 s")

    def call(self, method: str, path: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
        return json_request(self.base + path, method, body, self.token, timeout)

    def metrics(self) -> dict[str, dict[tuple, float]]:
        """{sample name: {labels as sorted tuple: value}}."""
        out: dict[str, dict[tuple, float]] = {}
        for family in text_string_to_metric_families(self.call("GET", "/metrics")[1]):
            for sample in family.samples:
                out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        return out

    def terminate(self, timeout: float = 60) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds to exit)."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        return code, time.monotonic() - started

    def __exit__(self, *exc: Any) -> None:
        stop_process(self.process, grace=30)


__all__ = ["PrivateRedis", "Serve", "cameras"]
