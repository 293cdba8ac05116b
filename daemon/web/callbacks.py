"""``POST /callbacks/{provider}/{token}``: the providers' webhooks.

Checked in the order that costs an attacker the most and us the least: the provider, the size
(from Content-Length, before reading), the capability token (HMAC, constant-time), the content
type; only then is the body read and parsed. A callback is a hint (``callback_confirm``): a
terminal state in it makes the job's next status read due now instead of ending the job, and the
provider's own answer decides. Everything a callback changes happens in one script call.
"""

from __future__ import annotations

import hashlib
import time

import structlog
from aiohttp import web

from daemon.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge, RequestError
from daemon.input_limits import artifact_url_problem, check_json
from daemon.metrics import METRICS
from daemon.providers import webhook_provider
from daemon.web.api import SERVICES, read_json_with_bytes
from daemon.web.errors import json_response

log = structlog.get_logger("genrelay.callbacks")

routes = web.RouteTableDef()

# One message for every token problem, so the answer is no oracle for which part was wrong.
BAD_TOKEN = "unknown callback URL: the token is not valid for this provider"
# Providers repeat callbacks. A byte-identical repeat of one this process applied in the last
# REPEAT_WINDOW_S seconds changes nothing (the job already moved, or did not), so it is answered
# without Redis. Entries are added only after the script ran, so nothing is skipped on a failure.
REPEAT_WINDOW_S = 30.0
REPEAT_CACHE_SIZE = 50_000
_recent: dict[bytes, float] = {}
# Outcomes of the transition script that refuse a callback (see lua/transition.lua): 409, no change.
REFUSED = {
    "conflict": "the callback names another provider job than the one this job was submitted as",
    "not_submitted": "the job was never submitted to the provider: a callback for it changes nothing",
}


def _seen_recently(fingerprint: bytes, now: float) -> bool:
    expiry = _recent.get(fingerprint)
    return expiry is not None and expiry > now


def _remember(fingerprint: bytes, now: float) -> None:
    if len(_recent) >= REPEAT_CACHE_SIZE:
        del _recent[next(iter(_recent))]
    _recent[fingerprint] = now + REPEAT_WINDOW_S


@routes.post("/callbacks/{provider}/{token}")
async def receive_callback(request: web.Request) -> web.Response:
    """Count each callback by provider and outcome (an unknown provider counts as 'unknown': the
    label must not take any value a caller writes into the URL)."""
    provider = request.match_info["provider"]
    known = webhook_provider(provider) is not None and provider in request.app[SERVICES].slots.scopes
    try:
        outcome, response = await _receive(request, provider)
    except (RequestError, web.HTTPException):
        METRICS.count_callback(provider if known else "unknown", "rejected")
        raise
    METRICS.count_callback(provider, outcome)
    return response


async def _receive(request: web.Request, provider: str) -> tuple[str, web.Response]:
    services = request.app[SERVICES]
    adapter = webhook_provider(provider)
    if adapter is None or provider not in services.slots.scopes:
        raise NotFound(f"unknown provider {provider!r} in the callback URL")
    if request.content_length is not None and request.content_length > request.client_max_size:
        raise PayloadTooLarge(f"callback body is larger than {request.client_max_size} bytes")
    job_id = services.callback_tokens().verify(provider, request.match_info["token"])
    if job_id is None:
        raise NotFound(BAD_TOKEN)
    raw, body = await read_json_with_bytes(request)
    fingerprint = hashlib.blake2b(request.match_info["token"].encode() + b"\0" + raw, digest_size=16).digest()
    now = time.monotonic()
    if _seen_recently(fingerprint, now):
        return "duplicate", json_response({"received": True, "outcome": "duplicate"})
    if not isinstance(body, dict):
        raise InvalidRequest("the callback body must be a JSON object")
    check_json(body, "the callback body")
    reply_ref, update = adapter.parse_callback(body, confirm=services.settings.callback_confirm)
    problem = artifact_url_problem(update.artifact) if update.artifact is not None else None
    if problem is not None:
        raise InvalidRequest(f"the callback cannot be used: {problem}")
    if reply_ref is None:
        # Providers whose body carries no reference of ours (vydra) get it in the URL's query.
        reply_ref = request.query.get("ref") or None
    if reply_ref is None:
        raise InvalidRequest(
            "the callback names no job: neither 'replyRef' in the body nor 'ref' in the URL's query"
        )
    if reply_ref != job_id:
        raise NotFound(BAD_TOKEN)
    poll_ms = int(services.settings.poll_interval * 1000)
    outcome = await services.store.apply(job_id, update, source="callback", poll_in_ms=poll_ms)
    if outcome in REFUSED:
        # Nothing was written; a repeat gets the same answer (not remembered as a duplicate).
        log.warning(
            "callback refused",
            job_id=job_id,
            provider=provider,
            outcome=outcome,
            callback_provider_job_id=update.provider_job_id,
        )
        raise Conflict(REFUSED[outcome])
    _remember(fingerprint, now)
    log.info("callback", job_id=job_id, provider=provider, state=update.state.value, outcome=outcome)
    # After the job's retention its record is gone: a late callback is a 2xx no-op, so the
    # provider stops retrying, and nothing is recreated.
    return outcome, json_response({"received": True, "outcome": "gone" if outcome == "missing" else outcome})
