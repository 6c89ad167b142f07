"""The one place an HTTP server is started: uvicorn serving the app of service/app.py on a thread of
this process (`serve`, `worker --http`, `run --http`).

    http = HttpServer("127.0.0.1:8080", token)   # bound now, before any model loads: a taken
                                                  # port or a refused public bind is one error line
    http.serve_starting()                         # optional: /livez while the model loads
    http.attach(control, worker="host-1")         # the full app once the pipeline exists
    http.close()

uvicorn runs on a thread that is not the main one, so it installs no signal handlers: the command's
lifecycle (commands/lifecycle.py) owns them. One uvicorn server serves the process's whole life;
attach() swaps the app it serves (the loading app, then the full one).
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Callable

from segstream.pipeline.config import ConfigError, ServeSection
from segstream.service.exposure import check_bind


def parse_http(value: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """'HOST:PORT' (or '[v6]:PORT'; ':PORT' listens on `default_host`) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--http: {value!r} is not HOST:PORT (e.g. 127.0.0.1:8080 or 0.0.0.0:8080)")
    return host.strip("[]") or default_host, int(port)


def listen(host: str, port: int) -> socket.socket:
    """Bind here, before the model loads, so a taken port is one clear error line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--http: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class HttpServer:
    """`http`: HOST:PORT (':PORT': `default_host`). Refuses a public address without a token
    (service/exposure.py) before anything listens."""

    def __init__(self, http: str, token: str | None = None, tls: tuple[str | None, str | None] = (None, None),
                 metrics_public: bool = False, insecure_no_auth: bool = False, default_host: str = "0.0.0.0",
                 serve: ServeSection | None = None) -> None:
        self.host, self.port = parse_http(http, default_host)
        check_bind(self.host, token, insecure_no_auth)
        self.sock = listen(self.host, self.port)
        self.token, self.tls, self.metrics_public = token, tls, metrics_public
        self.serve = serve
        self.viewer: Any = None
        self.server: Any = None
        self.thread: threading.Thread | None = None
        self._app: Callable[..., Any] | None = None

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{'https' if self.tls[0] else 'http'}://{host}:{port}"

    async def _asgi(self, scope: Any, receive: Any, send: Any) -> None:
        await self._app(scope, receive, send)  # the app of the moment (attach() swaps it)

    def _run(self) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(self._asgi, interface="asgi3", log_config=None, log_level="warning", access_log=False,
                                                    lifespan="off", ssl_certfile=self.tls[0], ssl_keyfile=self.tls[1],
                                                    timeout_graceful_shutdown=2))
        # Not on the main thread, so uvicorn installs no signal handlers: the command owns them.
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="service:http", daemon=True)
        self.thread.start()

    def serve_starting(self) -> None:
        """Answer /livez (and 503 elsewhere) while the model loads."""
        from segstream.service.app import starting_app

        self._app = starting_app(self.token, self.metrics_public, self.serve, secure_cookie=self.tls[0] is not None)
        self._run()

    def attach(self, control: Any, write_api: bool = False, worker: str | None = None,
               why_read_only: str = "this process has no write API") -> None:
        """Serve the full app over `control` (service/control.py StreamsControl) and its pipeline.
        worker: the process's fleet name (a `worker` label on the per-stream metrics)."""
        from segstream.service.app import build_app
        from segstream.service.metrics import PipelineCollector, build_registry
        from segstream.service.viewer import Viewer

        pipeline = control.pipeline
        config = pipeline.config
        v = config.viewer
        self.viewer = Viewer(pipeline.watch, v.fps, v.max_width, v.jpeg_quality)
        info = {"model": pipeline.model_source, "engine": pipeline.engine_name, "device": config.engine.device,
                "batch_size_max": config.engine.batch_size}
        if config.model.input_size:
            info["input_size"] = "x".join(str(n) for n in config.model.input_size)
        registry = build_registry(PipelineCollector(pipeline, self.viewer, info, worker=worker, redis=control.redis))
        self._app = build_app(control, self.viewer, registry, token=self.token, metrics_public=self.metrics_public,
                              secure_cookie=self.tls[0] is not None, read_only=not write_api,
                              serve=self.serve or config.serve, why_read_only=why_read_only)
        if self.thread is None:
            self._run()

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def close(self) -> None:
        if self.viewer is not None:
            self.viewer.close()  # ends the endless MJPEG responses, so uvicorn can close its connections
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(5)
        self.sock.close()
