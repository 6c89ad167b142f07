"""`segstream` command line: run, subscribe, export, train, eval, demo.

Bad input never shows a traceback: known errors print one line `segstream: error: ...` and exit 2;
anything unexpected prints one line too and exits 1 (SEGSTREAM_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1
EXIT_ABORTED = 130


def _user_errors() -> tuple[type[BaseException], ...]:
    from segstream.engines.checkpoint import CheckpointError
    from segstream.engines.factory import EngineError
    from segstream.engines.model_config import ModelConfigError
    from segstream.engines.models import ModelError
    from segstream.kernels.host_build import KernelLibraryError
    from segstream.pipeline.config import ConfigError
    from segstream.pipeline.stages.faults import StageFailed
    from segstream.pipeline.sinks import SinkError
    from segstream.pipeline.streams import SourceError
    from segstream.pipeline.wire.redis_link import RedisLinkError

    return (ConfigError, SourceError, SinkError, RedisLinkError, ModelError, EngineError, CheckpointError,
            ModelConfigError, StageFailed, KernelLibraryError)


def _is_user_error(exc: BaseException) -> bool:
    from segstream.pipeline.config import ConfigError
    from segstream.pipeline.streams import SourceError

    # The common ones first: _user_errors() imports the engines (torch, seconds) for the others.
    return isinstance(exc, (ConfigError, SourceError)) or isinstance(exc, _user_errors())


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    from segstream.commands.model_flags import add_model_flags

    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="video files, http(s):// file URLs, or live feeds (rtsp://, rtmp://, udp://, srt://, /dev/video*)")
    p.add_argument("--config", help="YAML config (see configs/)")
    add_model_flags(p)  # --model --weights --input-size --engine --onnx --device --precision --batch-size --gating
    p.add_argument("--redis", help="redis://[user:password@]host:port/db, rediss://..., or 'none'")
    p.add_argument("--stream-id", action="append", help="stream id per source, in order (default: file stem)")
    p.add_argument("--output-video", help="write an annotated mp4 here")
    p.add_argument("--max-frames", type=int, help="stop each source after N frames")
    p.add_argument("--pubsub", action="store_true", help="also PUBLISH each message")
    p.add_argument("--console", action="store_true", help="print one line per frame")
    p.add_argument("--no-progress", action="store_true", help="no progress bar / status lines")
    p.add_argument("--http", metavar="HOST:PORT", help="while running, serve GET /streams, /metrics, /livez, /readyz "
                   "and the live viewer here (read-only; the token, when set, is required)")
    from segstream.service.exposure import add_access_flags  # light: argparse and the config only

    add_access_flags(p)  # --token-file, --token, --insecure-no-auth (for --http)
    p.add_argument("--keep-trying", action="store_true",
                   help="a single camera unreachable at start is retried instead of failing the run")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--live", dest="kind", action="store_const", const="live",
                      help="treat every source as a live feed (re-joined when it drops, frames dropped when late)")
    kind.add_argument("--file", dest="kind", action="store_const", const="file",
                      help="treat every source as a finite file (every frame, then end of stream)")


def config_from_args(args: argparse.Namespace):
    from segstream.commands.model_flags import apply_model_flags
    from segstream.pipeline.config import load_config, override

    config = apply_model_flags(load_config(args.config), args)
    flags = {"output.video": args.output_video, "source.max_frames": args.max_frames}
    for key, value in flags.items():
        if value is not None:
            override(config, key, value)
    if args.redis is not None:
        override(config, "redis.url", None if args.redis.lower() == "none" else args.redis)
    if args.pubsub:
        override(config, "redis.pubsub", True)
    if args.console:
        override(config, "output.console", True)
    if args.no_progress:
        override(config, "output.progress", False)
    return config


def cmd_run(args: argparse.Namespace) -> int:
    from segstream.pipeline.sources.policy import check_source

    config = config_from_args(args)
    for source in args.sources:  # refused before anything heavy is even imported, let alone opened
        check_source(source, config.sources, "trusted")
    from segstream.commands.lifecycle import run_application
    from segstream.pipeline.run import PipelineRun

    endpoints = None
    if args.http:  # the read-only endpoints of `segstream serve` (GET /streams, /metrics, probes, viewer)
        from segstream.service.control import StreamControl
        from segstream.service.exposure import resolve_token
        from segstream.service.http import HttpServer

        endpoints = HttpServer(args.http, resolve_token(args), insecure_no_auth=args.insecure_no_auth)
    try:
        app = PipelineRun(args.sources, config, stream_ids=args.stream_id, keep_trying=args.keep_trying,
                          kind=args.kind or "auto", on_pipeline=(lambda p: endpoints.attach(
                              StreamControl(p), why_read_only="a CLI run's streams come from its command line"))
                          if endpoints else None)
        return run_application(app, config.shutdown_timeout)
    finally:
        if endpoints is not None:
            endpoints.close()


def cmd_subscribe(args: argparse.Namespace) -> int:
    """Prints one line per entry (`<stream> frame N ...`, status lines, end of stream), waiting through
    quiet periods and Redis outages (one warning line when Redis goes away, one when it is back)."""
    from segstream.pipeline.wire.consumer import Subscriber
    from segstream.pipeline.sinks import SinkError
    from segstream.pipeline.wire.entries import describe, entry_kind

    if args.consumer and not args.group:
        raise SinkError("--consumer needs --group")
    subscriber = Subscriber(args.redis, args.stream_id, prefix=args.prefix, from_start=args.from_start,
                            block_ms=int(args.idle * 1000) if args.idle else 0, after=args.after,
                            group=args.group, consumer=args.consumer, wait=args.wait)
    try:
        for message in subscriber:
            print(describe(message) if not args.json else subscriber.last_raw, flush=True)
            if entry_kind(message) == "eos" and not args.follow:
                subscriber.ack()  # handled: a group member restarted later does not get it again
                break
    finally:
        if not args.group and subscriber.last_id not in ("$", "0-0"):
            print(f"segstream: last entry {subscriber.last_id} (resume with --after {subscriber.last_id})",
                  file=sys.stderr)
        subscriber.close()
    return 0


def build_parser(extra: Sequence[Callable[[argparse._SubParsersAction], None]] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segstream", description="Streaming video instance segmentation to Redis.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="segment video files / RTSP cameras and publish to Redis")
    add_run_arguments(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("subscribe", help="print one line per published frame of a stream",
                       description="Print one line per entry of a stream (frame N, status changes, end of stream). "
                                   "Waits through quiet periods, for a stream that does not exist yet, and through "
                                   "Redis restarts, continuing after the last entry seen.")
    p.add_argument("stream_id", metavar="STREAM-ID")
    p.add_argument("--redis", default="redis://localhost:6379/0")
    p.add_argument("--prefix", default="segstream:")
    p.add_argument("--from-start", action="store_true", help="read the stream from its first kept entry")
    p.add_argument("--after", metavar="ID", help="resume right after this entry id (printed at exit)")
    p.add_argument("--group", metavar="NAME", help="read as a member of this consumer group: each entry is handled "
                                                    "once across restarts (at least once if killed mid-entry)")
    p.add_argument("--consumer", metavar="NAME", help="member name within --group (default: segstream); "
                                                       "keep it across restarts to get your pending entries back")
    p.add_argument("--follow", action="store_true", help="keep reading after an end-of-stream entry")
    p.add_argument("--idle", type=float, default=0, help="give up after this many seconds without a message (0: wait forever)")
    p.add_argument("--wait", action="store_true", help="wait for Redis if it is unreachable at start (default: error)")
    p.add_argument("--json", action="store_true", help="print the raw JSON instead of a summary line")
    p.set_defaults(func=cmd_subscribe)

    from segstream.commands import delegated as commands

    for register in (*commands.REGISTRARS, *extra):
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="segstream: warning: %(message)s")
    logging.getLogger("libav").setLevel(logging.CRITICAL)
    args = build_parser().parse_args(argv)
    debug = os.environ.get("SEGSTREAM_DEBUG") == "1"
    try:
        code = int(args.func(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C before a command's lifecycle took the signals over
        print("segstream: interrupted", file=sys.stderr)
        code = EXIT_ABORTED
    except Exception as exc:  # one line for the user, never a traceback
        if debug:
            raise
        from segstream.pipeline.extras import missing_extra, missing_extra_message

        if extra := missing_extra(exc):  # a base install running what an extra brings (checked first:
            # the error classes below live in modules that may import it themselves)
            print(f"segstream: error: {missing_extra_message(args.command, exc, extra)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if _is_user_error(exc):
            print(f"segstream: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"segstream: error: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return EXIT_INTERNAL
    if code == EXIT_ABORTED and args.command in ("run", "serve", "worker"):
        # An abort leaves worker threads inside native code (decoders, torch, a model still
        # loading); interpreter teardown under them can end in a C++ `terminate`. The sinks are
        # closed by now: leave at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_ABORTED)
    return code


if __name__ == "__main__":
    sys.exit(main())
