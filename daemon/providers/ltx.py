"""LTX Video API v2 (Lightricks): submit, then poll until ``completed`` or ``failed``.

The API has no webhook, so every job is polled. Status and result URLs are kept 24 h after the
terminal state; after that the status read answers 404 and the job is lost.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

from daemon.accounts_file import Account
from daemon.errors import Limit, ProviderAction, ProviderError
from daemon.jobs import Job, State, Update
from daemon.providers.base import action_for_status, lost, probe_answer, request_json, retry_after_seconds

# Endpoint -> the key of its result URL.
RESULT_KEYS = {
    "text-to-video": "video_url",
    "image-to-video": "video_url",
    "audio-to-video": "video_url",
    "retake": "video_url",
    "extend": "video_url",
    "video-to-video-reframe": "video_url",
    "video-to-video-hdr": "exr_frames_url",
}
RESULT_RETENTION_MS = 24 * 3600 * 1000
STOP_ACCOUNT_STATUSES = frozenset({401, 402, 403})
# A 429's error.type says which limit was hit (https://docs.ltx.video/rate-limits).
LIMITS = {"concurrency_limit_error": Limit.CONCURRENCY, "rate_limit_error": Limit.RATE}
# The id a probe reads: no job has it, so a working key gets a 404.
PROBE_JOB_ID = "genrelay-probe-00000000000000000000000000000000"
# LTX reports no percentage: a processing job is shown half way.
PROCESSING_PROGRESS = 50


def classify(status: int, body: Any, headers: Mapping[str, str]) -> None:
    """Raise the ``ProviderError`` that says what to do with this error answer (https://docs.ltx.video/errors)."""
    error = body.get("error") if isinstance(body, dict) else None
    error_type = error.get("type") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    text = f"LTX {status} {error_type or 'error'}: {message or 'no message'}"
    action = action_for_status(status, STOP_ACCOUNT_STATUSES)
    limit = (LIMITS.get(error_type) if isinstance(error_type, str) else None) or Limit.RATE
    raise ProviderError(
        text,
        action=action,
        status=status,
        error_type=error_type,
        retry_after=retry_after_seconds(headers),
        limit=limit if status == 429 else None,
    )


class LtxProvider:
    """The ``ltx`` provider."""

    name = "ltx"
    webhooks = False
    operations = frozenset(RESULT_KEYS)

    async def submit(
        self, session: aiohttp.ClientSession, account: Account, job: Job, callback_url: str | None = None
    ) -> str:
        url = f"{account.base_url}/v2/{job.operation}"
        _, body = await request_json(
            session, "POST", url, account=account, classify=classify, json_body=job.params
        )
        job_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(job_id, str) or not job_id:
            raise ProviderError("LTX accepted the job but sent no id", action=ProviderAction.RETRY)
        return job_id

    async def status(self, session: aiohttp.ClientSession, account: Account, job: Job) -> Update:
        url = f"{account.base_url}/v2/{job.operation}/{quote(job.provider_job_id or '', safe='')}"
        try:
            _, body = await request_json(session, "GET", url, account=account, classify=classify)
        except ProviderError as exc:
            if exc.action is ProviderAction.LOST:
                return lost(
                    "LTX no longer knows this job (404): its result expired after the 24 h "
                    "retention, or it never existed"
                )
            raise
        return parse_status(job.operation, body if isinstance(body, dict) else {})

    async def cancel(self, session: aiohttp.ClientSession, account: Account, job: Job) -> str:
        return NO_CANCEL

    async def probe(self, session: aiohttp.ClientSession, account: Account) -> bool:
        """A status read of an id no job has (costs no credits): 404 means the key works, 401 /
        402 / 403 that it does not (https://docs.ltx.video/errors)."""
        url = f"{account.base_url}/v2/text-to-video/{PROBE_JOB_ID}"
        try:
            await request_json(session, "GET", url, account=account, classify=classify)
        except ProviderError as exc:
            return probe_answer(exc)
        return True


NO_CANCEL = (
    "the LTX Video API has no cancel: the generation runs to its end at LTX (and is billed); "
    "genrelay stopped following it"
)


def parse_status(operation: str, body: dict[str, Any]) -> Update:
    status = body.get("status")
    if status == "completed":
        url = (body.get("result") or {}).get(RESULT_KEYS.get(operation, "video_url"))
        artifact = None
        if isinstance(url, str) and url:
            kind = "exr_frames" if operation == "video-to-video-hdr" else "video"
            expires = int(time.time() * 1000) + RESULT_RETENTION_MS
            artifact = {"assetUrl": url, "kind": kind, "expirationDateString": str(expires)}
        return Update(State.COMPLETED, progress=100, message="completed", artifact=artifact)
    if status == "failed":
        error = body.get("error") or {}
        error_type = error.get("type") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else str(error)
        return Update(State.FAILED, message=f"{error_type or 'failed'}: {message}", error_type=error_type)
    if status == "processing":
        return Update(State.ACTIVE, progress=PROCESSING_PROGRESS, message="processing")
    return Update(State.ACTIVE, progress=0, message=str(status or "pending"))
