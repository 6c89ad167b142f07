"""PrivateRedis: the package's throw-away Redis (segstream/commands/local_redis.py) with what the
tests need on top: credentials and extra options, an append-only log that survives `kill()` +
`restart()` on the same port (how the fault tests stop and bring back Redis), SIGSTOP/SIGCONT.
"""

from __future__ import annotations

import signal
import tempfile

import redis

from segstream.commands.local_redis import LocalRedis, free_port, redis_server_binary, stop_process

__all__ = ["PrivateRedis", "free_port", "redis_server_binary", "stop_process"]


class PrivateRedis(LocalRedis):
    """`with PrivateRedis() as url:` runs redis-server on 127.0.0.1:<free port>.

    extra_args: more redis-server options, e.g. ["--requirepass", "secret"].
    password / username: put into the URL handed out.
    appendonly: keep an append-only log in a private folder, so kill() + restart() keeps the data.
    """

    def __init__(self, extra_args: list[str] | None = None, password: str | None = None,
                 username: str | None = None, port: int | None = None, scheme: str = "redis",
                 appendonly: bool = False) -> None:
        super().__init__(port)
        self.extra_args = extra_args or []
        self.password = password
        self.username = username
        self.scheme = scheme
        self.appendonly = appendonly
        self._dir = tempfile.TemporaryDirectory(prefix="segstream-redis-")

    @property
    def url(self) -> str:
        auth = ""
        if self.password is not None:
            auth = f"{self.username or ''}:{self.password}@"
        return f"{self.scheme}://{auth}127.0.0.1:{self.port}/0"

    def server_args(self) -> list[str]:
        return ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if self.appendonly else "no", "--dir", self._dir.name, *self.extra_args]

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
