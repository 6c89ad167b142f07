"""`segstream serve`: the long-running camera service.

    segstream serve [--config FILE] [--http HOST:PORT] [--redis URL] [--token-file FILE | --token TOKEN]
                    [--insecure-no-auth] [--tls-cert FILE --tls-key FILE] [--metrics-public]

The token comes from $SEGSTREAM_TOKEN, --token-file or --token (service/exposure.py); a
non-loopback --http needs one unless --insecure-no-auth.

Loads the model once, starts the pipeline with the config's `streams:` and the streams remembered
from the API, and serves the HTTP API, /metrics, the probes and the live viewer until SIGTERM or
SIGINT; then stops taking requests, drains every stream (files get their EOS entry) and exits 0.
A second signal aborts at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from pydantic import ValidationError

from segstream.commands.model_flags import add_model_flags, apply_model_flags
from segstream.pipeline.config import ConfigError, RunConfig, load_config, override
from segstream.service.exposure import add_access_flags, check_bind, resolve_token

log = logging.getLogger("segstream.service")
DEFAULT_HTTP = "127.0.0.1:8080"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segstream serve", description="Run the camera service: HTTP control API, "
                                "Prometheus /metrics, /livez and /readyz probes, and the live viewer at /.")
    p.add_argument("--config", help="YAML config (see configs/service.yaml): model, engine, redis, viewer, streams")
    p.add_argument("--http", default=DEFAULT_HTTP, metavar="HOST:PORT", help=f"where to listen (default {DEFAULT_HTTP})")
    p.add_argument("--redis", help="redis://[user:password@]host:port/db (overrides redis.url)")
    # The token is required as Authorization: Bearer TOKEN on every endpoint but /livez and /readyz.
    add_access_flags(p)
    p.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM), with --tls-key")
    p.add_argument("--tls-key", help="private key (PEM) of --tls-cert")
    add_model_flags(p)  # the same model/engine flags as `segstream run` and `segstream worker`
    p.add_argument("--metrics-public", action="store_true", help="leave /metrics open when a token is set")
    return p


def parse_http(value: str) -> tuple[str, int]:
    """'HOST:PORT' (or '[v6]:PORT', ':PORT' for every interface) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--http: {value!r} is not HOST:PORT (e.g. 127.0.0.1:8080 or 0.0.0.0:8080)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def stream_specs(config: RunConfig) -> list[Any]:
    """The config's `streams:` entries as StreamSpecs; an error names streams.N.key. Each URL is
    judged by the source policy here, before the model loads (a config file is trusted: local files
    anywhere, or under sources.media_root when it is set)."""
    from segstream.pipeline.sources.policy import SourceRefused, check_source

    for i, raw in enumerate(config.streams):  # before StreamSpec (and torch) is imported: refusals are instant
        if isinstance(raw, dict) and isinstance(raw.get("url"), str):
            try:
                check_source(raw["url"], config.sources, "trusted")
            except SourceRefused as exc:
                raise ConfigError(_stream_refusal(i, exc)) from None
    from segstream.pipeline.stream_spec import StreamSpec

    specs, seen = [], set()
    for i, raw in enumerate(config.streams):
        try:
            spec = StreamSpec.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
            raise ConfigError(f"streams.{i}{'.' + key if key else ''}: {message}") from None
        if spec.id in seen:
            raise ConfigError(f"streams.{i}.id: {spec.id!r} is used twice")
        seen.add(spec.id)
        specs.append(spec)
    return specs


def _stream_refusal(index: int, exc: Exception) -> str:
    text = str(exc)
    return f"streams.{index}.{text}" if text.startswith("url:") else f"streams.{index}.url: {text}"


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


def _tls(args: argparse.Namespace) -> tuple[str | None, str | None]:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path and not Path(path).is_file():
            raise ConfigError(f"{flag}: file not found: {path}")
    return args.tls_cert, args.tls_key


def _setup_logging() -> None:
    if log.handlers:  # main() called again in one process
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("segstream: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging()
    config = load_config(args.config)
    if args.redis is not None:
        override(config, "redis.url", args.redis)
    apply_model_flags(config, args)
    if not config.redis.url:
        raise ConfigError("redis.url: the service publishes to Redis; give --redis URL")
    parse_http(args.http)
    tls = _tls(args)
    specs = stream_specs(config)
    if len(specs) > config.serve.max_streams:
        raise ConfigError(f"streams: {len(specs)} streams, more than serve.max_streams ({config.serve.max_streams})")
    token = resolve_token(args)
    endpoints = Endpoints(args.http, token, tls, args.metrics_public, insecure_no_auth=args.insecure_no_auth)
    try:
        return _serve(config, specs, endpoints)
    finally:
        endpoints.close()


class Endpoints:
    """The HTTP side on a thread of this process: uvicorn serving build_app() for one pipeline.

    The socket is bound at construction (before any model loads: a taken port is one error
    line); attach() starts serving once the pipeline exists; close() ends the viewer's endless
    responses and stops uvicorn.
    """

    def __init__(self, http: str, token: str | None = None, tls: tuple[str | None, str | None] = (None, None),
                 metrics_public: bool = False, read_only: bool = False, insecure_no_auth: bool = False) -> None:
        self.host, self.port = parse_http(http)
        check_bind(self.host, token, insecure_no_auth)  # before anything listens
        self.sock = listen(self.host, self.port)
        self.token, self.tls, self.metrics_public, self.read_only = token, tls, metrics_public, read_only
        self.viewer: Any = None
        self.server: Any = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{'https' if self.tls[0] else 'http'}://{host}:{port}"

    def attach(self, pipeline: Any, control: Any = None) -> None:
        import uvicorn

        from segstream.service.app import build_app
        from segstream.service.control import StreamControl
        from segstream.service.metrics import PipelineCollector, build_registry
        from segstream.service.viewer import Viewer

        config = pipeline.config
        v = config.viewer
        self.viewer = Viewer(pipeline.watch, v.fps, v.max_width, v.jpeg_quality)
        info = {"model": pipeline.model_source, "engine": pipeline.engine_name, "device": config.engine.device,
                "batch_size_max": config.engine.batch_size}
        if config.model.input_size:
            info["input_size"] = "x".join(str(n) for n in config.model.input_size)
        registry = build_registry(PipelineCollector(pipeline, self.viewer, info))
        app = build_app(control or StreamControl(pipeline), self.viewer, registry, token=self.token,
                        metrics_public=self.metrics_public, secure_cookie=self.tls[0] is not None,
                        read_only=self.read_only, serve=config.serve)
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning", access_log=False,
                                                    lifespan="off", ssl_certfile=self.tls[0], ssl_keyfile=self.tls[1],
                                                    timeout_graceful_shutdown=2))
        # Not on the main thread, so uvicorn installs no signal handlers: the command owns them.
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="service:http", daemon=True)
        self.thread.start()

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


def _serve(config: RunConfig, specs: list[Any], endpoints: Endpoints) -> int:
    from segstream.pipeline.streaming import StreamingPipeline
    from segstream.service.control import StreamControl
    from segstream.service.stream_book import StreamBook

    pipeline = StreamingPipeline(config)  # loads the model: the only time
    control = StreamControl(pipeline, StreamBook(config.redis.url, config.redis.prefix), specs,
                            max_streams=config.serve.max_streams)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():  # a second signal: abort at once
            print("segstream: aborted", file=sys.stderr, flush=True)
            os._exit(130)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        control.start()
        endpoints.attach(pipeline, control)
        log.info("serving on %s (viewer at /, API at /streams, metrics at /metrics%s); model %s on %s, loaded once",
                 endpoints.url, ", token required" if endpoints.token else ", no token: only loopback Host names are served",
                 pipeline.model_source, pipeline.engine_name)
        while not stop.wait(0.5):
            if not endpoints.alive:
                raise RuntimeError("the HTTP server stopped")
            if pipeline.wait(0):  # only a fatal stage error ends a keep-alive pipeline (raised here)
                raise RuntimeError("the pipeline ended")
        log.info("stopping: draining %d stream(s)", len(pipeline.registry.all()))
        started = time.monotonic()
        endpoints.close()
        drained = control.stop(config.shutdown_timeout)
        log.info("stopped in %.1f s%s", time.monotonic() - started, "" if drained else " (drain timed out)")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
