"""useapi.net services: submit with the account, ``maxJobs``, ``replyUrl`` and ``replyRef``, then
callbacks to ``replyUrl`` and/or status reads, ``DELETE scheduler/{id}`` to stop tracking, and
``scheduler/available`` as the capacity listing where the service has one.

useapi.net's services share their conventions (bearer token, ``{"error", "code"}`` errors,
``maxJobs`` per account, the scheduler) but name every field differently, so one adapter serves
them all and reads what differs from its service's entry in ``daemon/providers/useapi_services.py``
(the facts and their public sources: ``docs/useapi-services.md``).
"""

from __future__ import annotations

import asyncio
import math
import mimetypes
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp

from daemon import keys
from daemon.accounts_file import Account
from daemon.assets import asset_type
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
    retry_after_seconds,
)
from daemon.providers.useapi_services import (
    ACCOUNT_ERRORS,
    LTX_STUDIO,
    LTX_STUDIO_OPERATIONS,
    MODERATED,
    PENDING,
    SERVICES,
    STOP_ACCOUNT_STATUSES,
    UseapiService,
)
from daemon.request_budget import (
    FULL_SHARE,
    MAX_WAIT_S,
    USEAPI_BUDGET,
    budget_of,
    shared_budget_holder,
    useapi_budget_limit,
)

__all__ = ["LTX_STUDIO_OPERATIONS", "SERVICES", "UseapiProvider", "make_provider"]

CALLBACK_TYPES = frozenset({"active", "completed", "failed"})


# useapi's 429 says the account's jobs fill its maxJobs ("API query is full", "maxJobs reached", all
# accounts busy: the useapi errors table of docs/providers.md, docs/useapi-services.md); any other
# 429 is a rate limit.
_BUSY_429 = re.compile(r"maxJobs|query is full|busy", re.IGNORECASE)


def limit_of(status: int, message: str | None) -> Limit | None:
    """Which limit a useapi 429 reports (None for any other status)."""
    if status != 429:
        return None
    return Limit.CONCURRENCY if _BUSY_429.search(message or "") else Limit.RATE


def classify(status: int, body: Any, headers: Mapping[str, str]) -> None:
    """Raise the ``ProviderError`` for a useapi error answer (the statuses of useapi.net's endpoint
    pages, e.g. https://useapi.net/docs/api-ltxstudio-v1/post-ltxstudio-accounts)."""
    message = body.get("error") if isinstance(body, dict) else None
    text = f"useapi {status}: {message or 'no message'}"
    action = action_for_status(status, STOP_ACCOUNT_STATUSES)
    raise ProviderError(
        text,
        action=action,
        status=status,
        retry_after=retry_after_seconds(headers),
        limit=limit_of(status, message if isinstance(message, str) else None),
    )


def service_classifier(service: UseapiService) -> Any:
    """``classify`` for one service: its error table (docs/useapi-services.md "Errors")."""

    def classify_for(status: int, body: Any, headers: Mapping[str, str]) -> None:
        message = _error_text(service, body)
        text = f"{service.name} {status}: {message or 'no message'}"
        retry_after = retry_after_seconds(headers)
        if status in service.moderation_statuses or (
            status == 500
            and service.moderation_500 is not None
            and service.moderation_500.search(message or "")
        ):
            # Kling answers 500 for moderation as well as for its own faults: the text decides.
            raise ProviderError(
                f"{text} (moderated)", action=ProviderAction.GIVE_UP, status=status, error_type="moderated"
            )
        action = action_for_status(status, STOP_ACCOUNT_STATUSES)
        raise ProviderError(
            text,
            action=action,
            status=status,
            error_type=ACCOUNT_ERRORS.get(status),
            retry_after=retry_after,
            limit=limit_of(status, message),
        )

    return classify_for


def _error_text(service: UseapiService, body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    for name in service.error_fields:
        value = body.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def parse_status(body: Mapping[str, Any], *, confirm: bool = False) -> Update:
    """The useapi status model (``GET assets/{jobId}`` and the callback body) as an update;
    ``confirm`` marks it as a callback's hint (see ``lua/transition.lua``)."""
    raw_status = body.get("status")
    status: dict[str, Any] = raw_status if isinstance(raw_status, dict) else {}
    kind = status.get("type")
    progress = status.get("progress")
    # Clamped here: a provider's "1e308" must not become a 300-digit integer on its way to Redis.
    if isinstance(progress, int | float) and not isinstance(progress, bool) and math.isfinite(progress):
        progress = max(0, min(100, int(progress)))
    else:
        progress = None
    message = status.get("message") if isinstance(status.get("message"), str) else None
    provider_job_id = body.get("jobId") if isinstance(body.get("jobId"), str) else None
    if kind == "completed":
        artifact = _artifact(status.get("artifact"))
        return Update(
            State.COMPLETED,
            progress=100,
            message=message or "completed",
            artifact=artifact,
            provider_job_id=provider_job_id,
            confirm=confirm,
        )
    if kind == "failed":
        return Update(
            State.FAILED,
            message=f"failed: {message or 'no message'}",
            error_type="failed",
            provider_job_id=provider_job_id,
            confirm=confirm,
        )
    return Update(State.ACTIVE, progress=progress, message=message, provider_job_id=provider_job_id)


def _artifact(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict) or not isinstance(value.get("assetUrl"), str) or not value["assetUrl"]:
        return None
    raw_asset = value.get("asset")
    asset: dict[str, Any] = raw_asset if isinstance(raw_asset, dict) else {}
    mime = asset.get("mimeType") if isinstance(asset.get("mimeType"), str) else ""
    kind = mime.split("/")[0] if mime else "other"
    artifact: dict[str, Any] = {"assetUrl": value["assetUrl"], "kind": kind}
    if isinstance(value.get("expirationDateString"), str):
        artifact["expirationDateString"] = value["expirationDateString"]
    if asset:
        artifact["asset"] = {k: v for k, v in asset.items() if isinstance(v, str)}
    return artifact


def parse_service_status(service: UseapiService, body: Mapping[str, Any], *, confirm: bool = False) -> Update:
    """A flat useapi status model (Kling ``tasks/{id}``, MiniMax and PixVerse ``videos/{id}``,
    Runway ``tasks/{id}``; also their callback bodies) as an update."""
    state = _text(body.get(service.state_field))
    label = _text(body.get(service.label_field)) if service.label_field else None
    final = body.get(service.final_field) if service.final_field else None
    describe = label or state or "pending"
    if state in service.success and final is not False:
        return Update(
            State.COMPLETED,
            progress=100,
            message="completed",
            artifact=_service_artifact(service, body),
            confirm=confirm,
        )
    if state in service.not_final:
        terminal = False
    elif service.final_field is not None:
        terminal = final is True
    else:
        terminal = state in service.failure or state in service.moderated
    if terminal:
        error = _error_text(service, body)
        moderated = state in service.moderated
        return Update(
            State.FAILED,
            message=f"{describe}: {error or ('moderated' if moderated else 'no message')}",
            error_type="moderated" if moderated else "failed",
            confirm=confirm,
        )
    return Update(State.ACTIVE, progress=_progress(service, body), message=describe)


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | str):
        return str(value)
    return None


def _progress(service: UseapiService, body: Mapping[str, Any]) -> int | None:
    if service.progress_field is None:
        state = _text(body.get(service.state_field))
        return next((value for name, value in service.state_progress if name == state), None)
    value = body.get(service.progress_field)
    try:
        number = (
            float(value) if isinstance(value, int | float | str) and not isinstance(value, bool) else None
        )
    except ValueError:
        number = None
    if number is None or not math.isfinite(number):
        return None
    return max(0, min(99, int(100 * min(max(number, 0.0), service.progress_scale) / service.progress_scale)))


def _walk(body: Any, path: tuple[str | int, ...]) -> Any:
    for step in path:
        if isinstance(step, int):
            body = body[step] if isinstance(body, list) and len(body) > step else None
        else:
            body = body.get(step) if isinstance(body, dict) else None
    return body


def _service_artifact(service: UseapiService, body: Mapping[str, Any]) -> dict[str, Any] | None:
    for path in service.result_url_paths:
        url = _walk(body, path)
        if isinstance(url, str) and url:
            mime, _ = mimetypes.guess_type(urlsplit(url).path)
            return {"assetUrl": url, "kind": mime.split("/")[0] if mime else "other"}
    return None


def _id(value: Any) -> str | None:
    """An id as text: Kling's are numbers, the others strings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    return value if isinstance(value, str) and value else None


class UseapiProvider:
    """One useapi.net service without a capacity listing (Runway): slots are counted from the
    accounts file's ``max_jobs`` alone, and a submit whose answer was lost cannot be looked up."""

    webhooks = True
    lists_reply_refs = False

    def __init__(self, service: UseapiService) -> None:
        self.spec = service
        self.name = service.name
        self.service = service.name
        self.operations = service.operations
        self.classify = service_classifier(service) if service is not LTX_STUDIO else classify

    def _url(self, account: Account, path: str) -> str:
        return self.spec.url(account.base_url, path)

    def _job_path(self, template: str, job: Job) -> str:
        return template.replace("{id}", quote(job.provider_job_id or "", safe=""))

    async def _request(
        self, session: aiohttp.ClientSession, account: Account, method: str, path: str, body: Any = None
    ) -> Any:
        await take_budget(session, account)
        _, answer = await request_json(
            session, method, self._url(account, path), account=account, classify=self.classify, json_body=body
        )
        return answer

    async def submit(
        self, session: aiohttp.ClientSession, account: Account, job: Job, callback_url: str | None = None
    ) -> str:
        spec = self.spec
        body: dict[str, Any] = {**job.params, spec.account_field: account.name}
        if job.operation not in spec.no_reply_operations:
            limit = spec.max_jobs_limit
            body["maxJobs"] = min(account.max_jobs, limit) if limit else account.max_jobs
            # Our job id as replyRef, always: callbacks are routed by it, and the capacity sync
            # finds the job in the scheduler listing by it when the submit answer is lost.
            body["replyRef"] = job.id
            if callback_url:
                body["replyUrl"] = callback_url if spec is LTX_STUDIO else _with_ref(callback_url, job.id)
        try:
            answer = await self._request(session, account, "POST", job.operation, body)
        except ProviderError as exc:
            if exc.status in spec.uncertain_submit_statuses:
                # MiniMax answers 502/504 when its site is busy, and may have queued the job all
                # the same: never sent again before the listing says it was not.
                raise ProviderError(
                    f"{exc.message} (the job may have been accepted)",
                    action=ProviderAction.RETRY,
                    status=exc.status,
                    maybe_accepted=True,
                ) from exc
            raise
        for path in spec.create_id_paths:
            job_id = _id(_walk(answer, path))
            if job_id is not None:
                return job_id
        # It did accept it: found in the scheduler listing by replyRef, not submitted again.
        raise ProviderError(
            f"{spec.name} accepted the job but sent no id", action=ProviderAction.RETRY, maybe_accepted=True
        )

    async def status(self, session: aiohttp.ClientSession, account: Account, job: Job) -> Update:
        spec = self.spec
        path = self._job_path(spec.status_path, job)
        if spec.status_account_query:
            path += "?" + urlencode({spec.account_field: account.name})
        try:
            body = await self._request(session, account, "GET", path)
        except ProviderError as exc:
            if exc.action is ProviderAction.LOST:
                return self._not_found(job)
            raise
        if spec is LTX_STUDIO:
            return parse_status(body if isinstance(body, dict) else {})
        return parse_service_status(spec, body if isinstance(body, dict) else {})

    def _not_found(self, job: Job) -> Update:
        spec = self.spec
        if spec.http404 == PENDING:
            submitted = job.ms("submitted_ms") or job.ms("started_ms") or job.ms("created_ms")
            if submitted is None or time.time() * 1000 - submitted < spec.pending_404_s * 1000:
                return Update(
                    State.ACTIVE, message=f"{spec.name}: processing (its status read answers 404 until done)"
                )
            return lost(f"{spec.name} still answers 404 {spec.pending_404_s:g} s after the submit")
        if spec.http404 == MODERATED:
            return Update(
                State.FAILED,
                message=f"{spec.name} no longer has this job (404): most often moderated and removed",
                error_type="moderated",
            )
        if spec is LTX_STUDIO:
            return lost("useapi no longer knows this job (404 job not found or has expired)")
        return lost(f"{spec.name} no longer knows this job (404: deleted, moderated or out of credits)")

    async def cancel(self, session: aiohttp.ClientSession, account: Account, job: Job) -> str:
        """``DELETE scheduler/{id}``: useapi stops tracking the job and frees its slot, but the
        generation itself goes on at the site (docs/useapi-services.md "What a cancel does")."""
        try:
            await self._request(session, account, "DELETE", self._job_path("scheduler/{id}", job))
        except ProviderError as exc:
            if exc.action is ProviderAction.LOST:
                return "useapi was no longer running this job (404)"
            raise
        return (
            "useapi stopped tracking the job and freed its slot; the generation itself still runs "
            f"to its end at {self.service} (useapi cannot stop it)"
        )

    async def probe(self, session: aiohttp.ClientSession, account: Account) -> bool:
        """A read that costs no credits, taken from the token's request budget like every request:
        ``scheduler/available`` where the service has it (the capacity listing), else a status read
        of an id no job has (404: the token works). 401 / 402 / 412 / 596 say it does not
        (docs/useapi-services.md "Errors")."""
        spec = self.spec
        path = spec.listing_path or spec.status_path.replace("{id}", "genrelay-probe")
        if spec.listing_path is None and spec.status_account_query:
            path += "?" + urlencode({spec.account_field: account.name})
        try:
            await self._request(session, account, "GET", path)
        except ProviderError as exc:
            return probe_answer(exc)
        return True

    def parse_callback(self, body: Mapping[str, Any], *, confirm: bool = False) -> tuple[str | None, Update]:
        """(our job id from ``replyRef``, the update) from a callback body; ``InvalidRequest`` when
        the body is not the service's status model."""
        ref = body.get("replyRef")
        reply_ref = ref if isinstance(ref, str) and ref else None
        if self.spec is LTX_STUDIO:
            status = body.get("status")
            if not isinstance(status, dict) or status.get("type") not in CALLBACK_TYPES:
                raise InvalidRequest(f"'status.type' must be one of {', '.join(sorted(CALLBACK_TYPES))}")
            progress = status.get("progress")
            if progress is not None and (isinstance(progress, bool) or not isinstance(progress, int | float)):
                raise InvalidRequest("'status.progress' must be a number")
            if "jobId" in body and not isinstance(body["jobId"], str):
                raise InvalidRequest("'jobId' must be a string")
            return reply_ref, parse_status(body, confirm=confirm)
        if _text(body.get(self.spec.state_field)) is None:
            raise InvalidRequest(f"'{self.spec.state_field}' is missing: not a {self.name} status model")
        return reply_ref, parse_service_status(self.spec, body, confirm=confirm)


class UseapiListingProvider(UseapiProvider):
    """A service with ``scheduler/available`` (LTX Studio, Kling, MiniMax, PixVerse)."""

    # ``scheduler/available`` echoes the ``replyRef`` we send: a submit whose answer was lost is
    # found there (and adopted), and one that is absent was never accepted.
    lists_reply_refs = True

    async def capacity(self, session: aiohttp.ClientSession, account: Account) -> ProviderCapacity:
        """The jobs executing on ``account`` with their ``replyRef``, and its ``maxJobs`` as useapi
        counts it. Entries that name no account (MiniMax, PixVerse) are placed by the account the
        id embeds; ours whose id says nothing carry account "" and are placed by their job record
        (``workers/capacity.py``); anyone else's that cannot be placed are left out."""
        spec = self.spec
        assert spec.listing_path is not None
        body = await self._request(session, account, "GET", spec.listing_path)
        if not isinstance(body, dict):
            raise ProviderError(
                f"{spec.name} {spec.listing_path} answered no JSON object", action=ProviderAction.RETRY
            )
        running = [entry for entry in map(self._running, body.get("executing") or []) if entry is not None]
        max_jobs = None
        for entry in body.get("available") or []:
            if isinstance(entry, dict) and entry.get(spec.avail_account_field or "") == account.name:
                value = entry.get("maxJobs")
                if isinstance(value, int) and not isinstance(value, bool):
                    max_jobs = value
        mine = tuple(entry for entry in running if entry.account in (account.name, ""))
        return ProviderCapacity(executing=mine, max_jobs=max_jobs)

    def _running(self, entry: Any) -> RunningJob | None:
        spec = self.spec
        if not isinstance(entry, dict):
            return None
        field = next((name for name in spec.exec_id_fields if _id(entry.get(name)) is not None), None)
        if field is None:
            return None
        pid = _id(entry[field])
        assert pid is not None
        ref = entry.get("replyRef") if isinstance(entry.get("replyRef"), str) and entry["replyRef"] else None
        ours = ref is not None and keys.provider_of(ref) == self.name
        if field in spec.uncounted_id_fields and not ours:
            return None  # MiniMax: image generations take none of the video capacity
        named = entry.get(spec.exec_account_field) if spec.exec_account_field else None
        owner = named if isinstance(named, str) and named else None
        if owner is None and spec.id_account is not None and (match := spec.id_account.match(pid)):
            owner = match.group("account")
        if owner is None and not ours:
            return None
        started = entry.get("started")
        return RunningJob(
            provider_job_id=pid,
            account=owner or "",
            reply_ref=ref,
            started=started if isinstance(started, str) else None,
        )


class LtxStudioProvider(UseapiListingProvider):
    """LTX Studio: also an asset listing (``GET assets/``)."""

    async def list_assets(
        self,
        session: aiohttp.ClientSession,
        account: Account,
        *,
        page: int,
        limit: int,
        kind: str | None = None,
    ) -> AssetPage:
        """``GET assets/?email=&page=&limit=[&filter=]``: the account's finished artifacts, newest
        first (https://useapi.net/docs/api-ltxstudio-v1/get-ltxstudio-assets), of one ``kind``
        (images, videos, audio, other) when given; the signed URLs in it are fresh, so a listing
        also renews known assets' links."""
        params: dict[str, str | int] = {"email": account.name, "page": page, "limit": limit}
        if kind is not None:
            params["filter"] = kind
        body = await self._request(session, account, "GET", f"assets/?{urlencode(params)}")
        answer: dict[str, Any] = body if isinstance(body, dict) else {}
        items: list[Any] = answer["items"] if isinstance(answer.get("items"), list) else []
        assets = tuple(found for found in map(parse_asset_item, items) if found is not None)
        meta: dict[str, Any] = answer["meta"] if isinstance(answer.get("meta"), dict) else {}
        current, pages = meta.get("currentPage"), meta.get("totalPages")
        has_more = isinstance(current, int) and isinstance(pages, int) and current < pages
        return AssetPage(assets=assets, has_more=has_more)


def make_provider(service: UseapiService) -> UseapiProvider:
    """The adapter for one service entry."""
    if service is LTX_STUDIO:
        return LtxStudioProvider(service)
    return UseapiListingProvider(service) if service.listing_path else UseapiProvider(service)


def _with_ref(url: str, job_id: str) -> str:
    """The callback URL with our job id in its query too, for a callback body without replyRef."""
    return f"{url}{'&' if '?' in url else '?'}{urlencode({'ref': job_id})}"


async def take_budget(session: aiohttp.ClientSession, account: Account) -> None:
    """Accounts with ``requests_per_minute`` take a unit first from the budget of their useapi
    token: every account (of every service) under one token shares it."""
    budget, limit = budget_of(session), useapi_budget_limit(account)
    if budget is None or limit is None:
        return
    holder = shared_budget_holder(account)
    deadline = time.monotonic() + MAX_WAIT_S
    while (left := await budget.take(USEAPI_BUDGET, holder, limit, FULL_SHARE)) > 0:
        if time.monotonic() + left > deadline:
            raise ProviderError(
                f"useapi token of account {account.name}: request budget used up for {left:.1f} s",
                action=ProviderAction.RETRY,
                status=429,
                retry_after=left,
            )
        await asyncio.sleep(left)


def parse_asset_item(item: Any) -> ProviderAsset | None:
    """One ``items[]`` entry of the asset listing; None when it has no usable URL."""
    if not isinstance(item, dict):
        return None
    signed: dict[str, Any] = item["signedAsset"] if isinstance(item.get("signedAsset"), dict) else {}
    url = signed.get("assetUrl")
    if not isinstance(url, str) or not url:
        return None
    raw_asset = signed.get("asset")
    asset: dict[str, Any] = raw_asset if isinstance(raw_asset, dict) else {}
    mime = asset.get("mimeType") if isinstance(asset.get("mimeType"), str) else None
    file_id = asset.get("fileId") if isinstance(asset.get("fileId"), str) and asset["fileId"] else None
    item_id = item.get("id") if isinstance(item.get("id"), str) and item["id"] else None
    expiry = signed.get("expirationDateString")
    related: dict[str, Any] = item["relatedAssets"] if isinstance(item.get("relatedAssets"), dict) else {}
    raw_thumbnails = related.get("thumbnails")
    thumbnails = {
        str(name): entry["assetUrl"]
        for name, entry in (raw_thumbnails.items() if isinstance(raw_thumbnails, dict) else ())
        if isinstance(entry, dict) and isinstance(entry.get("assetUrl"), str) and entry["assetUrl"]
    }
    provider_asset_id = file_id or item_id or url.split("?")[0]
    job_id = item.get("jobId")
    return ProviderAsset(
        provider_asset_id=provider_asset_id,
        url=url,
        kind=asset_type(None, mime),
        provider_job_id=job_id if isinstance(job_id, str) and job_id else None,
        mime_type=mime,
        expires_ms=int(expiry) if isinstance(expiry, str) and expiry.isdigit() else None,
        thumbnails=thumbnails,
    )
