"""Routes of the Kling, MiniMax, PixVerse and Runway contracts (``emulator/useapi_contracts.py``):
the create endpoints, the status read, ``GET scheduler``, ``GET scheduler/available`` (not for
Runway) and ``DELETE scheduler/{id}``. Errors leave as ``{"error", "code"}`` (the app's middleware
renders them), save Kling's documented ``DELETE`` 404, which has no ``code``.

Create bodies ([I] where the pages are silent): ``prompt``, ``replyUrl``, ``replyRef`` and the
account field must be strings; ``replyUrl`` / ``replyRef`` at most 1024 characters; ``maxJobs`` an
integer in the service's range (it overrides the account's cap for that request). An account
field naming no account is 404; omitted, Kling requires it when the token has several accounts
(400), the others pick an account with room at random. A prompt with ``[moderated]`` is refused
as each service refuses moderation (Kling 500 with a moderation text, the others 422).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from emulator.ltxstudio import read_body
from emulator.responses import ApiError, json_response
from emulator.useapi_contracts import CONTRACTS, Contract
from emulator.useapi_services_state import SERVICES_KEY, ServiceAccount, ServicesState

REPLY_LIMIT = 1024
PREFIXES = tuple(contract.prefix for contract in CONTRACTS.values())


def routes() -> list[web.RouteDef]:
    found: list[web.RouteDef] = []
    for contract in CONTRACTS.values():
        prefix = contract.prefix
        found += [web.post(f"{prefix}/{path}", _bind(create, contract)) for path in contract.creates]
        status_paths = {
            "kling": ["tasks"],
            "minimax": ["videos", "images"],
            "pixverse": ["videos"],
            "runwayml": ["tasks"],
        }[contract.service]
        found += [web.get(f"{prefix}/{path}/{{job_id:.+}}", _bind(status, contract)) for path in status_paths]
        found += [
            web.get(f"{prefix}/scheduler", _bind(scheduler, contract)),
            web.get(f"{prefix}/scheduler/", _bind(scheduler, contract)),
            web.delete(f"{prefix}/scheduler/{{job_id:.+}}", _bind(stop_tracking, contract)),
        ]
        if contract.available_field is not None:
            found.append(web.get(f"{prefix}/scheduler/available", _bind(available, contract)))
    return found


def _bind(handler: Any, contract: Contract) -> Any:
    async def bound(request: web.Request) -> web.StreamResponse:
        return await handler(request, contract)  # type: ignore[no-any-return]

    return bound


async def create(request: web.Request, contract: Contract) -> web.Response:
    state = request.app[SERVICES_KEY]
    token = authenticate(request, state)
    kind = contract.creates[request.path.removeprefix(f"{contract.prefix}/")]
    body = await read_body(request)
    prompt = _string(body, "prompt") or ""
    reply_url, reply_ref = _string(body, "replyUrl"), _string(body, "replyRef")
    for name, value in (("replyUrl", reply_url), ("replyRef", reply_ref)):
        if value is not None and len(value) > REPLY_LIMIT:
            raise ApiError(400, f"Parameter {name} is too long (maximum {REPLY_LIMIT} characters)")
    max_jobs = _max_jobs(body, contract)
    if "[moderated]" in prompt:
        raise ApiError(contract.moderation_status, contract.moderation_message)
    account = resolve_account(state, contract, token, _string(body, contract.account_field), kind, max_jobs)
    cap = max_jobs if max_jobs is not None else account.max_jobs
    job = state.submit(contract, account, kind, prompt, cap, (reply_url, reply_ref))
    if job is None:
        raise ApiError(429, f"API query is full for {account.name}, try again later")
    if state.config.webhook_before_submit_response:
        early = state.submit_snapshot(contract, job)
        if early is not None:
            await state.webhooks.send_now(early)  # it arrives before the create answer
    state.schedule_callbacks(contract, job)
    return json_response(contract.create_answer(job))


async def status(request: web.Request, contract: Contract) -> web.Response:
    state = request.app[SERVICES_KEY]
    token = authenticate(request, state)
    job = state.lookup(contract.service, token, request.match_info["job_id"])
    if contract.account_field == "email" and contract.account_required_if_many:
        accounts = state.token_accounts(contract.service, token) or {}
        email = request.query.get("email")
        if email is None and len(accounts) > 1:
            raise ApiError(400, "Parameter email is required when several accounts are configured")
        if job is not None and email is not None and job.account != email:
            job = None
    body = state.read(contract, job) if job is not None else None
    if body is None:
        raise ApiError(404, "Not found.")
    return json_response(body)


async def scheduler(request: web.Request, contract: Contract) -> web.Response:
    state = request.app[SERVICES_KEY]
    token = authenticate(request, state)
    now = state.now()
    entries = [contract.executing_entry(job, now) for job in state.executing(contract.service, token)]
    return json_response(entries if contract.available_field is None else {"executing": entries})


async def available(request: web.Request, contract: Contract) -> web.Response:
    state = request.app[SERVICES_KEY]
    token = authenticate(request, state)
    now = state.now()
    entries = [contract.executing_entry(job, now) for job in state.executing(contract.service, token)]
    return json_response({"executing": entries, "available": state.available(contract, token)})


async def stop_tracking(request: web.Request, contract: Contract) -> web.Response:
    state = request.app[SERVICES_KEY]
    token = authenticate(request, state)
    job_id = request.match_info["job_id"]
    if not state.stop_tracking(contract.service, token, job_id):
        message = f"Unable to locate running {'task_id' if contract.service == 'kling' else 'id'} {job_id}"
        if not contract.not_found_code:
            return json_response({"error": message}, status=404)
        raise ApiError(404, message)
    return web.Response(status=204)


def authenticate(request: web.Request, state: ServicesState) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    revoked = token in state.emulator.revoked
    if scheme.lower() != "bearer" or revoked or not state.known_token(token):
        raise ApiError(401, "Unauthorized")
    return token


def resolve_account(
    state: ServicesState, contract: Contract, token: str, name: str | None, kind: str, max_jobs: int | None
) -> ServiceAccount:
    accounts = state.token_accounts(contract.service, token) or {}
    if name is not None:
        found = accounts.get(name)
        if found is None:
            raise ApiError(404, f"Account configuration not found for {name}")
        return found
    if not accounts:
        raise ApiError(400, f"No {contract.service} account configured")
    if len(accounts) > 1 and contract.account_required_if_many:
        raise ApiError(400, f"Parameter {contract.account_field} is required when several accounts exist")
    candidates = [
        account
        for account in accounts.values()
        if state.has_room(account, kind, max_jobs if max_jobs is not None else account.max_jobs)
    ]
    pool = candidates or list(accounts.values())
    return pool[state.emulator.rng.randrange(len(pool))]


def _string(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"Parameter {name} must be a string")
    return value


def _max_jobs(body: dict[str, Any], contract: Contract) -> int | None:
    value = body.get("maxJobs")
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= contract.max_jobs_limit:
        raise ApiError(400, f"Parameter maxJobs must be an integer 1…{contract.max_jobs_limit}")
    return value
