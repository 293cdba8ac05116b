"""The HTTP API under ``/v1``: submit, read and list jobs, and the capacity mirror.

Handlers only parse and check what the client sent, then hand over to the job store or the slot
allocator; every refusal is a ``RequestError`` that ``errors.error_middleware`` renders as
``{"error": ..., "code": ...}``. A refused request writes nothing to Redis.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiohttp import hdrs, web

from daemon import cancellation
from daemon.errors import InvalidRequest, NotFound, PayloadTooLarge, UnsupportedMediaType
from daemon.input_limits import check_json
from daemon.jobs import JobRequest, State
from daemon.services import Services
from daemon.store import MAX_PAGE_SIZE
from daemon.web.errors import json_response

SERVICES = web.AppKey("services", Services)

# A job request is a prompt and a few URLs (params are capped at 64 KiB); 256 KiB leaves room for
# the envelope and refuses anything that is not a job request before it is parsed.
MAX_BODY_BYTES = 256 * 1024
DEFAULT_PAGE_SIZE = 20
# Query integers are bounded in length, so "page=1e999"-style input never becomes a huge number.
_QUERY_INTEGER = re.compile(r"[0-9]{1,9}")

routes = web.RouteTableDef()


@routes.post("/v1/jobs")
async def create_job(request: web.Request) -> web.Response:
    """Queue a job: ``202 {"jobId", "created": true}`` for a new job, ``200 {"jobId", "created":
    false}`` when its ``requestId`` was seen before (the existing job; nothing is queued twice)."""
    body = await read_json(request)
    check_json(body, "the job request")
    job_request = JobRequest.from_json(body)
    created = await request.app[SERVICES].store.create(job_request)
    status = 202 if created.created else 200
    return json_response({"jobId": created.job_id, "created": created.created}, status=status)


@routes.get("/v1/jobs/{jobId}")
async def get_job(request: web.Request) -> web.Response:
    """One job in useapi's status shape (https://useapi.net/docs/api-ltxstudio-v1/get-ltxstudio-assets-jobId);
    404 when unknown, malformed or expired."""
    job = await request.app[SERVICES].store.require(request.match_info["jobId"])
    return json_response(job.to_api())


@routes.delete("/v1/jobs/{jobId}")
async def cancel_job(request: web.Request) -> web.Response:
    """Cancel a job that has not ended: it is ``canceled`` at once (slot released, app told) and
    its provider is asked to stop it where it can (``cancelNote`` on the job says what happened);
    404 when unknown, 409 when it has already ended."""
    canceled = await cancellation.cancel_job(request.app[SERVICES], request.match_info["jobId"])
    return json_response({**canceled.job, "cancel": {"atProvider": canceled.at_provider}})


@routes.get("/v1/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    """Jobs newest first, filtered by ``status`` and ``provider``, paged with ``page``/``limit``;
    ``meta`` has the shape of useapi's asset listing
    (https://useapi.net/docs/api-ltxstudio-v1/get-ltxstudio-assets). An empty parameter counts as
    not given."""
    services = request.app[SERVICES]
    query = query_params(request, allowed=("status", "provider", "page", "limit"))
    state = choice(query, "status", [state.value for state in State])
    provider = configured_provider(query, services, missing=InvalidRequest)
    page = bounded_integer(query, "page", default=1, low=1)
    limit = bounded_integer(query, "limit", default=DEFAULT_PAGE_SIZE, low=1, high=MAX_PAGE_SIZE)
    jobs, total = await services.store.list_jobs(state=state, provider=provider, page=page, limit=limit)
    meta = {
        "totalItems": total,
        "itemCount": len(jobs),
        "itemsPerPage": limit,
        "totalPages": math.ceil(total / limit),
        "currentPage": page,
    }
    return json_response({"items": [job.to_api() for job in jobs], "meta": meta})


@routes.get("/v1/scheduler/available")
async def scheduler_available(request: web.Request) -> web.Response:
    """The capacity mirror (useapi's ``GET scheduler/available``,
    https://www.useapi.net/docs/api-ltxstudio-v1/get-ltxstudio-scheduler-available.html), of one
    provider or of all."""
    services = request.app[SERVICES]
    provider = configured_provider(query_params(request, allowed=("provider",)), services, missing=NotFound)
    return json_response(await services.slots.capacity(provider))


async def read_json(request: web.Request) -> Any:
    """The decoded JSON body; 415 unless it is declared JSON, 413 over the cap, 400 if malformed."""
    return (await read_json_with_bytes(request))[1]


async def read_json_with_bytes(request: web.Request) -> tuple[bytes, Any]:
    """``read_json``, also returning the raw body."""
    if request.content_type != "application/json":
        declared = request.headers.get(hdrs.CONTENT_TYPE)
        got = f"got {declared!r}" if declared else "no Content-Type was sent"
        raise UnsupportedMediaType(f"send the body as JSON with Content-Type: application/json ({got})")
    # Refuse a declared oversize body before reading it; a chunked one is cut off by read() (413 too).
    if request.content_length is not None and request.content_length > request.client_max_size:
        raise PayloadTooLarge(f"request body is larger than {request.client_max_size} bytes")
    try:
        if request.content.is_eof():
            body = await request.read()  # all there already (small bodies come with the headers)
        else:
            # A client that has not sent its whole body by then is stalled or hostile (slowloris).
            deadline = request.app[SERVICES].settings.body_timeout
            async with asyncio.timeout(deadline):
                body = await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            text=f"the request body did not arrive within {request.app[SERVICES].settings.body_timeout:g} s"
        ) from None
    try:
        return body, orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"malformed JSON: {exc}") from None


def query_params(request: web.Request, *, allowed: Iterable[str]) -> dict[str, str]:
    """The query as a dict, refusing unknown and repeated parameters; empty values are dropped."""
    names = tuple(allowed)
    for name in request.query:
        if name not in names:
            raise InvalidRequest(f"unknown query parameter {name!r}: use {', '.join(names)}")
        if len(request.query.getall(name)) > 1:
            raise InvalidRequest(f"query parameter {name!r} is given more than once")
    return {name: value for name, value in request.query.items() if value}


def choice(query: Mapping[str, str], name: str, allowed: Iterable[str]) -> str | None:
    value = query.get(name)
    options = tuple(allowed)
    if value is not None and value not in options:
        raise InvalidRequest(f"{name!r} must be one of {', '.join(options)} (got {value!r})")
    return value


def configured_provider(
    query: Mapping[str, str], services: Services, *, missing: type[InvalidRequest] | type[NotFound]
) -> str | None:
    """The ``provider`` parameter, which must name a provider with accounts; ``missing`` is raised
    otherwise (400 for a filter, 404 where the provider is the resource)."""
    provider = query.get("provider")
    configured = services.settings.providers()
    if provider is not None and provider not in configured:
        raise missing(f"unknown provider {provider!r}: configured providers are {', '.join(configured)}")
    return provider


def bounded_integer(
    query: Mapping[str, str], name: str, *, default: int, low: int, high: int | None = None
) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    value = int(raw) if _QUERY_INTEGER.fullmatch(raw) else None
    if value is None or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise InvalidRequest(f"{name!r} must be an integer {bounds} (got {raw!r})")
    return value
