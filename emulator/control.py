from __future__ import annotations

import collections
from typing import Any

import orjson
from aiohttp import web

from emulator.config import check_vydra_account
from emulator.faults import parse_fault
from emulator.ltx_state import STATE_KEY
from emulator.ltxstudio_state import STUDIO_KEY
from emulator.responses import ApiError, json_response
from emulator.useapi_services_state import SERVICES_KEY
from emulator.vydra_state import VYDRA_KEY

PREFIX = "/_emulator"

# Requests each provider's API received since the emulator started (``provider_requests`` in the
# stats, counted by emulator/app.py): what a client costs a provider, whatever the answer.
REQUESTS_KEY: web.AppKey[collections.Counter[str]] = web.AppKey("provider_requests", collections.Counter)


def routes() -> list[web.RouteDef]:
    return [
        web.get(f"{PREFIX}/stats", stats),
        web.get(f"{PREFIX}/config", get_config),
        web.post(f"{PREFIX}/config", update_config),
        web.post(f"{PREFIX}/keys", register_key),
        web.post(f"{PREFIX}/ltx-foreign-jobs", start_foreign_job),
        web.delete(f"{PREFIX}/ltx-foreign-jobs/{{job_id}}", end_foreign_job),
        web.get(f"{PREFIX}/revoked-keys", list_revoked_keys),
        web.post(f"{PREFIX}/revoked-keys", revoke_key),
        web.get(f"{PREFIX}/faults", list_faults),
        web.post(f"{PREFIX}/faults", add_fault),
        web.post(f"{PREFIX}/reset", reset),
        web.get(f"{PREFIX}/jobs", list_jobs),
        web.post(f"{PREFIX}/useapi-accounts", register_useapi_account),
        web.post(f"{PREFIX}/vydra-accounts", register_vydra_account),
        web.post(f"{PREFIX}/webhooks/flush", flush_webhooks),
    ]


async def stats(request: web.Request) -> web.Response:
    app = request.app
    stats = app[STATE_KEY].stats() | app[STUDIO_KEY].stats() | app[SERVICES_KEY].stats()
    requests: collections.Counter[str] = app[REQUESTS_KEY]
    return json_response(stats | app[VYDRA_KEY].stats() | {"provider_requests": dict(requests)})


async def get_config(request: web.Request) -> web.Response:
    return json_response(request.app[STATE_KEY].config.to_json())


async def update_config(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    body = await read_object(request)
    try:
        state.config = state.config.with_knobs(body)
    except (TypeError, ValueError) as exc:
        raise ApiError(400, str(exc)) from None
    return json_response(state.config.to_json())


async def register_key(request: web.Request) -> web.Response:
    body = await read_object(request)
    key, max_jobs = body.get("key"), body.get("max_jobs")
    if not isinstance(key, str) or not key:
        raise ApiError(400, "key must be a non-empty string")
    if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 0:
        raise ApiError(400, "max_jobs must be an integer >= 0")
    request.app[STATE_KEY].register_key(key, max_jobs)
    return json_response({"key": key, "max_jobs": max_jobs})


async def start_foreign_job(request: web.Request) -> web.Response:
    """Start a job on an LTX key from outside the emulated client ``{key, seconds?}``: it holds one
    of the key's slots for ``seconds`` (omitted: until ``DELETE .../ltx-foreign-jobs/{id}``)."""
    body = await read_object(request)
    key, seconds = body.get("key"), body.get("seconds")
    state = request.app[STATE_KEY]
    if not isinstance(key, str) or state.account(key) is None:
        raise ApiError(400, "key must name a known LTX key")
    valid = isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds > 0
    if seconds is not None and not valid:
        raise ApiError(400, "seconds must be a number > 0")
    job_id = state.start_foreign(key, float(seconds) if seconds is not None else None)
    return json_response({"id": job_id, "key": key, "seconds": seconds})


async def end_foreign_job(request: web.Request) -> web.Response:
    """End a foreign job now: its slot frees."""
    job_id = request.match_info["job_id"]
    if not request.app[STATE_KEY].end_foreign(job_id):
        raise ApiError(404, f"no foreign job {job_id}")
    return json_response({"id": job_id, "ended": True})


async def list_revoked_keys(request: web.Request) -> web.Response:
    return json_response({"revoked": sorted(request.app[STATE_KEY].revoked)})


async def revoke_key(request: web.Request) -> web.Response:
    """``{key, revoked?}``: revoke a key or token of any provider (an LTX key, a useapi.net token, a
    vydra key), so every request made with it is answered 401 as the provider answers an invalid
    key; ``revoked: false`` makes it valid again. Jobs and accounts behind it are kept."""
    body = await read_object(request)
    key, revoked = body.get("key"), body.get("revoked", True)
    if not isinstance(key, str) or not key:
        raise ApiError(400, "key must be a non-empty string")
    if not isinstance(revoked, bool):
        raise ApiError(400, "revoked must be true or false")
    keys = request.app[STATE_KEY].revoked
    if revoked:
        keys.add(key)
    else:
        keys.discard(key)
    return json_response({"revoked": sorted(keys)})


async def register_useapi_account(request: web.Request) -> web.Response:
    """Add a useapi.net account ``{token, email, maxJobs, service?}`` (LTX Studio unless
    ``service`` names kling, minimax, pixverse or runwayml), or change its maxJobs."""
    body = await read_object(request)
    token, email, max_jobs = body.get("token"), body.get("email"), body.get("maxJobs")
    service = body.get("service", "ltxstudio")
    if service not in ("ltxstudio", "kling", "minimax", "pixverse", "runwayml"):
        raise ApiError(400, "service must be ltxstudio, kling, minimax, pixverse or runwayml")
    if not isinstance(token, str) or not token:
        raise ApiError(400, "token must be a non-empty string")
    if not isinstance(email, str) or not email:
        raise ApiError(400, "email must be a non-empty string")
    if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 0:
        raise ApiError(400, "maxJobs must be an integer >= 0")
    try:
        if service == "ltxstudio":
            request.app[STUDIO_KEY].register(token, email, max_jobs)
        else:
            request.app[SERVICES_KEY].register(service, token, email, max_jobs)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    return json_response({"token": token, "email": email, "maxJobs": max_jobs})


async def register_vydra_account(request: web.Request) -> web.Response:
    """Add a vydra account ``{key, plan?, rpm?, rph?, rpd?, concurrent?, credits?, organization?}``,
    or change it."""
    body = await read_object(request)
    key = body.pop("key", None)
    if not isinstance(key, str) or not key:
        raise ApiError(400, "key must be a non-empty string")
    try:
        check_vydra_account(key, body)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    account = request.app[VYDRA_KEY].register(key, body)
    return json_response({"key": key, **account.to_json(request.app[VYDRA_KEY].now())})


async def flush_webhooks(request: web.Request) -> web.Response:
    """Send the callbacks due by the emulator clock now (both contracts) and wait for them, so a
    test that moved a fake clock can assert what was (not) sent without waiting for the sender."""
    senders = [request.app[key].webhooks for key in (STUDIO_KEY, SERVICES_KEY, VYDRA_KEY)]
    due = sum([await sender.flush() for sender in senders])
    return json_response({"due": due, "pending": sum(sender.pending() for sender in senders)})


async def list_faults(request: web.Request) -> web.Response:
    faults = request.app[STATE_KEY].faults
    return json_response({"faults": faults.to_json(), "injected_remaining": faults.remaining()})


async def add_fault(request: web.Request) -> web.Response:
    faults = request.app[STATE_KEY].faults
    try:
        fault = parse_fault(await read_object(request))
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    faults.add(fault)
    return json_response({"fault": fault.to_json(), "injected_remaining": faults.remaining()})


async def reset(request: web.Request) -> web.Response:
    request.app[STATE_KEY].reset()
    request.app[STUDIO_KEY].reset()
    request.app[SERVICES_KEY].reset()
    request.app[VYDRA_KEY].reset()
    return json_response({"reset": True})


async def list_jobs(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    only_key = request.query.get("key") or None
    now, retention = state.clock(), state.config.retention_seconds
    listed = [
        {
            "id": job.id,
            "endpoint": job.endpoint,
            "key": job.key,
            "status": job.status_at(now),
            "executing": job.executing_at(now),
            "created_at": job.created_at,
            "prompt": job.prompt,
        }
        for job in state.jobs.values()
        if (only_key is None or job.key == only_key) and now < job.end + retention
    ]
    return json_response({"jobs": listed})


async def read_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"Malformed JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")
    return body
