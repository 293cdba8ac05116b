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
import contextlib
import math
import re
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import aiohttp
import redis.asyncio as aioredis
import structlog

from daemon import keys
from daemon.accounts_file import Account
from daemon.errors import InvalidRequest, Limit, ProviderAction, ProviderError
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
    RequestBudget,
    RequestLimit,
    RequestLimits,
    budget_of,
)

log = structlog.get_logger("genrelay.vydra")

WORKFLOWS = frozenset(
    {"generate_video", "generate_image", "generate_asmr", "lipsync_video", "house-timelapse"}
)
WORKFLOW_SLUG = re.compile(r"[a-z0-9_-]+")
STOP_ACCOUNT_STATUSES = frozenset({401, 402, 403})
FAILED_STATUSES = frozenset({"failed", "error", "cancelled", "canceled"})
# The Free plan's limit, assumed until the account's own is known (https://www.vydra.ai/docs/rate-limits).
FREE_PLAN_LIMIT = RequestLimit(10, 60.0)
FREE_PLAN_REQUESTS = {"minute": 10, "hour": 100, "day": 500}
# The plans' requests per hour and per day, by their requests per minute (same page): Free, Starter,
# Creator.
PLAN_HOUR_DAY = {10: (100, 500), 30: (500, 5_000), 60: (1_500, 20_000)}
# An account's organisation is asked again after this when the question failed, and kept this long.
ORGANIZATION_RECHECK_S = 60.0
ORGANIZATION_TTL_S = 86_400
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
        limit=_limit(status, body),
    )


def _limit(status: int, body: Any) -> Limit | None:
    """Which limit a 429 reports: its body's ``limits.type`` (https://www.vydra.ai/docs/rate-limits)
    is ``minute``, ``hour`` or ``day`` for a request window, ``concurrent`` for the jobs running at
    once."""
    if status != 429:
        return None
    limits = body.get("limits") if isinstance(body, dict) else None
    kind = limits.get("type") if isinstance(limits, dict) else None
    return Limit.CONCURRENCY if kind == "concurrent" else Limit.RATE


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
        # Per process: (base URL, account) -> (whose budget it takes from, when to ask again for its
        # organisation: 0.0 when found).
        self._holders: dict[tuple[str, str], tuple[str, float]] = {}
        self._discovering: dict[tuple[str, str], asyncio.Lock] = {}

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
        """One request, after taking a unit of the request budget of the account's organisation
        (every window: minute, hour, day). With ``wait`` it waits up to ``MAX_WAIT_S`` for one,
        then answers like vydra's 429; without, it raises ``BudgetExhausted`` at once (a poll is
        postponed instead). The plan limit every answer reports (``X-RateLimit-Limit``) is kept for
        every process's next take."""
        budget = budget_of(session)
        reported: dict[str, int] = {}
        holder = account.name
        if budget is not None:
            holder = await self._holder(session, budget, account)
            await self._take(budget, account, holder, share, wait)
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
            if budget is not None and reported:
                await self._heard(budget, account, holder, reported)

    async def _heard(
        self, budget: RequestBudget, account: Account, holder: str, reported: Mapping[str, int]
    ) -> None:
        """What an answer's ``X-RateLimit-*`` headers say: the plan's minute limit (learnt unless
        the accounts file fixes it), and, once the minute is mostly used, vydra's own count of it,
        which corrects the budget when requests made elsewhere count too."""
        limit = reported.get("limit")
        if limit is None:
            return
        if account.requests_per_minute is None:
            await self._learn_minute(budget, holder, limit)
        remaining = reported.get("remaining")
        if remaining is not None and remaining <= limit // 4:
            minute = RequestLimit(limit, request_limits(account).minute.window_s)
            added = await budget.correct(self.name, holder, minute, limit - remaining)
            if added:
                log.info("vydra counts more requests than the budget did", account=account.name, added=added)

    async def _take(
        self, budget: RequestBudget, account: Account, holder: str, share: float, wait: bool
    ) -> None:
        limits = request_limits(account)
        deadline = time.monotonic() + MAX_WAIT_S
        while (left := await budget.take(self.name, holder, limits, share)) > 0:
            if not wait or time.monotonic() + left > deadline:
                if not wait:
                    raise BudgetExhausted(self.name, account.name, left, limits.minute.window_s)
                raise ProviderError(
                    f"vydra account {account.name}: request budget used up for {left:.1f} s "
                    "(the plan's requests per minute, hour or day)",
                    action=ProviderAction.RETRY,
                    status=429,
                    retry_after=left,
                )
            await asyncio.sleep(left)

    async def _learn_minute(self, budget: RequestBudget, holder: str, rpm: int) -> None:
        """The minute's limit from a header; the hour's and the day's of the plan with that
        minute (https://www.vydra.ai/docs/rate-limits) where nothing better is known: a plan
        change of the minute replaces them, the limits endpoint corrects them."""
        changed = await budget.learn(self.name, holder, {"minute": rpm})
        hour_day = PLAN_HOUR_DAY.get(rpm)
        if hour_day is not None:
            guessed = {"hour": hour_day[0], "day": hour_day[1]}
            await budget.learn(self.name, holder, guessed, keep=not changed)

    async def _holder(self, session: aiohttp.ClientSession, budget: RequestBudget, account: Account) -> str:
        """Whose budget the account's requests take from: its organisation's (vydra limits per
        organisation), from the accounts file or ``GET /organization``, else the account's own
        while that is unknown. Found once per process (``_discover``); failed, asked again after
        ORGANIZATION_RECHECK_S."""
        key = (account.base_url, account.name)
        known = self._holders.get(key)
        if known is not None and (known[1] == 0.0 or time.monotonic() < known[1]):
            return known[0]
        async with self._discovering.setdefault(key, asyncio.Lock()):
            known = self._holders.get(key)
            if known is not None and (known[1] == 0.0 or time.monotonic() < known[1]):
                return known[0]
            holder, found = await self._discover(session, budget, account)
            self._holders[key] = (holder, 0.0 if found else time.monotonic() + ORGANIZATION_RECHECK_S)
            return holder

    async def _discover(
        self, session: aiohttp.ClientSession, budget: RequestBudget, account: Account
    ) -> tuple[str, bool]:
        """(the holder, whether it is the organisation's). Before the account's first request in
        this process: its organisation (kept in Redis for every process), then, unless the accounts
        file fixes them or another process learnt them, the plan's limits, so that no request goes
        out on a guess."""
        organization = account.organization or await budget.client.get(
            keys.organization_key(self.name, account.name)
        )
        if not organization:
            reported: dict[str, int] = {}
            try:
                await self._take(budget, account, account.name, FULL_SHARE, wait=False)
                url = f"{account.base_url}/api/v1/organization"
                _, body = await request_json(
                    session,
                    "GET",
                    url,
                    account=account,
                    classify=classify,
                    seen=lambda headers: _reported_limit(headers, reported),
                )
            except ProviderError:
                return account.name, False
            organization = _text(body.get("id")) if isinstance(body, dict) else None
            if not organization:
                return account.name, False
            organization_key = keys.organization_key(self.name, account.name)
            await budget.client.set(organization_key, organization, ex=ORGANIZATION_TTL_S)
            # That request counts at vydra in the organisation's windows: in its budget too.
            holder = organization_holder(organization)
            await budget.take(self.name, holder, request_limits(account), FULL_SHARE)
            await self._heard(budget, account, holder, reported)
        holder = organization_holder(str(organization))
        if account.requests_per_minute is None and "complete" not in await budget.learnt(self.name, holder):
            with contextlib.suppress(ProviderError):
                # The full share: the polls never starve the read that finds the plan.
                await self._read_limits(session, budget, account, holder, share=FULL_SHARE, wait=True)
        return holder, True

    async def _read_limits(
        self,
        session: aiohttp.ClientSession,
        budget: RequestBudget,
        account: Account,
        holder: str,
        *,
        share: float,
        wait: bool = False,
    ) -> Any:
        """``GET /account/rate-limits``; its ``rpm``, ``rph`` and ``rpd`` are kept as the holder's
        limits. The read takes ``share`` of the budget it reports on; without ``wait``,
        ``BudgetExhausted`` when that share of a window is used now."""
        await self._take(budget, account, holder, share, wait=wait)
        url = f"{account.base_url}/api/v1/account/rate-limits"
        _, body = await request_json(session, "GET", url, account=account, classify=classify)
        limits = body.get("limits") if isinstance(body, dict) else None
        limits = limits if isinstance(limits, dict) else {}
        if account.requests_per_minute is None:
            reported = {
                window: int(value)
                for window, field_name in (("minute", "rpm"), ("hour", "rph"), ("day", "rpd"))
                if (value := _number(limits.get(field_name))) is not None and value >= 1
            }
            await budget.learn(self.name, holder, reported, complete=True)
        # vydra's own count of each window: what was spent elsewhere takes from the budget too.
        usage = body.get("usage") if isinstance(body, dict) else None
        windows = dict(request_limits(account).windows)
        for window, counted in (usage if isinstance(usage, dict) else {}).items():
            used = _number(counted.get("used")) if isinstance(counted, dict) else None
            if window in windows and used is not None and used >= 1:
                await budget.correct(self.name, holder, windows[window], int(used), window)
        return limits

    async def _limits(self, session: aiohttp.ClientSession, account: Account) -> int | None:
        """The account's ``concurrent`` cap from ``GET /account/rate-limits`` (None when vydra did
        not say), read at each capacity sync with the polls' share of the budget: skipped when
        that is used now, so submits of waiting jobs come first (the answers' headers report the
        minute's limit meanwhile)."""
        key = (account.base_url, account.name)
        budget = budget_of(session)
        try:
            if budget is None:
                _, body = await self._call(session, account, "GET", "account/rate-limits", FULL_SHARE)
                limits = body.get("limits") if isinstance(body, dict) else None
            else:
                holder = await self._holder(session, budget, account)
                limits = await self._read_limits(session, budget, account, holder, share=POLL_SHARE)
        except ProviderError:
            return self._max_jobs.get(key)
        concurrent = _number(limits.get("concurrent")) if isinstance(limits, dict) else None
        if concurrent is not None and concurrent >= 0:
            self._max_jobs[key] = int(concurrent)
        return self._max_jobs.get(key)


def request_limits(account: Account) -> RequestLimits:
    """The accounts file's limits when it sets them, else the Free plan's until vydra reports the
    account's own."""
    minute_s = account.rate_window_seconds or FREE_PLAN_LIMIT.window_s
    if account.requests_per_minute is not None:
        fixed = {"minute": account.requests_per_minute}
        if account.requests_per_hour is not None:
            fixed["hour"] = account.requests_per_hour
        if account.requests_per_day is not None:
            fixed["day"] = account.requests_per_day
        return RequestLimits.scaled(fixed, minute_s, learnt=False)
    return RequestLimits.scaled(FREE_PLAN_REQUESTS, minute_s, learnt=True)


async def known_holder(client: aioredis.Redis, account: Account) -> str:
    """Whose budget the account takes from, as far as Redis knows (no request made)."""
    organization = account.organization or await client.get(keys.organization_key("vydra", account.name))
    return organization_holder(str(organization)) if organization else account.name


def organization_holder(organization: str) -> str:
    """The budget holder of a vydra organisation (its accounts take from it)."""
    return f"org:{organization}"


def _reported_limit(headers: Mapping[str, str], into: dict[str, int]) -> None:
    """The minute's ``X-RateLimit-Limit`` and ``-Remaining`` (https://www.vydra.ai/docs/rate-limits)."""
    limit, remaining = headers.get("X-RateLimit-Limit", ""), headers.get("X-RateLimit-Remaining", "")
    if limit.isdigit() and int(limit) >= 1:
        into["limit"] = int(limit)
        if remaining.isdigit():
            into["remaining"] = int(remaining)
