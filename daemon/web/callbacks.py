"""``POST /callbacks/{provider}/{token}``: the providers' webhooks.

Checked in the order that costs an attacker the most and us the least: the provider, the size
(from Content-Length, before reading), the capability token (HMAC, constant-time), the content
type; only then is the body read and parsed. A callback is a hint (``callback_confirm``): a
terminal state in it makes the job's next status read due now instead of ending the job, and the
provider's own answer decides. Everything a callback changes happens in one script call.
"""

from __future__ import annotations

import dataclasses

import structlog
from aiohttp import web

from daemon.errors import InvalidRequest, NotFound, PayloadTooLarge
from daemon.providers import webhook_provider
from daemon.web.api import SERVICES, read_json
from daemon.web.errors import json_response

log = structlog.get_logger("genrelay.callbacks")

routes = web.RouteTableDef()

# One message for every token problem, so the answer is no oracle for which part was wrong.
BAD_TOKEN = "unknown callback URL: the token is not valid for this provider"


@routes.post("/callbacks/{provider}/{token}")
async def receive_callback(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    provider = request.match_info["provider"]
    adapter = webhook_provider(provider)
    if adapter is None or provider not in services.settings.providers():
        raise NotFound(f"unknown provider {provider!r} in the callback URL")
    if request.content_length is not None and request.content_length > request.client_max_size:
        raise PayloadTooLarge(f"callback body is larger than {request.client_max_size} bytes")
    job_id = services.callback_tokens().verify(provider, request.match_info["token"])
    if job_id is None:
        raise NotFound(BAD_TOKEN)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidRequest("the callback body must be a JSON object")
    reply_ref, update = adapter.parse_callback(body)
    if reply_ref is None:
        raise InvalidRequest("'replyRef' is missing: genrelay finds the job by it")
    if reply_ref != job_id:
        raise NotFound(BAD_TOKEN)
    update = dataclasses.replace(update, confirm=services.settings.callback_confirm)
    poll_ms = int(services.settings.poll_interval * 1000)
    outcome = await services.store.apply(job_id, update, source="callback", poll_in_ms=poll_ms)
    log.info("callback", job_id=job_id, provider=provider, state=update.state.value, outcome=outcome)
    # After the job's retention its record is gone: a late callback is a 2xx no-op, so the
    # provider stops retrying, and nothing is recreated.
    return json_response({"received": True, "outcome": "gone" if outcome == "missing" else outcome})
