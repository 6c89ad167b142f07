"""The OpenAPI 3.1 document of the service's HTTP API, served at `/openapi.json`.

Written out rather than generated from the handlers, so it states the contract (design.md §4)
including every refusal; the request body's schema is StreamSpec's own JSON Schema, so the two
cannot drift apart. tests/security/test_api_fuzz.py fuzzes the running service against it.
"""

from __future__ import annotations

from typing import Any

from segstream.pipeline.stream_spec import StreamSpec
from segstream.pipeline.wire.stream_id import ID_PATTERN

STREAM_ID = {"type": "string", "pattern": ID_PATTERN}


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": schema or {"$ref": "#/components/schemas/Error"}}}}


def openapi_document(read_only: bool = False, token: bool = False, metrics_public: bool = False) -> dict[str, Any]:
    """The document for this service: `read_only` (`run --http`) has no POST/DELETE; with `token`
    every operation but the probes (and /metrics when public) needs `Authorization: Bearer`."""
    spec_schema = StreamSpec.model_json_schema()
    refusals = {
        "400": _json("the body is not JSON, nests too deep, or the Host is not allowed"),
        "401": _json("missing or wrong token"),
        "413": _json("the body is larger than serve.max_body_bytes"),
        "415": _json("the body is not Content-Type: application/json"),
    }
    stream = {"$ref": "#/components/schemas/Stream"}
    streams_path: dict[str, Any] = {
        "get": {"operationId": "listStreams", "summary": "every stream with its state and counters",
                "responses": {"200": _json("the streams", {"type": "array", "items": stream}), "401": refusals["401"]}},
    }
    if not read_only:
        streams_path["post"] = {
            "operationId": "addStream", "summary": "add a camera or file stream",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/StreamSpec"}}}},
            "responses": {"201": _json("added", stream), **refusals,
                          "409": _json("a stream with this id exists in the fleet, or serve.max_streams are held "
                                       "(reason max_streams)"),
                          "503": _json("Redis is away: the camera book cannot be changed now (reason redis)"),
                          "422": _json("a field is invalid (the answer names it)")},
        }
    one_path: dict[str, Any] = {
        "parameters": [{"name": "stream_id", "in": "path", "required": True, "schema": STREAM_ID}],
        "get": {"operationId": "getStream", "summary": "one stream",
                "responses": {"200": _json("the stream", stream), "401": refusals["401"], "404": _json("no such stream")}},
    }
    if not read_only:
        one_path["delete"] = {"operationId": "deleteStream", "summary": "stop a stream (drained) and forget it",
                              "responses": {"200": _json("its final counters", stream), "401": refusals["401"],
                                            "404": _json("no such stream"),
                                            "409": _json("a local stream of another process (the answer names its worker)"),
                                            "503": _json("Redis is away: the camera book cannot be changed now")}}
    open_security: list[dict[str, list[str]]] = [{}]
    paths: dict[str, Any] = {
        "/streams": streams_path,
        "/streams/{stream_id}": one_path,
        "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus text format",
                             **({"security": open_security} if metrics_public else {}),
                             "responses": {"200": {"description": "metrics",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}},
                                           "401": refusals["401"]}}},
        "/status": {"get": {"operationId": "status", "summary": "what this process runs (a fleet process: its heartbeat record)",
                            "responses": {"200": _json("the status", {"type": "object"}), "401": refusals["401"]}}},
        "/livez": {"get": {"operationId": "livez", "summary": "200 while the process answers", "security": open_security,
                           "responses": {"200": _json("alive", {"type": "object"})}}},
        "/readyz": {"get": {"operationId": "readyz", "summary": "200 when the model is loaded and Redis answers",
                            "security": open_security,
                            "responses": {"200": _json("ready", {"$ref": "#/components/schemas/Readiness"}),
                                          "503": _json("not ready", {"$ref": "#/components/schemas/Readiness"})}}},
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "segstream service", "version": "1",
                 "description": "Streaming instance segmentation: add cameras and files, read their state. "
                                "Frames are published to Redis Streams (wire schema v1), not over HTTP."},
        "paths": paths,
        "components": {
            "schemas": {
                "StreamSpec": spec_schema,
                "Stream": {"type": "object", "required": ["id", "state"],
                           "properties": {"id": STREAM_ID, "url": {"type": "string"}, "state": {"type": "string"},
                                          "worker": {"type": ["string", "null"],
                                                     "description": "the fleet process running it (null: pending)"}},
                           "additionalProperties": True},
                "Readiness": {"type": "object", "required": ["status", "redis"],
                              "properties": {"status": {"type": "string"}, "redis": {"type": "boolean"},
                                             "model": {"type": ["string", "null"]}},
                              "additionalProperties": True},
                "Error": {"type": "object", "required": ["error"],
                          "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
                          "additionalProperties": True},
            },
        },
    }
    if token:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document
