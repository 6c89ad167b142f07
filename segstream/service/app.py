"""The one HTTP app of every long-running process (`serve`, `worker --http`, `run --http`): the
streams API, metrics, probes and the live viewer, as one ASGI app (served by service/http.py).

Starlette on uvicorn: a small, well-kept ASGI toolkit with exactly the parts needed (routing,
JSON and streaming responses, static files, a thread pool for blocking calls) and nothing else;
the request bodies are validated by the pipeline's own pydantic model (StreamSpec), so FastAPI's
extra layer would add little. uvicorn serves it on a thread of the service process, next to the
pipeline's threads.

    GET    /                      the live viewer (static page + MJPEG of the chosen stream)
    GET    /streams               every stream: id, url (password redacted), kind, state, fps, counters, latency
    POST   /streams               {"id", "url", "kind"?, "max_frames"?} -> 201 | 400 | 409 | 422 (405: no write API here)
    GET    /streams/{id}          one stream -> 200 | 404
    DELETE /streams/{id}          stop it, drained (a file gets its EOS entry) -> 200 + its final counters | 404 | 405
    GET    /status                what this process does (a fleet process: its heartbeat record) as JSON
    GET    /metrics               Prometheus text format
    GET    /livez                 200 while the process answers
    GET    /readyz                200 when the model is loaded and Redis answers, else 503 (no paths shown)
    GET    /openapi.json          the OpenAPI document of the above (service/openapi.py)
    POST   /login                 the viewer's sign-in form (service/auth.py)
    GET    /viewer/streams/{id}.mjpg  the viewer's frames (multipart/x-mixed-replace JPEGs)
    GET    /viewer/status         the viewer's own counters (watchers, frames drawn, seconds spent)

Every request first passes the edge rules of service/guards.py (Host, Content-Type, body size,
security headers) and the token of service/auth.py. No answer repeats more than a short prefix of
what was sent (guards.clip).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from segstream.pipeline.admission import BookUnavailable, StreamElsewhere, TooManyStreams
from segstream.pipeline.config import ServeSection
from segstream.pipeline.stream_spec import StreamExists, StreamSpec, UnknownStream
from segstream.service.auth import TokenAuth
from segstream.service.control import StreamsControl
from segstream.service.guards import BodyError, HttpGuards, clip, json_body
from segstream.service.openapi import openapi_document
from segstream.service.viewer import Viewer

log = logging.getLogger("segstream.service")
STATIC = Path(__file__).parent / "static"
BOUNDARY = "segstreamframe"


#: Most validation errors listed in one answer (a body of 10 000 unknown keys gets 10).
MAX_ERRORS_LISTED = 10


def _error(status: int, message: str, headers_allow: str | None = None, **extra: Any) -> JSONResponse:
    headers = {"allow": headers_allow} if headers_allow else None
    return JSONResponse({"error": clip(message, 300), **extra}, status_code=status, headers=headers)


def _field(loc: tuple[Any, ...]) -> str:
    return clip(".".join(str(p) for p in loc), 64) or "body"  # an unknown key is the client's text


def _validation_error(exc: ValidationError) -> JSONResponse:
    """422 naming the first bad field, e.g. {"error": "url: Field required", "field": "url"}."""
    errors = exc.errors(include_input=False, include_url=False)
    first = errors[0]
    where = _field(first["loc"])
    message = "unknown field" if first["type"] == "extra_forbidden" else clip(first["msg"], 200)
    return _error(422, f"{where}: {message}", field=where,
                  errors=[{"field": _field(e["loc"]), "message": clip(e["msg"], 200)} for e in errors[:MAX_ERRORS_LISTED]])


def _model_name(source: Any) -> str | None:
    """The model as /readyz names it: a file's name, never its folder (the disk is nobody's business)."""
    if source is None:
        return None
    text = str(source)
    return Path(text).name if ("/" in text or "\\" in text) else text


def build_app(control: StreamsControl, viewer: Viewer, metrics: CollectorRegistry, token: str | None = None,
              metrics_public: bool = False, secure_cookie: bool = False, read_only: bool = False,
              serve: ServeSection | None = None, why_read_only: str = "this process has no write API") -> HttpGuards:
    """The whole HTTP side; `token` None/empty leaves every endpoint open (to loopback Host names and
    serve.allowed_hosts only). read_only (`run --http`, `worker --http`): POST/DELETE answer 405 with
    `why_read_only`. `serve`: the limits (default ServeSection())."""
    serve = serve or ServeSection()
    document = openapi_document(read_only=read_only, token=bool(token), metrics_public=metrics_public)
    return _guarded(_routes(control, viewer, metrics, document, read_only, serve, why_read_only),
                    token, metrics_public, secure_cookie, serve)


def _guarded(routes: list[Any], token: str | None, metrics_public: bool, secure_cookie: bool,
             serve: ServeSection) -> HttpGuards:
    app = Starlette(routes=routes)
    auth = TokenAuth(app, token, metrics_public=metrics_public, secure_cookie=secure_cookie)
    return HttpGuards(auth, token_set=bool(token), allowed_hosts=serve.allowed_hosts, max_body_bytes=serve.max_body_bytes)


def starting_app(token: str | None = None, metrics_public: bool = False, serve: ServeSection | None = None,
                 secure_cookie: bool = False) -> HttpGuards:
    """What a process serves while its model loads: /livez 200, /status 200 {"loading": true},
    /readyz and anything else 503 (behind the same guards and token as the full app)."""
    async def livez(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def starting(request: Request) -> Response:
        return JSONResponse({"status": "starting", "error": "the model is loading; try again shortly"}, status_code=503)

    async def status(request: Request) -> Response:
        return JSONResponse({"status": "starting", "loading": True})

    routes = [Route("/livez", livez, methods=["GET"]), Route("/status", status, methods=["GET"]),
              Route("/{path:path}", starting, methods=["GET", "POST", "DELETE", "PUT", "PATCH"])]
    return _guarded(routes, token, metrics_public, secure_cookie, serve or ServeSection())


def _routes(control: StreamsControl, viewer: Viewer, metrics: CollectorRegistry, document: dict[str, Any],
            read_only: bool, serve: ServeSection, why_read_only: str) -> list[Any]:
    pipeline = control.pipeline

    async def add_stream(request: Request) -> Response:
        try:  # the guards bounded the body's size; json_body bounds its depth
            body = json_body(await request.body(), serve.max_json_depth)
        except BodyError as exc:
            return _error(exc.status, str(exc))
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object like {\"id\": \"cam1\", \"url\": \"rtsp://...\"}")
        try:
            spec = StreamSpec.model_validate(body)
        except ValidationError as exc:
            return _validation_error(exc)
        try:
            snapshot = await run_in_threadpool(control.add, spec)
        except StreamExists:
            return _error(409, f"stream {spec.id!r} exists already: DELETE /streams/{spec.id} first", field="id")
        except TooManyStreams as exc:
            return _error(409, str(exc), reason="max_streams")
        except BookUnavailable as exc:
            return _error(503, str(exc), reason="redis")
        except ValidationError as exc:
            return _validation_error(exc)
        except (ValueError, OSError, RuntimeError) as exc:  # the source was refused (SourceError: e.g. a missing file)
            return _error(400, clip(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 200), field="url")
        log.info("stream %s added over the API (%s)", spec.id, snapshot.get("url"))  # (redacted)
        return JSONResponse(snapshot, status_code=201, headers={"location": f"/streams/{spec.id}"})

    async def list_streams_(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(control.list))

    async def get_stream(request: Request) -> Response:
        stream_id = request.path_params["stream_id"]
        try:
            return JSONResponse(await run_in_threadpool(control.get, stream_id))
        except UnknownStream:
            return _error(404, f"no stream {clip(stream_id, 64)!r}")

    async def delete_stream(request: Request) -> Response:
        stream_id = request.path_params["stream_id"]
        try:
            snapshot = await run_in_threadpool(control.remove, stream_id)
        except UnknownStream:
            return _error(404, f"no stream {clip(stream_id, 64)!r}")
        except StreamElsewhere as exc:
            return _error(409, str(exc), worker=clip(exc.worker, 200), reason="elsewhere")
        except BookUnavailable as exc:
            return _error(503, str(exc), reason="redis")
        log.info("stream %s removed over the API", stream_id)
        return JSONResponse(snapshot)

    async def scrape(request: Request) -> Response:
        body = await run_in_threadpool(generate_latest, metrics)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def livez(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def no_write_api(request: Request) -> Response:
        return _error(405, f"{request.method} {request.url.path}: {why_read_only}", headers_allow="GET")

    async def status(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(control.status))

    async def readyz(request: Request) -> Response:
        ready = bool(control.ready())
        redis_up, down_since = control.redis()
        body = {"status": "ready" if ready else "not ready", "redis": redis_up,
                "redis_down_since": down_since, "model": _model_name(pipeline.model_source)}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def viewer_page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})

    async def viewer_frames(request: Request) -> Response:
        stream_id = request.path_params["stream_id"]
        if pipeline.registry.get(stream_id) is None:
            return _error(404, f"no stream {clip(stream_id, 64)!r}")
        exists = lambda sid: pipeline.registry.get(sid) is not None  # noqa: E731
        return StreamingResponse(viewer.mjpeg(stream_id, BOUNDARY, exists), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    async def viewer_status(request: Request) -> Response:
        return JSONResponse(viewer.status())

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    return [
        Route("/", viewer_page, methods=["GET"]),
        Route("/streams", list_streams_, methods=["GET"]),
        Route("/streams", no_write_api if read_only else add_stream, methods=["POST"]),
        Route("/streams/{stream_id}", get_stream, methods=["GET"]),
        Route("/streams/{stream_id}", no_write_api if read_only else delete_stream, methods=["DELETE"]),
        Route("/status", status, methods=["GET"]),
        Route("/metrics", scrape, methods=["GET"]),
        Route("/livez", livez, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/viewer/streams/{stream_id}.mjpg", viewer_frames, methods=["GET"]),
        Route("/viewer/status", viewer_status, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
