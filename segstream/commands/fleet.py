"""`segstream submit | worker | status | cameras` (registered in commands/delegated.py DELEGATED).

submit, status and cameras only talk to Redis (no torch import: they start in well under a
second); worker loads the engine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from segstream.commands.model_flags import add_model_flags, apply_model_flags
from segstream.pipeline.config import ConfigError, load_config, override
from segstream.pipeline.sources.locations import redact

DEFAULT_REDIS = "redis://localhost:6379/0"


def _client(url: str):
    from segstream.pipeline.wire.redis_link import connect

    return connect(url)


def _keys(prefix: str):
    from segstream.fleet.keys import FleetKeys

    return FleetKeys(prefix)


def submit_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="segstream submit", description=(
        "Enqueue one file job per source for the workers (`segstream worker`); prints one job id per line. "
        "Each job publishes to <prefix><stream-id> exactly as `segstream run` would. Paths are made absolute: "
        "workers on other machines need the same path (a shared volume) or an http(s):// URL."))
    p.add_argument("sources", nargs="+", metavar="SOURCE")
    p.add_argument("--redis", default=os.environ.get("SEGSTREAM_REDIS", DEFAULT_REDIS))
    p.add_argument("--prefix", default="segstream:")
    p.add_argument("--stream-id", action="append", help="stream id per source, in order (default: file stem)")
    p.add_argument("--config", help="YAML config whose `sources:` section judges the sources (workers judge again)")
    args = p.parse_args(list(argv))
    from segstream.fleet.jobs import JobQueue
    from segstream.pipeline.sources.locations import default_stream_id, source_kind
    from segstream.pipeline.sources.policy import check_source
    from segstream.pipeline.wire.stream_id import stream_id_problem

    policy = load_config(args.config).sources

    ids = args.stream_id or [default_stream_id(s) for s in args.sources]
    for stream_id in ids:  # the one rule (pipeline/wire/stream_id.py), before anything is judged or queued
        if problem := stream_id_problem(stream_id):
            raise ConfigError(f"--stream-id: {problem}")
    if len(ids) != len(args.sources):
        raise ConfigError(f"--stream-id: got {len(ids)} ids for {len(args.sources)} sources")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"stream ids must be unique, got {ids} (use --stream-id)")
    locations = []
    for source in args.sources:
        admitted = check_source(source, policy, "trusted")  # SourceRefused: one line, exit 2, nothing queued
        if source_kind(admitted.location) == "live":
            raise ConfigError(f"{redact(source)} is a live feed: add cameras with `segstream cameras add ID URL`")
        # Local paths absolute and resolved: workers on other machines need the same path (a shared volume).
        locations.append(admitted.location)
    queue = JobQueue(_client(args.redis), _keys(args.prefix))
    for location, stream_id in zip(locations, ids):
        print(queue.submit(location, stream_id), flush=True)
    return 0


def worker_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="segstream worker", description=(
        "Run file jobs and cameras of the fleet on this machine's engine until SIGTERM/SIGINT "
        "(then running jobs are handed back and camera leases released; exit 0)."))
    p.add_argument("--redis", default=os.environ.get("SEGSTREAM_REDIS"), help=f"default: the config's redis.url ({DEFAULT_REDIS})")
    p.add_argument("--config", help="YAML config (the `fleet:` section: lease, heartbeat, max_attempts, capacity)")
    p.add_argument("--name", help="worker name (default: host-pid)")
    p.add_argument("--capacity", type=int, help="streams (jobs + cameras) run at once; cameras are balanced by it")
    p.add_argument("--http", metavar="HOST:PORT", help="serve /livez, /readyz and /status (':PORT': loopback; "
                   "another address needs a token or --insecure-no-auth; /status needs the token when set)")
    from segstream.service.exposure import add_access_flags

    add_access_flags(p)
    add_model_flags(p)  # the same model/engine flags as `segstream run` and `segstream serve`
    args = p.parse_args(list(argv))
    token = None
    if args.http:  # refused before anything loads: one error line
        from segstream.fleet.probes import parse_address
        from segstream.service.exposure import check_bind, resolve_token

        token = resolve_token(args)
        check_bind(parse_address(args.http)[0], token, args.insecure_no_auth)
    config = apply_model_flags(load_config(args.config), args)
    for key, value in {"redis.url": args.redis, "fleet.capacity": args.capacity}.items():
        if value is not None:
            override(config, key, value)
    override(config, "output.progress", False)  # one line per event, not a progress bar
    import logging

    events = logging.StreamHandler()
    events.setFormatter(logging.Formatter("segstream worker: %(message)s"))
    fleet_log = logging.getLogger("segstream.fleet")
    fleet_log.setLevel(logging.INFO)
    fleet_log.addHandler(events)
    fleet_log.propagate = False
    import signal

    def stopped_early(signum, frame):  # before the engine is even imported: nothing to hand back
        raise SystemExit(0)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stopped_early)
    holder: list = []
    if args.http:  # up before torch is imported: /livez answers while the engine loads
        from segstream.fleet.probes import serve_probes

        def ready() -> bool:
            worker = holder[0] if holder else None
            return bool(worker and worker.pipeline is not None and worker.pipeline.ready() and not worker.stopping.is_set())

        serve_probes(args.http, live=lambda: True, ready=ready, token=token,
                     status=lambda: holder[0].snapshot() if holder and holder[0].pipeline else {"loading": True})
    from segstream.fleet.worker import Worker

    worker = Worker(config, name=args.name)
    holder.append(worker)
    worker.install_signals()
    return worker.run()


def status_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="segstream status", description="The fleet at a glance: workers, jobs, cameras.")
    p.add_argument("--redis", default=os.environ.get("SEGSTREAM_REDIS", DEFAULT_REDIS))
    p.add_argument("--prefix", default="segstream:")
    p.add_argument("--lease", type=float, default=10.0, help="a worker silent this long counts as gone (fleet.lease)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(list(argv))
    from segstream.fleet.status import gather, render

    status = gather(_client(args.redis), _keys(args.prefix), args.lease)
    print(json.dumps(status, indent=1) if args.json else render(status))
    return 0


def cameras_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="segstream cameras", description=(
        "The cameras the fleet keeps running: each is owned by one worker at a time and moves when that worker goes."))
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis", default=os.environ.get("SEGSTREAM_REDIS", DEFAULT_REDIS))
    common.add_argument("--prefix", default="segstream:")
    sub = p.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", parents=[common], help="want a camera (its id is its stream id)")
    add.add_argument("camera_id", metavar="ID")
    add.add_argument("url", metavar="URL")
    remove = sub.add_parser("remove", parents=[common], help="stop a camera")
    remove.add_argument("camera_id", metavar="ID")
    add.add_argument("--config", help="YAML config whose `sources:` section judges the URL (workers judge again)")
    sub.add_parser("list", parents=[common], help="the wanted cameras and their owners")
    args = p.parse_args(list(argv))
    from segstream.fleet.cameras import CameraBook
    from segstream.pipeline.sources.policy import check_source

    if args.action == "add":  # judged before Redis is even reached: a refused URL is never stored
        check_source(args.url, load_config(args.config).sources, "trusted")
    book = CameraBook(_client(args.redis), _keys(args.prefix))
    if args.action == "add":
        try:
            new = book.add(args.camera_id, args.url)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        print(f"{'added' if new else 'updated'} camera {args.camera_id}: {redact(args.url)}")
    elif args.action == "remove":
        if not book.remove(args.camera_id):
            print(f"segstream: error: no camera {args.camera_id}", file=sys.stderr)
            return 2
        print(f"removed camera {args.camera_id}")
    else:
        wanted = book.wanted()
        owners = book.owners(sorted(wanted))
        for camera_id in sorted(wanted):
            print(f"{camera_id}\t{redact(wanted[camera_id])}\towner {owners[camera_id] or '-'}")
    return 0
