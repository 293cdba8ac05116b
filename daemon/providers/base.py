"""What every provider adapter offers, and the HTTP error handling they share."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson

from daemon.accounts_file import Account
from daemon.errors import ProviderAction, ProviderError
from daemon.jobs import Job, State, Update
from daemon.metrics import METRICS

USER_AGENT = "genrelay/0.1 (+https://github.com/genrelay/genrelay)"
# A submit or a status read is one small JSON exchange; anything slower is treated as a failure.
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=10)


class Provider(Protocol):
    """A provider API: submit a job and read its status."""

    name: str
    webhooks: bool
    operations: frozenset[str]

    async def submit(
        self, session: aiohttp.ClientSession, account: Account, job: Job, callback_url: str | None = None
    ) -> str:
        """Start the job at the provider; returns the provider's job id. ``callback_url`` is given
        only to providers with ``webhooks`` when genrelay has a public URL."""
        ...

    async def status(self, session: aiohttp.ClientSession, account: Account, job: Job) -> Update:
        """Read the job's status at the provider."""
        ...

    async def cancel(self, session: aiohttp.ClientSession, account: Account, job: Job) -> str:
        """Stop the job at the provider where it can; returns what happened, in words for the record."""
        ...


@dataclass(frozen=True, slots=True)
class RunningJob:
    """A job the provider lists as running on one account (its capacity view)."""

    provider_job_id: str
    account: str  # the account it runs on, by the name genrelay's accounts file gives it
    reply_ref: str | None = None  # our job id, when the provider echoes it (useapi ``replyRef``)
    started: str | None = None  # when the provider says it started, as the provider wrote it


@dataclass(frozen=True, slots=True)
class ProviderCapacity:
    """What the provider says runs on one account right now."""

    executing: tuple[RunningJob, ...]
    max_jobs: int | None = None  # the provider's own cap for the account, when it reports one


@dataclass(frozen=True, slots=True)
class ProviderAsset:
    """One finished artifact in a provider account's asset listing."""

    provider_asset_id: str  # stable per artifact at the provider (useapi fileId, vydra ast_ id)
    url: str
    kind: str  # images | videos | audio | other
    provider_job_id: str | None = None
    mime_type: str | None = None
    workflow: str | None = None  # the operation / workflow that made it
    created_ms: int | None = None
    expires_ms: int | None = None  # when ``url`` stops working; None when it does not expire
    thumbnails: Mapping[str, str] = field(default_factory=dict)  # name -> URL


@dataclass(frozen=True, slots=True)
class AssetPage:
    """One page of a provider's asset listing; ``has_more`` says whether to ask for the next."""

    assets: tuple[ProviderAsset, ...]
    has_more: bool


class CapacityProvider(Provider, Protocol):
    """A provider that lists what runs on an account (useapi ``scheduler/available``, vydra
    ``GET /jobs?status=running``): the capacity mirror reconciles against it."""

    async def capacity(self, session: aiohttp.ClientSession, account: Account) -> ProviderCapacity:
        """The jobs running on ``account`` at the provider, ours and anyone else's."""
        ...


class AssetProvider(Provider, Protocol):
    """A provider with an asset listing (useapi ``assets/``, vydra ``/api/v1/assets``)."""

    async def list_assets(
        self, session: aiohttp.ClientSession, account: Account, *, page: int, limit: int
    ) -> AssetPage:
        """Page ``page`` (1-based) of ``limit`` finished artifacts of ``account``, newest first."""
        ...


class ProbeProvider(Provider, Protocol):
    """A provider whose accounts can be checked with a request that costs no credits."""

    async def probe(self, session: aiohttp.ClientSession, account: Account) -> bool:
        """True when the account's key works, False when the provider refuses it as its account
        statuses do (auth, credits, plan); a ``ProviderError`` when the answer says neither."""
        ...


def probe_answer(exc: ProviderError) -> bool:
    """What a probe's error answer says about the key: a 404 (of the unknown id a probe reads)
    means it works, an account status that it does not; anything else is raised again."""
    if exc.action is ProviderAction.LOST:
        return True
    if exc.action is ProviderAction.STOP_ACCOUNT:
        return False
    raise exc


class WebhookProvider(Provider, Protocol):
    """A provider that calls ``replyUrl`` back."""

    def parse_callback(self, body: Mapping[str, Any], *, confirm: bool = False) -> tuple[str | None, Update]:
        """Our job id (the ``replyRef`` echoed back, when present) and what the callback reports."""
        ...


def action_for_status(status: int, stop_account: frozenset[int]) -> ProviderAction:
    """What an error status means, by the rule every provider's error table follows (useapi.net's
    endpoint pages such as https://useapi.net/docs/api-ltxstudio-v1/post-ltxstudio-accounts,
    https://docs.ltx.video/errors, https://www.vydra.ai/docs/errors): 404 the job is gone; the
    provider's account statuses (auth, credits, plan) stop the account; 429 and 5xx are retried; any
    other 4xx (400, 413, 422, ...) is a bad request and fails the job."""
    if status == 404:
        return ProviderAction.LOST
    if status in stop_account:
        return ProviderAction.STOP_ACCOUNT
    if status == 429 or status >= 500:
        return ProviderAction.RETRY
    return ProviderAction.GIVE_UP


def lost(message: str) -> Update:
    """The status read's answer for a job the provider no longer knows (its 404)."""
    return Update(State.FAILED, message=message, error_type="lost")


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare for APIs; fall back to our own backoff


async def request_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    account: Account,
    classify: Any,
    json_body: Any = None,
    seen: Callable[[Mapping[str, str]], None] | None = None,
) -> tuple[int, Any]:
    """One JSON request; network failures become retryable ``ProviderError``s.

    ``classify(status, body, headers)`` raises a ``ProviderError`` for error answers; ``seen``, when
    given, gets the headers of every answer first (errors included). Every request is counted and
    timed by the status it got ('error' when no answer came).
    """
    started = time.perf_counter()
    status = "error"
    try:
        answer = await _request_json(
            session, method, url, account=account, classify=classify, json_body=json_body, seen=seen
        )
        status = str(answer[0])
        return answer
    except ProviderError as exc:
        status = str(exc.status) if exc.status is not None else "error"
        raise
    finally:
        METRICS.observe_provider_request(account.provider, method, status, time.perf_counter() - started)


async def _request_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    account: Account,
    classify: Any,
    json_body: Any,
    seen: Callable[[Mapping[str, str]], None] | None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {account.api_key}", "User-Agent": USER_AGENT}
    data = None if json_body is None else orjson.dumps(json_body)
    if data is not None:
        headers["Content-Type"] = "application/json"
    try:
        async with session.request(method, url, data=data, headers=headers, timeout=REQUEST_TIMEOUT) as resp:
            raw = await resp.read()
            body = _decode(raw)
            if seen is not None:
                seen(resp.headers)
            if resp.status >= 300:
                classify(resp.status, body, resp.headers)
            return resp.status, body
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        # No connection was made (refused, DNS, connect timeout): the request never left.
        raise ProviderError(
            f"{method} {url.split('?')[0]} failed: {type(exc).__name__} {exc}".strip(),
            action=ProviderAction.RETRY,
        ) from exc
    except (TimeoutError, aiohttp.ClientError) as exc:
        # Sent, and no answer came (timeout, disconnect, reset): the provider may have acted on it.
        raise ProviderError(
            f"{method} {url.split('?')[0]} sent, no answer: {type(exc).__name__} {exc}".strip(),
            action=ProviderAction.RETRY,
            maybe_accepted=True,
        ) from exc


def _decode(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return {"raw": raw[:200].decode(errors="replace")}
