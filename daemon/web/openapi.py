"""The OpenAPI 3.1 description of the HTTP API, served at ``GET /openapi.json``.

The route table, :data:`PATHS`, is written here, one entry per route, so that documenting a new
route is one more entry there. The schemas of bodies and answers are generated from the structs of
``daemon/api_models.py``, the same ones that validate a job request, so the two cannot disagree.
``tests/test_openapi.py`` fails when the app registers a route that has no entry, and runs
schemathesis against a live server to check that every answer matches what is written here. Query
limits (page sizes, states) come from the modules that enforce them.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from aiohttp import web

from daemon.api_models import schema_components
from daemon.assets import ASSET_TYPES, MAX_WORKFLOW_LENGTH
from daemon.jobs import State
from daemon.store import MAX_PAGE_SIZE
from daemon.web.api import DEFAULT_PAGE_SIZE, MAX_BODY_BYTES

__all__ = ["PATHS", "build_document", "openapi_json"]

OPENAPI_VERSION = "3.1.0"
API_VERSION = "0.1.0"
# The largest page number the query parser accepts (nine digits), see daemon.web.api.
MAX_PAGE = 999_999_999

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: Schema, description: str) -> Schema:
    """A response (or request body) carrying JSON of ``schema``."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def text_body(media_type: str, description: str) -> Schema:
    """A response that is not JSON (the dashboard's HTML, the Prometheus text format)."""
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def error(description: str) -> Schema:
    return json_body(ref("Error"), description)


def query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def operation(
    operation_id: str,
    summary: str,
    responses: dict[int, Schema],
    *,
    api: bool = False,
    parameters: list[Schema] | None = None,
    request_body: Schema | None = None,
) -> Schema:
    """One operation. Every operation may answer 500 (the catch-all middleware); ``api=True`` marks a
    ``/v1`` route: bearer auth (401), unknown query parameters (400) and Redis outages (503)."""
    answers: dict[int, Schema] = dict(responses)
    if api:
        answers.setdefault(400, error("malformed request, or an unknown query parameter"))
        answers.setdefault(401, error("missing or wrong bearer token (only when GENRELAY_API_TOKENS is set)"))
        answers.setdefault(503, error("Redis is unreachable; retry after the Retry-After header"))
    answers.setdefault(500, error("internal error (details only in the server log)"))
    result: Schema = {
        "operationId": operation_id,
        "summary": summary,
        "responses": {str(status): answers[status] for status in sorted(answers)},
    }
    if api:
        result["security"] = [{"bearerAuth": []}]
    if parameters:
        result["parameters"] = parameters
    if request_body is not None:
        result["requestBody"] = request_body
    return result


# --- paths ----------------------------------------------------------------------------------------------

_JOB_ID: Schema = {
    "name": "jobId",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "the id returned by POST /v1/jobs, `<provider>-<32 hex digits>`",
}

# One entry per route the app registers (HEAD aside): path -> method -> operation.
PATHS: dict[str, dict[str, Schema]] = {
    "/v1/jobs": {
        "post": operation(
            "createJob",
            "Queue a job",
            {
                200: json_body(ref("JobCreated"), "requestId named an existing job; nothing was queued"),
                202: json_body(ref("JobCreated"), "queued"),
                400: error("malformed JSON, wrong types, unknown provider, operation or account"),
                408: error("the body did not arrive in time"),
                413: error(f"body larger than {MAX_BODY_BYTES} bytes"),
                415: error("the body is not declared as application/json"),
            },
            api=True,
            request_body={
                "required": True,
                "content": {"application/json": {"schema": ref("JobRequest")}},
            },
        ),
        "get": operation(
            "listJobs",
            "List jobs, newest first",
            {
                200: json_body(ref("JobPage"), "one page of jobs"),
                400: error("a bad filter or page parameter, or an unknown provider"),
            },
            api=True,
            parameters=[
                query("status", {"type": "string", "enum": [s.value for s in State]}, "only this state"),
                query("provider", {"type": "string"}, "only this provider"),
                query(
                    "archive",
                    {"type": "string", "enum": ["pending", "archived", "failed", "expired"]},
                    "only assets whose archived copy is in this state",
                ),
                query("page", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1}, "page"),
                query(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": DEFAULT_PAGE_SIZE},
                    "jobs per page",
                ),
            ],
        ),
    },
    "/v1/jobs/{jobId}": {
        "get": operation(
            "getJob",
            "One job, in the provider's status shape",
            {200: json_body(ref("Job"), "the job"), 404: error("unknown job, or expired")},
            api=True,
            parameters=[_JOB_ID],
        ),
        "delete": operation(
            "cancelJob",
            "Cancel a job that has not ended (and stop it at the provider where it can)",
            {
                200: json_body(ref("CanceledJob"), "the canceled job, plus cancel.atProvider"),
                404: error("unknown job, or expired"),
                409: error("the job has already ended"),
            },
            api=True,
            parameters=[_JOB_ID],
        ),
    },
    "/v1/assets": {
        "get": operation(
            "listAssets",
            "List finished artifacts, newest first",
            {
                200: json_body(ref("AssetPage"), "one page of assets"),
                400: error("a bad filter or page parameter, or an unknown provider"),
            },
            api=True,
            parameters=[
                query("type", {"type": "string", "enum": list(ASSET_TYPES)}, "only this type"),
                query("provider", {"type": "string"}, "only this provider"),
                query(
                    "workflow",
                    {"type": "string", "maxLength": MAX_WORKFLOW_LENGTH},
                    "only this workflow (the job's operation)",
                ),
                query("page", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1}, "page"),
                query(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": DEFAULT_PAGE_SIZE},
                    "assets per page",
                ),
            ],
        ),
    },
    "/v1/assets/{assetId}": {
        "get": operation(
            "getAsset",
            "One asset",
            {200: json_body(ref("Asset"), "the asset"), 404: error("unknown asset, or expired")},
            api=True,
            parameters=[
                {
                    "name": "assetId",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "an asset's id, `<provider>-asset-<32 hex digits>`",
                }
            ],
        ),
    },
    "/v1/assets/{assetId}/content": {
        "get": operation(
            "getAssetContent",
            "Our archived copy of the asset (ETag = SHA-256; Range answers 206)",
            {
                200: {"description": "the bytes", "content": {"application/octet-stream": {}}},
                206: {"description": "the requested range", "content": {"application/octet-stream": {}}},
                302: {"description": "S3 presigned URL, or the provider's URL with fallback=provider"},
                304: {"description": "If-None-Match matched"},
                404: error("unknown asset, or no archived copy yet"),
                416: {"description": "the range lies past the end"},
            },
            api=True,
            parameters=[
                {"name": "assetId", "in": "path", "required": True, "schema": {"type": "string"}},
                query("fallback", {"type": "string", "enum": ["provider"]}, "redirect to the provider's URL"),
            ],
        ),
    },
    "/v1/scheduler/available": {
        "get": operation(
            "schedulerAvailable",
            "Slots per account: the capacity mirror",
            {200: json_body(ref("Capacity"), "capacity"), 404: error("no such provider")},
            api=True,
            parameters=[query("provider", {"type": "string"}, "only this provider")],
        ),
    },
    "/healthz": {
        "get": operation(
            "healthz", "Liveness: the process answers", {200: json_body(ref("Status"), "alive")}
        ),
    },
    "/readyz": {
        "get": operation(
            "readyz",
            "Readiness: Redis reachable, scripts and accounts loaded",
            {
                200: json_body(ref("Status"), "ready"),
                503: json_body(ref("NotReady"), "not ready, and what is missing"),
            },
        ),
    },
    # The providers' webhooks (daemon/web/callbacks.py): the capability token in the path authenticates.
    "/callbacks/{provider}/{token}": {
        "post": operation(
            "receiveCallback",
            "A provider's webhook for one job",
            {
                200: json_body(ref("CallbackReceived"), "recorded (or a no-op for a job already gone)"),
                400: error("malformed JSON, not an object, or no job reference (replyRef, or ?ref=)"),
                404: error("unknown provider, or a token not valid for this provider and job"),
                408: error("the body did not arrive in time"),
                413: error(f"body larger than {MAX_BODY_BYTES} bytes"),
                415: error("the body is not declared as application/json"),
                503: error("Redis is unreachable; the provider should retry"),
            },
            parameters=[
                {"name": "provider", "in": "path", "required": True, "schema": {"type": "string"}},
                {
                    "name": "token",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "the per-job capability token genrelay put in the replyUrl",
                },
                {
                    "name": "ref",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "our job id, for providers whose body carries none (vydra's webhookUrl)",
                },
            ],
            request_body={
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "description": "the provider's payload (useapi: with replyRef)",
                        }
                    }
                },
            },
        ),
    },
    # The operator views of daemon/web/dashboard.py.
    "/": {
        "get": {
            **operation(
                "dashboard",
                "The operator dashboard (HTML)",
                {
                    200: text_body("text/html", "the dashboard"),
                    401: text_body("text/html", "a page asking for a token (GENRELAY_API_TOKENS is set)"),
                    503: error("Redis is unreachable"),
                },
                parameters=[
                    query("token", {"type": "string"}, "a bearer token, for a browser's first visit")
                ],
            ),
            "security": [{"bearerAuth": []}],
        },
    },
    "/metrics": {
        "get": operation(
            "metrics",
            "Prometheus metrics, open like the probes",
            {
                200: text_body("text/plain", "the Prometheus text format 0.0.4"),
                503: error("Redis is unreachable"),
            },
        ),
    },
    "/openapi.json": {
        "get": operation(
            "openapi",
            "This document",
            {200: json_body({"type": "object"}, "the OpenAPI 3.1 document")},
        ),
    },
}


def build_document() -> Schema:
    """The whole OpenAPI document, as JSON-ready data."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "genrelay",
            "version": API_VERSION,
            "description": "Job scheduler and webhook receiver for AI media-generation APIs.",
        },
        "paths": PATHS,
        "components": {
            "schemas": schema_components(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "one of GENRELAY_API_TOKENS; when none is set the API is open "
                    "(bind it to loopback)",
                },
            },
        },
    }


@functools.cache
def _document_bytes() -> bytes:
    return orjson.dumps(build_document())


async def openapi_json(request: web.Request) -> web.Response:
    """``GET /openapi.json``: the document, serialized once per process."""
    return web.Response(body=_document_bytes(), content_type="application/json")
