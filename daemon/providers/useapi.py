"""useapi.net services (LTX Studio first): submit with ``email``, ``replyUrl`` and ``replyRef``,
then a callback to ``replyUrl`` and/or status reads of ``GET assets/{jobId}``.

useapi.net's services share their conventions (bearer token, ``{"error", "code"}`` errors, the
status model, the scheduler), so one adapter serves them; the service path is a parameter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from daemon.accounts_file import Account
from daemon.assets import asset_type
from daemon.errors import InvalidRequest, ProviderAction, ProviderError
from daemon.jobs import Job, State, Update
from daemon.providers.base import (
    AssetPage,
    ProviderAsset,
    ProviderCapacity,
    RunningJob,
    action_for_status,
    lost,
    request_json,
    retry_after_seconds,
)

LTX_STUDIO_OPERATIONS = frozenset(
    {"videos/ltx-create", "videos/veo-create", "images/create", "images/edit", "images/upscale"}
)
# 401 bad token, 402 no subscription, 412 out of credits, 596 account on hold: the account, not the job.
STOP_ACCOUNT_STATUSES = frozenset({401, 402, 412, 596})
CALLBACK_TYPES = frozenset({"active", "completed", "failed"})


def classify(status: int, body: Any, headers: Mapping[str, str]) -> None:
    """Raise the ``ProviderError`` for a useapi error answer (providers.md §1.6)."""
    message = body.get("error") if isinstance(body, dict) else None
    text = f"useapi {status}: {message or 'no message'}"
    action = action_for_status(status, STOP_ACCOUNT_STATUSES)
    raise ProviderError(text, action=action, status=status, retry_after=retry_after_seconds(headers))


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


class UseapiProvider:
    """One useapi.net service, e.g. ``ltxstudio``."""

    webhooks = True
    # ``scheduler/available`` echoes the ``replyRef`` we send: a submit whose answer was lost is
    # found there (and adopted), and one that is absent was never accepted.
    lists_reply_refs = True

    def __init__(self, name: str, service: str, operations: frozenset[str]) -> None:
        self.name = name
        self.service = service
        self.operations = operations

    def _url(self, account: Account, path: str) -> str:
        return f"{account.base_url}/v1/{self.service}/{path}"

    async def submit(
        self, session: aiohttp.ClientSession, account: Account, job: Job, callback_url: str | None = None
    ) -> str:
        body: dict[str, Any] = {**job.params, "email": account.name, "maxJobs": account.max_jobs}
        # Our job id as replyRef, always: callbacks are routed by it, and the capacity sync finds
        # the job in the scheduler listing by it when the submit answer is lost.
        body["replyRef"] = job.id
        if callback_url:
            body["replyUrl"] = callback_url
        _, answer = await request_json(
            session,
            "POST",
            self._url(account, job.operation),
            account=account,
            classify=classify,
            json_body=body,
        )
        job_id = answer.get("jobId") if isinstance(answer, dict) else None
        if not isinstance(job_id, str) or not job_id:
            # It did accept it: found in the scheduler listing by replyRef, not submitted again.
            raise ProviderError(
                "useapi accepted the job but sent no jobId", action=ProviderAction.RETRY, maybe_accepted=True
            )
        return job_id

    async def status(self, session: aiohttp.ClientSession, account: Account, job: Job) -> Update:
        url = self._url(account, f"assets/{quote(job.provider_job_id or '', safe='')}")
        try:
            _, body = await request_json(session, "GET", url, account=account, classify=classify)
        except ProviderError as exc:
            if exc.action is ProviderAction.LOST:
                return lost("useapi no longer knows this job (404 job not found or has expired)")
            raise
        return parse_status(body if isinstance(body, dict) else {})

    async def cancel(self, session: aiohttp.ClientSession, account: Account, job: Job) -> str:
        """``DELETE scheduler/{jobId}``: useapi stops tracking the job and frees its slot, but the
        generation itself goes on at the site (providers.md §1.5)."""
        url = self._url(account, f"scheduler/{quote(job.provider_job_id or '', safe='')}")
        try:
            await request_json(session, "DELETE", url, account=account, classify=classify)
        except ProviderError as exc:
            if exc.action is ProviderAction.LOST:
                return "useapi was no longer running this job (404)"
            raise
        return (
            "useapi stopped tracking the job and freed its slot; the generation itself still runs "
            f"to its end at {self.service} (useapi cannot stop it)"
        )

    async def capacity(self, session: aiohttp.ClientSession, account: Account) -> ProviderCapacity:
        """``GET scheduler/available``: the jobs executing on ``account`` (by its email) with their
        ``replyRef``, and the account's ``maxJobs`` as useapi counts it (providers.md §1.5)."""
        _, body = await request_json(
            session, "GET", self._url(account, "scheduler/available"), account=account, classify=classify
        )
        if not isinstance(body, dict):
            raise ProviderError(
                "useapi scheduler/available answered no JSON object", action=ProviderAction.RETRY
            )
        running: list[RunningJob] = []
        for entry in body.get("executing") or []:
            if not isinstance(entry, dict) or entry.get("email") != account.name:
                continue
            job_id, ref, started = entry.get("jobId"), entry.get("replyRef"), entry.get("started")
            if isinstance(job_id, str) and job_id:
                running.append(
                    RunningJob(
                        provider_job_id=job_id,
                        account=account.name,
                        reply_ref=ref if isinstance(ref, str) and ref else None,
                        started=started if isinstance(started, str) else None,
                    )
                )
        max_jobs = None
        for entry in body.get("available") or []:
            if isinstance(entry, dict) and entry.get("email") == account.name:
                value = entry.get("maxJobs")
                if isinstance(value, int) and not isinstance(value, bool):
                    max_jobs = value
        return ProviderCapacity(executing=tuple(running), max_jobs=max_jobs)

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
        first (seed 000), of one ``kind`` (images, videos, audio, other) when given; the signed URLs
        in it are fresh, so a listing also renews known assets' links."""
        params: dict[str, str | int] = {"email": account.name, "page": page, "limit": limit}
        if kind is not None:
            params["filter"] = kind
        query = urlencode(params)
        _, body = await request_json(
            session, "GET", self._url(account, f"assets/?{query}"), account=account, classify=classify
        )
        answer: dict[str, Any] = body if isinstance(body, dict) else {}
        items: list[Any] = answer["items"] if isinstance(answer.get("items"), list) else []
        assets = tuple(found for found in map(parse_asset_item, items) if found is not None)
        meta: dict[str, Any] = answer["meta"] if isinstance(answer.get("meta"), dict) else {}
        current, pages = meta.get("currentPage"), meta.get("totalPages")
        has_more = isinstance(current, int) and isinstance(pages, int) and current < pages
        return AssetPage(assets=assets, has_more=has_more)

    def parse_callback(self, body: Mapping[str, Any], *, confirm: bool = False) -> tuple[str | None, Update]:
        """(our job id from ``replyRef``, the update) from a callback body; ``InvalidRequest`` when
        the body is not the status model."""
        ref = body.get("replyRef")
        status = body.get("status")
        if not isinstance(status, dict) or status.get("type") not in CALLBACK_TYPES:
            raise InvalidRequest(f"'status.type' must be one of {', '.join(sorted(CALLBACK_TYPES))}")
        progress = status.get("progress")
        if progress is not None and (isinstance(progress, bool) or not isinstance(progress, int | float)):
            raise InvalidRequest("'status.progress' must be a number")
        if "jobId" in body and not isinstance(body["jobId"], str):
            raise InvalidRequest("'jobId' must be a string")
        return (ref if isinstance(ref, str) and ref else None), parse_status(body, confirm=confirm)


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
