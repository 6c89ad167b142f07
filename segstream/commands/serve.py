"""`segstream serve`: a fleet worker with the HTTP write API turned on (`segstream worker` is the
same process without it; fleet/worker.py, fleet/control.py).

    segstream serve [--config FILE] [--http HOST:PORT] [--redis URL] [--name NAME] [--token-file FILE | --token TOKEN]
                    [--insecure-no-auth] [--tls-cert FILE --tls-key FILE] [--metrics-public]

The token comes from $SEGSTREAM_TOKEN, --token-file or --token (service/exposure.py); a
non-loopback --http needs one unless --insecure-no-auth.

Loads the model once, puts the config's cameras into the fleet's camera book (`<prefix>fleet:cameras`)
and runs its local files, and serves the HTTP API, /metrics, the probes and the live viewer until
SIGTERM or SIGINT (commands/lifecycle.py): then stops taking requests, drains every stream (files
get their EOS entry), releases its cameras to the rest of the fleet and exits 0. A second signal
aborts at once. Two serves on one Redis are a fleet of two; one serve is a fleet of one.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from pydantic import ValidationError

from segstream.commands.model_flags import add_model_flags, apply_model_flags
from segstream.pipeline.config import ConfigError, RunConfig, load_config, override
from segstream.service.exposure import add_access_flags, resolve_token
from segstream.service.http import HttpServer, parse_http

log = logging.getLogger("segstream.service")
DEFAULT_HTTP = "127.0.0.1:8080"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segstream serve", description="Run the camera service: HTTP control API, "
                                "Prometheus /metrics, /livez and /readyz probes, and the live viewer at /. A serve is a "
                                "fleet worker with the write API: serves (and `segstream worker`s) on one Redis share "
                                "its camera book (<prefix>fleet:cameras), each camera run by exactly one of them.")
    p.add_argument("--config", help="YAML config (see configs/service.yaml): model, engine, redis, viewer, streams")
    p.add_argument("--http", default=DEFAULT_HTTP, metavar="HOST:PORT", help=f"where to listen (default {DEFAULT_HTTP})")
    p.add_argument("--redis", help="redis://[user:password@]host:port/db (overrides redis.url)")
    p.add_argument("--name", help="this process's name in the fleet (default: host-pid)")
    # The token is required as Authorization: Bearer TOKEN on every endpoint but /livez and /readyz.
    add_access_flags(p)
    p.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM), with --tls-key")
    p.add_argument("--tls-key", help="private key (PEM) of --tls-cert")
    add_model_flags(p)  # the same model/engine flags as `segstream run` and `segstream worker`
    p.add_argument("--metrics-public", action="store_true", help="leave /metrics open when a token is set")
    return p


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


def _tls(args: argparse.Namespace) -> tuple[str | None, str | None]:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path and not Path(path).is_file():
            raise ConfigError(f"{flag}: file not found: {path}")
    return args.tls_cert, args.tls_key


def _setup_logging() -> None:
    """One line per event on stderr, from the service and from the fleet process it is."""
    if log.handlers:  # main() called again in one process
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("segstream: %(message)s"))
    for logger in (log, logging.getLogger("segstream.fleet")):
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


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
    http = HttpServer(args.http, token, tls, args.metrics_public, insecure_no_auth=args.insecure_no_auth,
                      serve=config.serve)
    http.serve_starting()  # /livez answers (and /readyz 503) while Redis is awaited and the model loads
    try:
        return run_fleet_process(config, http, write_api=True, name=args.name, streams=specs,
                                 capacity=serve_capacity(config))
    finally:
        http.close()


def serve_capacity(config: RunConfig) -> int:
    """The streams a serve runs at once: fleet.capacity when the config says, else serve.max_streams
    (a single serve runs every camera it accepts, as before it was a fleet of one)."""
    return config.fleet.capacity if "capacity" in config.fleet.model_fields_set else config.serve.max_streams


class FleetProcess:
    """A fleet Worker with its HTTP side: the Application the lifecycle runs for `serve` and `worker`."""

    def __init__(self, worker: Any, http: HttpServer | None, write_api: bool) -> None:
        from segstream.fleet.control import FleetControl

        self.worker = worker
        self.http = http
        self.write_api = write_api
        self.control = FleetControl(worker, worker.config.serve.max_streams)
        self._http_failed = False

    def start(self) -> None:
        self.worker.start()
        if self.http is None or self.worker.pipeline is None:  # (None: stopped while waiting for Redis)
            return
        self.http.attach(self.control, write_api=self.write_api, worker=self.worker.name,
                         why_read_only="this process is a `segstream worker` (no write API): add streams through "
                                       "a `segstream serve` or `segstream cameras add`")
        pipeline = self.worker.pipeline
        what = "API at /streams" if self.write_api else "read-only /streams"
        log.info("serving on %s (viewer at /, %s, metrics at /metrics%s); model %s on %s, loaded once; fleet name %s",
                 self.http.url, what, ", token required" if self.http.token else ", no token: only loopback Host names are served",
                 pipeline.model_source, pipeline.engine_name, self.worker.name)

    def ended(self) -> bool:
        if self.http is not None and self.http.thread is not None and not self.http.alive:
            self._http_failed = True
        return self._http_failed or self.worker.ended()

    def drain(self, timeout: float) -> bool:
        if self.http is not None:
            self.http.close()  # stop taking requests first
        return self.worker.drain(timeout)

    def stop(self) -> None:
        self.worker.stop()

    def abort(self) -> None:
        self.worker.abort()

    def failure(self) -> str | None:
        return self.worker.failure() or ("the HTTP server stopped" if self._http_failed else None)

    def summary(self) -> Any:
        return self.worker.summary()


def run_fleet_process(config: RunConfig, http: HttpServer | None, write_api: bool, name: str | None = None,
                      streams: list[Any] | None = None, capacity: int | None = None) -> int:
    """Run a fleet Worker (with `http` when given) through the one lifecycle; the exit code."""
    from segstream.commands.lifecycle import run_application
    from segstream.fleet.worker import Worker

    worker = Worker(config, name=name, capacity=capacity, streams=streams)
    return run_application(FleetProcess(worker, http, write_api), config.shutdown_timeout)


if __name__ == "__main__":
    sys.exit(main())
