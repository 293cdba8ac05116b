"""The vydra.ai contract under ``/api/v1/`` (docs/providers.md §3).

Routes: ``POST/GET /jobs``, ``GET/DELETE /jobs/{id}``, ``GET /assets``, ``GET /assets/{id}``,
``GET /account/rate-limits``, ``GET /organization`` and ``GET /health`` (the only one without
auth). Every error leaves as ``{"error", "code": "ERROR_CODE", "details"?}`` (§3.5), whatever
raised it (a handler, an injected fault, the router), and every authenticated answer carries
``X-RateLimit-Limit/Remaining/Reset``. Choices where the documents are silent ([I]):

* check order at submit: auth, request limit, body (400), concurrency (429 with
  ``limits.type: "concurrent"``), credits (402);
* ``DELETE /jobs/{id}`` answers 200 with the job, now ``cancelled``; a job that already ended
  answers 400 INVALID_INPUT ("not running");
* a webhook is one POST of the job object (the status shape knob applies) at the terminal state;
  the fault knobs of ``emulator/webhooks.py`` apply to it;
* unknown query values (``status``, ``limit``, ``offset``) are 400 INVALID_INPUT.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from yarl import URL

from emulator.ltx_state import iso_utc
from emulator.responses import ApiError, decode_object, default_message, json_response
from emulator.vydra_state import VYDRA_KEY, WORKFLOWS, VydraAccount, VydraJob, VydraState, describe_failure

PREFIX = "/api/v1"
JOB_STATUSES = frozenset({"pending", "running", "completed", "failed", "cancelled"})
CODES = {
    400: "INVALID_INPUT",
    401: "MISSING_AUTH",
    402: "INSUFFICIENT_CREDITS",
    403: "INSUFFICIENT_SCOPE",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "FILE_TOO_LARGE",
    429: "RATE_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
}
MESSAGES = {
    400: "Invalid input",
    401: "Missing Authorization header",
    402: "Insufficient credits",
    403: "API key does not have the required scope",
    404: "Not found",
    429: "Rate limit exceeded",
    500: "Internal server error",
}

Handler = Callable[[web.Request, VydraState, VydraAccount], Awaitable[web.Response]]


class VydraError(ApiError):
    """An error with vydra's ``code`` and the extra top-level fields some errors carry."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, headers=headers)
        self.code = code
        self.extra = extra or {}


def error_response(error: ApiError) -> web.Response:
    """vydra's envelope; a message that is another contract's default gets vydra's wording."""
    if isinstance(error, VydraError):
        body: dict[str, Any] = {"error": error.message, "code": error.code, **error.extra}
    else:
        message = error.message
        if message == default_message(error.status):
            message = MESSAGES.get(error.status, message)
        code = CODES.get(error.status, "INTERNAL_ERROR" if error.status >= 500 else "INVALID_INPUT")
        body = {"error": message, "code": code}
    return json_response(body, status=error.status, headers=error.headers)


def routes() -> list[web.RouteDef]:
    return [
        web.get(f"{PREFIX}/health", health),
        web.post(f"{PREFIX}/jobs", authenticated(create_job)),
        web.get(f"{PREFIX}/jobs", authenticated(list_jobs)),
        web.get(f"{PREFIX}/jobs/{{job_id}}", authenticated(get_job)),
        web.delete(f"{PREFIX}/jobs/{{job_id}}", authenticated(cancel_job)),
        web.get(f"{PREFIX}/assets", authenticated(list_assets)),
        web.get(f"{PREFIX}/assets/{{asset_id}}", authenticated(get_asset)),
        web.get(f"{PREFIX}/account/rate-limits", authenticated(rate_limits)),
        web.get(f"{PREFIX}/organization", authenticated(organization)),
    ]


def authenticated(handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Auth, then the sliding request window, then the handler; the rate headers go on every
    answer after auth, errors included."""

    async def wrapped(request: web.Request) -> web.Response:
        vydra = request.app[VYDRA_KEY]
        account = authenticate(request, vydra)
        accepted, used, reset_wall, refused = vydra.admit(account)
        headers = {
            "X-RateLimit-Limit": str(account.rpm),
            "X-RateLimit-Remaining": str(max(0, account.rpm - used)),
            "X-RateLimit-Reset": str(int(reset_wall + 0.999)),
        }
        if not accepted:
            retry = vydra.retry_after(account, refused)
            limit = {"minute": account.rpm, "hour": account.rph, "day": account.rpd}[refused]
            usage = vydra.usage(account)[refused]["used"]
            limits = {"type": refused, "limit": limit, "used": usage + 1 if refused == "minute" else usage}
            raise VydraError(
                429,
                "Rate limit exceeded",
                "RATE_LIMIT_EXCEEDED",
                {"retryAfter": retry, "limits": limits},
                {**headers, "Retry-After": str(retry)},
            )
        try:
            response = await handler(request, vydra, account)
        except ApiError as exc:
            exc.headers = {**headers, **exc.headers}
            raise
        response.headers.update(headers)
        return response

    return wrapped


def authenticate(request: web.Request, vydra: VydraState) -> VydraAccount:
    header = request.headers.get("Authorization", "").strip()
    if not header:
        raise VydraError(401, "Missing Authorization header", "MISSING_AUTH")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key.startswith("vydra_live_"):
        raise VydraError(
            401, "Invalid API key format: expected Bearer vydra_live_user_<id>_<key>", "INVALID_FORMAT"
        )
    account = vydra.accounts.get(key)
    if account is None or key in vydra.emulator.revoked:
        raise VydraError(401, "API key not found", "KEY_NOT_FOUND")
    return account


async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "timestamp": iso_utc(time.time())})


async def create_job(request: web.Request, vydra: VydraState, account: VydraAccount) -> web.Response:
    body = decode_object(await request.read())
    workflow, model, inputs, webhook = parse_create(body)
    now = vydra.now()
    executing = account.executing(now)
    if executing >= account.concurrent:
        account.rejected_concurrent += 1
        soonest = min((job.end for job in account.live.values()), default=now + 1)
        retry = max(1, int(soonest - now + 0.999))
        limits = {"type": "concurrent", "limit": account.concurrent, "used": executing}
        raise VydraError(
            429,
            f"Concurrent job limit reached ({executing} of {account.concurrent} jobs running)",
            "RATE_LIMIT_EXCEEDED",
            {"retryAfter": retry, "limits": limits},
            {"Retry-After": str(retry)},
        )
    vydra.settle(account)
    price = WORKFLOWS[workflow][2][model]
    if account.credits < price:
        raise VydraError(
            402,
            "Insufficient credits",
            "INSUFFICIENT_CREDITS",
            {"creditsRequired": price, "creditsRemaining": account.credits},
        )
    job = vydra.submit(account, workflow, model, inputs, webhook)
    await start_webhooks(vydra, job)
    link = str(request.url.with_path(f"{PREFIX}/jobs/{job.id}").with_query(None))
    answer = {
        "id": job.id,
        "status": "running",
        "workflow": workflow,
        "creditsCharged": job.credits,
        "createdAt": iso_utc(job.wall_start),
        "_links": {"self": link, "status": link},
    }
    return json_response(answer, status=201)


def parse_create(body: dict[str, Any]) -> tuple[str, str, dict[str, Any], str | None]:
    workflow = body.get("workflow")
    if not isinstance(workflow, str) or not workflow:
        raise VydraError(400, "workflow is required", "INVALID_INPUT")
    if workflow not in WORKFLOWS:
        raise VydraError(
            400,
            f"Unknown workflow: {workflow}",
            "INVALID_INPUT",
            {"details": {"workflows": sorted(WORKFLOWS)}},
        )
    inputs = body.get("input", {})
    if not isinstance(inputs, dict):
        raise VydraError(400, "input must be an object", "INVALID_INPUT")
    _, required, prices, default_model = WORKFLOWS[workflow]
    for name in required:
        if inputs.get(name) in (None, ""):
            raise VydraError(
                400, f"input.{name} is required", "INVALID_INPUT", {"details": {"field": f"input.{name}"}}
            )
    model = inputs.get("model", default_model)
    if model not in prices:
        raise VydraError(
            400,
            f"Unknown model for {workflow}: {model}",
            "INVALID_INPUT",
            {"details": {"models": sorted(prices)}},
        )
    webhook = body.get("webhookUrl")
    if webhook is not None:
        try:
            parsed = URL(webhook) if isinstance(webhook, str) else URL()
        except ValueError:
            parsed = URL()
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise VydraError(400, "webhookUrl must be an absolute http(s) URL", "INVALID_URL")
    return workflow, str(model), inputs, webhook or None


async def start_webhooks(vydra: VydraState, job: VydraJob) -> None:
    shape = vydra.config.vydra_status_shape

    def body_at(target: VydraJob, at: float) -> dict[str, Any]:
        return job_body(vydra, target, at, shape)

    planned = vydra.webhook_plan(job, body_at)
    if planned and vydra.config.webhook_before_submit_response:
        due_now = planned[0].at <= job.start
        first = planned.pop(0) if due_now else vydra.snapshot(job, body_at(job, job.start))
        await vydra.webhooks.send_now(first)
    for delivery in planned:
        vydra.webhooks.schedule(delivery)


def job_body(vydra: VydraState, job: VydraJob, now: float, shape: str) -> dict[str, Any]:
    """A job as ``GET /jobs/{id}`` shows it, in the documented shape or the /models route's."""
    status = job.status_at(now)
    output = job.output(vydra.config.public_base) if status == "completed" else None
    if shape == "models":
        body: dict[str, Any] = {
            "jobId": job.id,
            "status": "processing" if status in ("pending", "running") else status,
            "progress": job.progress_at(now),
        }
        if output is not None:
            body[f"{job.kind}Url"] = output["url"]
            if "thumbnailUrl" in output:
                body["thumbnailUrl"] = output["thumbnailUrl"]
        if status == "failed":
            body["error"] = {"message": describe_failure(job), "detail": job.error_type}
        return body
    return listing_entry(vydra, job, now)


def listing_entry(vydra: VydraState, job: VydraJob, now: float) -> dict[str, Any]:
    status = job.status_at(now)
    entry: dict[str, Any] = {
        "id": job.id,
        "status": status,
        "progress": job.progress_at(now),
        "workflowSlug": job.workflow,
        "statusMessage": _status_message(job, status),
        "creditsCharged": job.credits,
        "createdAt": iso_utc(job.wall_start),
        "completedAt": iso_utc(job.wall_at(job.end)) if job.end <= now else None,
    }
    if status == "completed":
        entry["output"] = job.output(vydra.config.public_base)
    elif status == "failed":
        entry["error"] = describe_failure(job)
    if vydra.config.vydra_list_webhook_url and job.webhook_url is not None:
        entry["webhookUrl"] = job.webhook_url
    return entry


def _status_message(job: VydraJob, status: str) -> str:
    return {
        "pending": "Queued",
        "running": f"Generating with {job.model}",
        "completed": "Completed",
        "failed": describe_failure(job),
        "cancelled": "Cancelled by user",
    }[status]


async def get_job(request: web.Request, vydra: VydraState, account: VydraAccount) -> web.Response:
    job = find_job(request, vydra, account)
    account.polls += 1
    return json_response(job_body(vydra, job, vydra.now(), vydra.config.vydra_status_shape))


async def cancel_job(request: web.Request, vydra: VydraState, account: VydraAccount) -> web.Response:
    job = find_job(request, vydra, account)
    if not vydra.cancel(account, job):
        status = job.status_at(vydra.now())
        raise VydraError(400, f"Job is not running (status {status})", "INVALID_INPUT")
    return json_response(listing_entry(vydra, job, vydra.now()))


def find_job(request: web.Request, vydra: VydraState, account: VydraAccount) -> VydraJob:
    job = vydra.lookup(account, request.match_info["job_id"])
    if job is None:
        raise VydraError(404, "Job not found", "JOB_NOT_FOUND")
    return job


async def list_jobs(request: web.Request, vydra: VydraState, account: VydraAccount) -> web.Response:
    limit, offset = paging(request)
    status = request.query.get("status") or None
    if status is not None and status not in JOB_STATUSES:
        raise VydraError(400, f"status must be one of {', '.join(sorted(JOB_STATUSES))}", "INVALID_INPUT")
    now = vydra.now()
    found = vydra.list_jobs(account, status)[offset : offset + limit]
    return json_response({"data": [listing_entry(vydra, job, now) for job in found]})


async def list_assets(request: web.Request, vydra: VydraState, account: VydraAccount) -> web.Response:
    limit, offset = paging(request)
    found = vydra.list_assets(account, request.query.get("workflow") or None)
    shown = found[offset : offset + limit]
    return json_response(
        {"data": shown, "pagination": {"limit": limit, "offset": offset, "count": len(shown)}}
    )


async def get_asset(request: web.Request, vydra: VydraState, account: VydraAccount) -> web.Response:
    asset = vydra.find_asset(account, request.match_info["asset_id"])
    if asset is None:
        raise VydraError(404, "Asset not found", "NOT_FOUND")
    return json_response(asset)


async def rate_limits(request: web.Request, vydra: VydraState, account: VydraAccount) -> web.Response:
    limits = {"rpm": account.rpm, "rph": account.rph, "rpd": account.rpd, "concurrent": account.concurrent}
    body = {
        "plan": account.plan,
        "limits": limits,
        "usage": vydra.usage(account),
        "timestamp": iso_utc(time.time()),
    }
    return json_response(body)


async def organization(request: web.Request, vydra: VydraState, account: VydraAccount) -> web.Response:
    vydra.settle(account)
    body = {
        "id": account.organization,
        "name": f"Organization {account.organization.removeprefix('org_')}",
        "plan": account.plan,
        "creditsRemaining": account.credits,
    }
    return json_response(body)


def paging(request: web.Request) -> tuple[int, int]:
    limit = _query_int(request, "limit", 20, 1, 100)
    offset = _query_int(request, "offset", 0, 0, None)
    return limit, offset


def _query_int(request: web.Request, name: str, default: int, low: int, high: int | None) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) < low or (high is not None and int(raw) > high):
        span = f"between {low} and {high}" if high is not None else f">= {low}"
        raise VydraError(400, f"{name} must be an integer {span}", "INVALID_INPUT")
    return int(raw)
