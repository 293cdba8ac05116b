"""vydra.ai jobs API (https://www.vydra.ai/docs/jobs): ``POST /api/v1/jobs {workflow, input,
webhookUrl}``, then a webhook and/or status reads of ``GET /api/v1/jobs/{id}``.

Field names vary between vydra's routes (``id``/``jobId``, ``output.url``/``videoUrl``, ``error``
as text or ``{message, detail}``), so every read is tolerant. vydra's webhook body is not
documented and carries no client reference, so our job id rides in the webhook URL's ``ref``
query parameter and the body is only a hint (the status read decides).

vydra limits requests per minute per account (Free plan: 10), so every request takes one unit of
the account's shared request budget first (``daemon/request_budget.py``). The limit comes from
the accounts file (``requests_per_minute``, ``rate_window_seconds``) or from vydra itself: the
``X-RateLimit-Limit`` header of every answer and ``GET /account/rate-limits`` (read at each
capacity sync), kept in Redis for every process; the Free plan's is assumed until vydra says.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import aiohttp

from daemon.accounts_file import Account
from daemon.errors import InvalidRequest, ProviderAction, ProviderError
from daemon.jobs import Job, State, Update
from daemon.providers.base import (
    AssetPage,
    ProviderAsset,
    ProviderCapacity,
    RunningJob,
    action_for_status,
    lost,
    probe_answer,
    request_json,
)
from daemon.request_budget import (
    CONFIRM_SHARE,
    FULL_SHARE,
    MAX_WAIT_S,
    POLL_SHARE,
    BudgetExhausted,
    RequestLimit,
    budget_of,
)

WORKFLOWS = frozenset(
    {"generate_video", "generate_image", "generate_asmr", "lipsync_video", "house-timelapse"}
)
WORKFLOW_SLUG = re.compile(r"[a-z0-9_-]+")
STOP_ACCOUNT_STATUSES = frozenset({401, 402, 403})
FAILED_STATUSES = frozenset({"failed", "error", "cancelled", "canceled"})
# The Free plan's limit, assumed until the account's own is known (https://www.vydra.ai/docs/rate-limits).
FREE_PLAN_LIMIT = RequestLimit(10, 60.0)
LISTING_PAGE = 100
MAX_LISTING_PAGES = 20
URL_KEYS = ("videoUrl", "imageUrl", "audioUrl", "url")
KIND_OF_KEY = {"videoUrl": "video", "imageUrl": "image", "audioUrl": "audio"}
MIME_TYPES = {
    "mp4": "video/mp4",
    "mov": "video/quicktime",
    "webm": "video/webm",
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
    "m4a": "audio/mp4",
    "ogg": "audio/ogg",
}
ASSET_KINDS = {"video": "videos", "image": "images", "audio": "audio"}


class WorkflowSlugs(frozenset[str]):
    """vydra's documented workflows, but any slug is accepted: vydra adds database workflows
    (``house-timelapse``...) without notice, and it answers 400 itself for an unknown one."""

    def __contains__(self, item: object) -> bool:
        return isinstance(item, str) and WORKFLOW_SLUG.fullmatch(item) is not None


def classify(status: int, body: Any, headers: Mapping[str, str]) -> None:
    """Raise the ``ProviderError`` for a vydra error answer (https://www.vydra.ai/docs/errors)."""
    message = body.get("error") if isinstance(body, dict) else None
    code = body.get("code") if isinstance(body, dict) else None
    text = f"vydra {status} {code or 'error'}: {message or 'no message'}"
    action = action_for_status(status, STOP_ACCOUNT_STATUSES)
    raise ProviderError(
        text,
        action=action,
        status=status,
        error_type=code if isinstance(code, str) else None,
        retry_after=_retry_after(headers, body),
    )


def _retry_after(headers: Mapping[str, str], body: Any) -> float | None:
    for value in (headers.get("Retry-After"), body.get("retryAfter") if isinstance(body, dict) else None):
        if isinstance(value, bool) or value is None:
            continue
        try:
            return max(0.0, float(value))
        except (TypeError, ValueError):
            continue
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: Any) -> float | None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return None
    return float(value)


def result_url(body: Mapping[str, Any]) -> tuple[str, str | None, str | None] | None:
    """(url, kind from the field name, thumbnail) of a result, wherever this route put it."""
    places: list[Any] = [body]
    for key in ("output", "result", "outputs", "results"):
        value = body.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        places.append(value)
    thumbnail = _text(body.get("thumbnailUrl"))
    for place in places:
        if isinstance(place, str) and place:
            return place, None, thumbnail
        if not isinstance(place, Mapping):
            continue
        thumbnail = thumbnail or _text(place.get("thumbnailUrl"))
        for key in URL_KEYS:
            url = _text(place.get(key))
            if url:
                return url, KIND_OF_KEY.get(key), thumbnail or _text(place.get("thumbnailUrl"))
    return None


def error_text(body: Mapping[str, Any]) -> str | None:
    error = body.get("error")
    if isinstance(error, Mapping):
        parts = [_text(error.get("message")), _text(error.get("detail"))]
        joined = " ".join(f"({p})" if i and p else p for i, p in enumerate(parts) if p)
        return joined or None
    return _text(error) or _text(body.get("message")) or _text(body.get("statusMessage"))


def artifact(url: str, kind: str | None, thumbnail: str | None) -> dict[str, Any]:
    extension = urlsplit(url).path.rsplit(".", 1)[-1].lower() if "." in urlsplit(url).path else ""
    mime = MIME_TYPES.get(extension)
    found: dict[str, Any] = {"assetUrl": url, "kind": kind or (mime.split("/")[0] if mime else "other")}
    if mime:
        found["asset"] = {"mimeType": mime}
    if thumbnail:
        found["thumbnailUrl"] = thumbnail
    return found


def parse_status(body: Mapping[str, Any], *, confirm: bool = False) -> Update:
    """A vydra job object (status read, listing entry or webhook body) as an update."""
    provider_job_id = _text(body.get("jobId")) or _text(body.get("id"))
    status = str(body.get("status") or "").lower()
    if status in FAILED_STATUSES:
        error = error_text(body)
        return Update(
            State.FAILED,
            message=f"{status}: {error or 'no message'}",
            error_type="cancelled" if status.startswith("cancel") else "failed",
            provider_job_id=provider_job_id,
            confirm=confirm,
        )
    found = result_url(body)
    if status == "completed" or found is not None:
        return Update(
            State.COMPLETED,
            progress=100,
            message="completed",
            artifact=artifact(*found) if found else None,
            provider_job_id=provider_job_id,
            confirm=confirm,
        )
    progress = _number(body.get("progress"))
    message = _text(body.get("statusMessage")) or status or None
    return Update(
        State.ACTIVE,
        progress=None if progress is None else max(0, min(99, int(progress))),
        message=message,
        provider_job_id=provider_job_id,
    )


def ref_of(url: Any) -> str | None:
    """Our job id from the ``ref`` query parameter of a webhook URL."""
    if not isinstance(url, str) or not url:
        return None
    values = parse_qs(urlsplit(url).query).get("ref")
    return values[0] if values else None


def _created_ms(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


class VydraProvider:
    """The ``vydra`` provider."""

    name = "vydra"
    webhooks = True
    operations: frozenset[str] = WorkflowSlugs(WORKFLOWS)

    def __init__(self) -> None:
        # Per process: (base URL, account) -> the concurrent cap /account/rate-limits last gave.
        self._max_jobs: dict[tuple[str, str], int] = {}

    # -- the Provider protocol -------------------------------------------------------------

    async def submit(
        self, session: aiohttp.ClientSession, account: Account, job: Job, callback_url: str | None = None
    ) -> str:
        body: dict[str, Any] = {"workflow": job.operation, "input": dict(job.params)}
        if callback_url:
            separator = "&" if "?" in callback_url else "?"
            body["webhookUrl"] = f"{callback_url}{separator}{urlencode({'ref': job.id})}"
        _, answer = await self._call(session, account, "POST", "jobs", FULL_SHARE, json_body=body)
        answer = answer if isinstance(answer, dict) else {}
        job_id = _text(answer.get("id")) or _text(answer.get("jobId"))
        if job_id is None:
            raise ProviderError("vydra accepted the job but sent no id", action=ProviderAction.RETRY)
        return job_id

    async def status(self, session: aiohttp.ClientSession, account: Account, job: Job) -> Update:
        # A job that gets callbacks is read mostly because one asked for it: a larger share.
        share = CONFIRM_SHARE if job.fields.get("poll_backoff") else POLL_SHARE
        try:
            _, body = await self._call(session, account, "GET", self._job_path(job), share, wait=False)
        except ProviderError as exc:
            if exc.action is ProviderAction.LOST:
                return lost("vydra no longer knows this job (404 job not found)")
            raise
        return parse_status(body if isinstance(body, dict) else {})

    async def cancel(self, session: aiohttp.ClientSession, account: Account, job: Job) -> str:
        """``DELETE /jobs/{id}``: vydra stops the job, frees its slot and refunds its credits."""
        try:
            await self._call(session, account, "DELETE", self._job_path(job), FULL_SHARE)
        except ProviderError as exc:
            if exc.action is ProviderAction.LOST:
                return "vydra was no longer running it (404)"
            if exc.status == 400:
                return f"vydra was no longer running it ({exc})"
            raise
        return "vydra cancelled the job (its credits are refunded)"

    def parse_callback(self, body: Mapping[str, Any], *, confirm: bool = False) -> tuple[str | None, Update]:
        """(None, the update): vydra's webhook body carries no reference of ours; the callback
        URL's ``ref`` query parameter names the job."""
        if not isinstance(body.get("status"), str):
            raise InvalidRequest("'status' must be a string (a vydra job object)")
        if not (_text(body.get("id")) or _text(body.get("jobId"))):
            raise InvalidRequest("'id' (or 'jobId') must be a non-empty string")
        return None, parse_status(body, confirm=confirm)

    async def probe(self, session: aiohttp.ClientSession, account: Account) -> bool:
        """``GET /account/rate-limits`` (https://www.vydra.ai/docs/rate-limits; costs no credits),
        taken from the account's request budget without waiting: 200 means the key works, 401 /
        402 / 403 that it does not (https://www.vydra.ai/docs/errors)."""
        try:
            await self._call(session, account, "GET", "account/rate-limits", FULL_SHARE, wait=False)
        except ProviderError as exc:  # BudgetExhausted too: raised again, the next probe tries
            return probe_answer(exc)
        return True

    # -- capacity and assets ---------------------------------------------------------------

    async def capacity(self, session: aiohttp.ClientSession, account: Account) -> ProviderCapacity:
        """Jobs vydra lists as pending or running on the account, and its ``concurrent`` cap."""
        running: list[RunningJob] = []
        for status in ("running", "pending"):
            for offset in range(0, LISTING_PAGE * MAX_LISTING_PAGES, LISTING_PAGE):
                query = urlencode({"status": status, "limit": LISTING_PAGE, "offset": offset})
                _, body = await self._call(session, account, "GET", f"jobs?{query}", POLL_SHARE)
                entries = body.get("data") if isinstance(body, dict) else None
                entries = entries if isinstance(entries, list) else []
                for entry in entries:
                    if not isinstance(entry, dict):
                        continue
                    job_id = _text(entry.get("id")) or _text(entry.get("jobId"))
                    if job_id is not None:
                        running.append(
                            RunningJob(
                                provider_job_id=job_id,
                                account=account.name,
                                reply_ref=ref_of(entry.get("webhookUrl")),
                                started=_text(entry.get("createdAt")),
                            )
                        )
                if len(entries) < LISTING_PAGE:
                    break
        return ProviderCapacity(executing=tuple(running), max_jobs=await self._limits(session, account))

    async def list_assets(
        self,
        session: aiohttp.ClientSession,
        account: Account,
        *,
        page: int,
        limit: int,
        workflow: str | None = None,
    ) -> AssetPage:
        """Page ``page`` of the account's assets (``GET /assets``), newest first; vydra keeps them
        permanently, so no URL expires."""
        params: dict[str, Any] = {"limit": limit, "offset": (max(1, page) - 1) * limit}
        if workflow:
            params["workflow"] = workflow
        _, body = await self._call(session, account, "GET", f"assets?{urlencode(params)}", POLL_SHARE)
        entries = body.get("data") if isinstance(body, dict) else None
        entries = entries if isinstance(entries, list) else []
        assets = []
        for entry in entries:
            if not isinstance(entry, dict) or not _text(entry.get("url")) or not _text(entry.get("id")):
                continue
            thumbnail = _text(entry.get("thumbnailUrl"))
            kind = str(entry.get("type") or "")
            url = entry["url"]
            assets.append(
                ProviderAsset(
                    provider_asset_id=entry["id"],
                    url=url,
                    kind=ASSET_KINDS.get(kind, "other"),
                    provider_job_id=_text(entry.get("jobId")),
                    mime_type=artifact(url, None, None).get("asset", {}).get("mimeType"),
                    workflow=_text(entry.get("workflow")),
                    created_ms=_created_ms(entry.get("createdAt")),
                    thumbnails={"thumbnail": thumbnail} if thumbnail else {},
                )
            )
        return AssetPage(assets=tuple(assets), has_more=len(entries) >= limit)

    # -- requests and the request budget ---------------------------------------------------

    def _job_path(self, job: Job) -> str:
        return f"jobs/{quote(job.provider_job_id or '', safe='')}"

    async def _call(
        self,
        session: aiohttp.ClientSession,
        account: Account,
        method: str,
        path: str,
        share: float,
        *,
        json_body: Any = None,
        wait: bool = True,
    ) -> tuple[int, Any]:
        """One request, after taking a unit of the account's request budget. With ``wait`` it
        waits up to ``MAX_WAIT_S`` for one, then answers like vydra's 429; without, it raises
        ``BudgetExhausted`` at once (a poll is postponed instead). The plan limit every answer
        reports (``X-RateLimit-Limit``) is kept for every process's next take."""
        budget = budget_of(session)
        reported: list[int] = []
        if budget is not None:
            limit, learnt = self._request_limit(account)
            deadline = time.monotonic() + MAX_WAIT_S
            while (left := await budget.take(self.name, account.name, limit, share, learnt=learnt)) > 0:
                if not wait or time.monotonic() + left > deadline:
                    if not wait:
                        raise BudgetExhausted(self.name, account.name, left, limit.window_s)
                    raise ProviderError(
                        f"vydra account {account.name}: request budget used up for {left:.1f} s "
                        f"(the plan's requests per {limit.window_s:g} s)",
                        action=ProviderAction.RETRY,
                        status=429,
                        retry_after=left,
                    )
                await asyncio.sleep(left)
        url = f"{account.base_url}/api/v1/{path}"
        try:
            return await request_json(
                session,
                method,
                url,
                account=account,
                classify=classify,
                json_body=json_body,
                seen=lambda headers: _reported_limit(headers, reported),
            )
        finally:
            if budget is not None and reported and account.requests_per_minute is None:
                await budget.learn(self.name, account.name, reported[0])

    def _request_limit(self, account: Account) -> tuple[RequestLimit, bool]:
        """(the limit to take with, whether a limit vydra reported replaces it): the accounts
        file's when it sets one, else the Free plan's until vydra reports the account's own."""
        window = account.rate_window_seconds or FREE_PLAN_LIMIT.window_s
        if account.requests_per_minute is not None:
            return RequestLimit(account.requests_per_minute, window), False
        return RequestLimit(FREE_PLAN_LIMIT.requests, window), True

    async def _limits(self, session: aiohttp.ClientSession, account: Account) -> int | None:
        """The account's ``concurrent`` cap from ``GET /account/rate-limits`` (None when vydra did
        not say); its ``rpm`` is kept as the account's request limit. The read takes from the
        budget it reports on without waiting and with the full share, so it is never starved by
        the polls: when the window is full it is skipped, and the answers' headers report the
        limit meanwhile."""
        key = (account.base_url, account.name)
        try:
            _, body = await self._call(session, account, "GET", "account/rate-limits", FULL_SHARE, wait=False)
        except (ProviderError, BudgetExhausted):
            return self._max_jobs.get(key)
        limits = body.get("limits") if isinstance(body, dict) else None
        limits = limits if isinstance(limits, dict) else {}
        rpm, concurrent = _number(limits.get("rpm")), _number(limits.get("concurrent"))
        budget = budget_of(session)
        if budget is not None and rpm is not None and rpm >= 1 and account.requests_per_minute is None:
            await budget.learn(self.name, account.name, int(rpm))
        if concurrent is not None and concurrent >= 0:
            self._max_jobs[key] = int(concurrent)
        return self._max_jobs.get(key)


def _reported_limit(headers: Mapping[str, str], into: list[int]) -> None:
    value = headers.get("X-RateLimit-Limit", "")
    if value.isdigit() and int(value) >= 1:
        into.append(int(value))
