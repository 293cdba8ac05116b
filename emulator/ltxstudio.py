"""The useapi.net LTX Studio contract under ``/v1/ltxstudio/`` (docs/providers.md §1).

Routes: the create endpoints of §1.3, ``GET assets/{jobId}`` (status model), ``GET assets/``
(listing), ``GET scheduler``, ``GET scheduler/available``, ``DELETE scheduler/{jobId}``. Every
error leaves as ``{"error": "...", "code": N}`` (§1.1), whatever raised it (a handler, an injected
fault, the router). Choices where the documents are silent ([I]):

* ``email`` naming no account of the token is ``404`` (as ``GET accounts/{email}`` answers for an
  unconfigured account); a missing ``email`` with more than one account is ``400``; a token with
  no account at all is ``400``;
* ``maxJobs`` in a create body overrides the account's cap for that request, as documented; a
  full account is ``429 API query is full ...`` without ``Retry-After`` (none is documented);
* ``pollForResult=N``: useapi polls for up to ``min(3 N, 60)`` s. The emulator knows each job's
  duration, so it answers the jobId at once when the job cannot finish in that window, and
  otherwise waits (on the emulator clock) for the end and answers the status model;
* ``images/upscale`` needs a completed image job of the same token: unknown or expired is
  ``404 Job not found or has expired``, not yet completed (or a video) is ``400``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from emulator.ltxstudio_models import StudioAccount, StudioJob, asset_item
from emulator.ltxstudio_requests import ALIASES, ENDPOINTS, CreateRequest, parse_create
from emulator.ltxstudio_state import STUDIO_KEY, StudioState
from emulator.responses import ApiError, decode_object, default_message, json_response
from emulator.webhooks import wait_for_clock

PREFIX = "/v1/ltxstudio"
JOB_NOT_FOUND = "Job not found or has expired"
POLL_INTERVAL_SECONDS = 3
POLL_WINDOW_SECONDS = 60
FILTERS = {
    "images": frozenset({"image"}),
    "videos": frozenset({"video"}),
    "audio": frozenset({"audio"}),
    "other": frozenset({"other"}),
}
ALL_KINDS = frozenset({"image", "video", "audio", "other"})
USEAPI_MESSAGES = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Subscription required",
    404: "Not found",
    429: "API query is full, try again later",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def routes() -> list[web.RouteDef]:
    creates = [web.post(f"{PREFIX}/{name}", create) for name in [*ENDPOINTS, *ALIASES]]
    return [
        *creates,
        web.get(f"{PREFIX}/assets/", list_assets),
        web.get(f"{PREFIX}/assets", list_assets),
        web.get(f"{PREFIX}/assets/{{job_id:.+}}", job_status),
        web.get(f"{PREFIX}/scheduler", scheduler),
        web.get(f"{PREFIX}/scheduler/available", scheduler_available),
        web.delete(f"{PREFIX}/scheduler/{{job_id:.+}}", cancel),
    ]


def error_response(error: ApiError) -> web.Response:
    """useapi's envelope. A message that is the LTX part's default (an injected fault or a router
    error without its own text) is swapped for useapi's wording of that status."""
    message = error.message
    if message == default_message(error.status):
        message = USEAPI_MESSAGES.get(error.status, message)
    return json_response({"error": message, "code": error.status}, status=error.status, headers=error.headers)


async def create(request: web.Request) -> web.Response:
    studio = request.app[STUDIO_KEY]
    token = authenticate(request, studio)
    name = request.path.removeprefix(f"{PREFIX}/")
    parsed = parse_create(name, await read_body(request))
    account = resolve_account(studio, token, parsed.email)
    if parsed.source_job_id is not None:
        check_upscale_source(studio, token, parsed.source_job_id)
    cap = parsed.max_jobs if parsed.max_jobs is not None else account.max_jobs
    job = studio.submit(account, parsed.kind, parsed.prompt, cap, (parsed.reply_url, parsed.reply_ref))
    if job is None:
        executing = account.executing(studio.now())
        raise ApiError(429, f"API query is full for {account.email} ({executing} of {cap} jobs executing)")
    await start_callbacks(studio, job)
    if parsed.poll_for_result is not None and await finished_in_window(studio, job, parsed):
        return json_response(studio.read_status(job))
    return json_response({"jobId": job.job_id, "generationId": job.generation_id})


async def start_callbacks(studio: StudioState, job: StudioJob) -> None:
    """Schedule the job's callbacks; with ``webhook_before_submit_response`` the first one is
    POSTed (and awaited) before the create answer leaves: the status model as of the submit
    instant, which is the first planned callback when one is due then, else an extra one."""
    planned = studio.callbacks(job)
    if planned and studio.config.webhook_before_submit_response:
        due_now = planned[0].at <= job.start
        await studio.webhooks.send_now(planned.pop(0) if due_now else studio.submit_snapshot(job))
    for delivery in planned:
        studio.webhooks.schedule(delivery)


async def finished_in_window(studio: StudioState, job: StudioJob, parsed: CreateRequest) -> bool:
    assert parsed.poll_for_result is not None
    window = min(POLL_INTERVAL_SECONDS * parsed.poll_for_result, POLL_WINDOW_SECONDS)
    if job.duration > window:
        return False
    await wait_for_clock(studio.now, job.end)
    return job.job_id in studio.jobs


async def job_status(request: web.Request) -> web.Response:
    studio = request.app[STUDIO_KEY]
    token = authenticate(request, studio)
    job = studio.lookup(token, request.match_info["job_id"])
    if job is None:
        raise ApiError(404, JOB_NOT_FOUND)
    return json_response(studio.read_status(job))


async def list_assets(request: web.Request) -> web.Response:
    """``GET assets/?email=&page=&limit=&filter=`` in useapi's listing shape (docs/providers.md
    §1.4), newest first."""
    studio = request.app[STUDIO_KEY]
    token = authenticate(request, studio)
    account = resolve_account(studio, token, request.query.get("email") or None)
    page = query_int(request, "page", 1)
    limit = query_int(request, "limit", 20)
    kinds = ALL_KINDS
    wanted = request.query.get("filter")
    if wanted:
        if wanted not in FILTERS:
            raise ApiError(400, f"Parameter filter must be one of: {', '.join(FILTERS)}")
        kinds = FILTERS[wanted]
    found = studio.finished_assets(account, kinds)
    shown = found[(page - 1) * limit : page * limit]
    now, base = studio.now(), studio.config.public_base
    meta = {
        "totalItems": len(found),
        "itemCount": len(shown),
        "itemsPerPage": limit,
        "totalPages": -(-len(found) // limit),
        "currentPage": page,
    }
    return json_response({"items": [asset_item(job, now, base) for job in shown], "meta": meta})


async def scheduler(request: web.Request) -> web.Response:
    studio = request.app[STUDIO_KEY]
    return json_response(studio.executing(authenticate(request, studio)))


async def scheduler_available(request: web.Request) -> web.Response:
    studio = request.app[STUDIO_KEY]
    token = authenticate(request, studio)
    return json_response({"executing": studio.executing(token), "available": studio.available(token)})


async def cancel(request: web.Request) -> web.Response:
    studio = request.app[STUDIO_KEY]
    token = authenticate(request, studio)
    job_id = request.match_info["job_id"]
    if not studio.cancel(token, job_id):
        raise ApiError(404, f"Unable to locate running jobId {job_id}")
    return web.Response(status=204)


def authenticate(request: web.Request, studio: StudioState) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    revoked = token in studio.emulator.revoked
    if scheme.lower() != "bearer" or revoked or studio.token_accounts(token) is None:
        raise ApiError(401, "Unauthorized")
    return token


def resolve_account(studio: StudioState, token: str, email: str | None) -> StudioAccount:
    """The account ``email`` names, or the only one; LTX Studio makes ``email`` required as soon
    as a token has more than one account (no load balancing on these endpoints)."""
    accounts = studio.token_accounts(token) or {}
    if email is not None:
        found = accounts.get(email)
        if found is None:
            raise ApiError(404, f"Account configuration not found for {email}")
        return found
    if not accounts:
        raise ApiError(400, "No LTX Studio account configured, add one with POST /v1/ltxstudio/accounts")
    if len(accounts) > 1:
        raise ApiError(400, "Parameter email is required when more than one account is configured")
    return next(iter(accounts.values()))


def check_upscale_source(studio: StudioState, token: str, job_id: str) -> None:
    """The job to upscale must be a completed image job of this token; the upscale job itself
    runs like any other (``job_seconds``, ``failure_rate``: it has no prompt for markers)."""
    source = studio.lookup(token, job_id)
    if source is None:
        raise ApiError(404, JOB_NOT_FOUND)
    if source.kind != "image" or source.status_at(studio.now()) != "completed":
        raise ApiError(400, f"Parameter jobId must name a completed image job: {job_id}")


def query_int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ApiError(400, f"Parameter {name} must be a positive integer")
    return int(raw)


async def read_body(request: web.Request) -> dict[str, Any]:
    """A JSON object, or the text fields of a form (file parts are not used by these endpoints)."""
    if request.content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.post()
        return {key: value for key, value in form.items() if isinstance(value, str)}
    return decode_object(await request.read(), empty={})
