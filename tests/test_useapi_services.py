"""The useapi adapter against the emulator's Kling, MiniMax, PixVerse and Runway contracts over real
HTTP (emulator clock faked, so every state is read at will): submit, status in every state, each
service's error table, stop-tracking, the capacity listing and its quirks."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from daemon import keys
from daemon.accounts_file import Account
from daemon.errors import InvalidRequest, ProviderAction, ProviderError
from daemon.jobs import Job, State, Update
from daemon.providers import get_provider
from daemon.providers.useapi import UseapiListingProvider, UseapiProvider
from daemon.request_budget import USEAPI_BUDGET, RequestBudget, attach, shared_budget_holder
from emulator.app import create_app
from emulator.config import EmulatorConfig
from tests.conftest import USEAPI_TOKEN

ACCOUNTS = {
    "kling": ("k1@example.com", "k2@example.com"),
    "minimax": ("300001", "300002"),
    "pixverse": ("p1@example.com", "p2@example.com"),
    "runwayml": ("r1@example.com", "r2@example.com"),
}
OPERATION = {
    "kling": "videos/text2video",
    "minimax": "videos/create",
    "pixverse": "videos/create",
    "runwayml": "videos/create",
}
MAX_JOBS = 2
SERVICES = tuple(ACCOUNTS)
LISTING = ("kling", "minimax", "pixverse")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Site:
    def __init__(self, url: str, clock: Clock, http: aiohttp.ClientSession) -> None:
        self.url, self.clock, self.http = url, clock, http

    async def control(self, method: str, path: str, body: object = None) -> Any:
        async with self.http.request(method, f"{self.url}/_emulator/{path}", json=body) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json()

    async def fault(self, **fault: object) -> None:
        await self.control("POST", "faults", fault)

    async def service_stats(self, service: str) -> dict[str, Any]:
        stats = await self.control("GET", "stats")
        return dict(stats["useapi_services"][service])

    async def get(self, path: str) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {USEAPI_TOKEN}"}
        async with self.http.get(f"{self.url}{path}", headers=headers) as resp:
            return resp.status, await resp.json()


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    clock = Clock()
    config = EmulatorConfig(
        useapi_services={s: {USEAPI_TOKEN: dict.fromkeys(names, MAX_JOBS)} for s, names in ACCOUNTS.items()},
        job_seconds=100,
        seed=3,
    )
    server = TestServer(create_app(config, clock=clock), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        try:
            yield Site(str(server.make_url("")).rstrip("/"), clock, http)
        finally:
            await server.close()


def account(site: Site, service: str, index: int = 0) -> Account:
    return Account(service, ACCOUNTS[service][index], MAX_JOBS, "USEAPI_TOKEN", site.url, USEAPI_TOKEN)


def job(service: str, prompt: str, number: int = 1, **fields: str) -> Job:
    job_id = f"{service}-{number:032x}"
    base = {"id": job_id, "provider": service, "operation": OPERATION[service], "state": "submitting"}
    params = orjson.dumps({"prompt": prompt}).decode()
    return Job({**base, "params": params, "submitted_ms": str(int(time.time() * 1000)), **fields})


def adapter(service: str) -> UseapiProvider:
    found = get_provider(service)
    assert isinstance(found, UseapiProvider)
    return found


async def submitted(site: Site, service: str, prompt: str, number: int = 1, index: int = 0) -> Job:
    record = job(service, prompt, number)
    pid = await adapter(service).submit(site.http, account(site, service, index), record)
    return Job({**record.fields, "provider_job_id": pid, "state": "active"})


async def read(site: Site, service: str, record: Job, index: int = 0) -> Update:
    return await adapter(service).status(site.http, account(site, service, index), record)


@pytest.mark.parametrize("service", SERVICES)
async def test_submit_names_the_account_and_replyref_and_keeps_the_id(site: Site, service: str) -> None:
    record = await submitted(site, service, "a lighthouse")
    pid = record.provider_job_id
    assert pid
    if service == "kling":
        assert pid.isdigit()  # a numeric task id, kept as text
    else:
        # The documented ids embed the account (user:<uid>-<service>:<account>-<kind>:<n>).
        assert f"-{service}:{ACCOUNTS[service][0]}-" in pid
    stats = await site.service_stats(service)
    assert stats["submissions_by_ref"] == {record.id: 1}
    assert stats["accounts"][ACCOUNTS[service][0]]["submitted"] == 1


STATES: dict[str, list[tuple[float, State, str | None]]] = {
    # (emulator seconds after the submit, our state, the provider's word for it)
    "kling": [(1, State.ACTIVE, "submitted"), (50, State.ACTIVE, "processing"), (101, State.COMPLETED, None)],
    "minimax": [
        (1, State.ACTIVE, "pending"),
        (20, State.ACTIVE, "queued"),
        (40, State.ACTIVE, "processing"),
        (101, State.COMPLETED, None),
    ],
    # 404 while processing: active, not lost.
    "pixverse": [(1, State.ACTIVE, None), (50, State.ACTIVE, None), (101, State.COMPLETED, None)],
    "runwayml": [(1, State.ACTIVE, "PENDING"), (50, State.ACTIVE, "RUNNING"), (101, State.COMPLETED, None)],
}


@pytest.mark.parametrize("service", SERVICES)
async def test_status_in_every_state_and_the_result_url(site: Site, service: str) -> None:
    record = await submitted(site, service, "a red fox")
    start = site.clock.now
    seen = []
    for seconds, state, word in STATES[service]:
        site.clock.now = start + seconds
        update = await read(site, service, record)
        assert update.state is state, (seconds, update)
        if word is not None:
            assert update.message == word
        seen.append(update)
    done = seen[-1]
    assert done.artifact is not None and done.artifact["assetUrl"].endswith(".mp4")
    assert done.artifact["kind"] == "video"
    if service in ("minimax", "runwayml"):
        assert any(u.progress not in (None, 0) for u in seen[:-1]), seen  # percent / progressRatio


FAILED_ENDS = {
    "kling": [("[fail] x", "failed")],
    "minimax": [("[fail] x", "failed"), ("[moderated-later] x", "moderated"), ("[removed] x", "moderated")],
    "pixverse": [("[fail] x", "failed"), ("[moderated-later] x", "moderated")],
    "runwayml": [("[fail] x", "failed")],
}


@pytest.mark.parametrize("service", SERVICES)
async def test_failed_and_moderated_ends(site: Site, service: str) -> None:
    for number, (prompt, error_type) in enumerate(FAILED_ENDS[service], start=1):
        record = await submitted(site, service, prompt, number)
        site.clock.now += 101
        update = await read(site, service, record)
        assert update.state is State.FAILED and update.error_type == error_type, (prompt, update)


async def test_pixverse_404_is_lost_only_after_its_deadline(site: Site) -> None:
    record = await submitted(site, "pixverse", "a slow video")
    assert (await read(site, "pixverse", record)).state is State.ACTIVE
    old = str(int(time.time() * 1000) - 2 * 3600 * 1000)
    late = Job({**record.fields, "submitted_ms": old})
    update = await read(site, "pixverse", late)
    assert update.state is State.FAILED and update.error_type == "lost"


@pytest.mark.parametrize("service", ["kling", "runwayml"])
async def test_404_on_a_status_read_is_lost(site: Site, service: str) -> None:
    pid = "999" if service == "kling" else "user:1-x"
    unknown = Job({**job(service, "x").fields, "provider_job_id": pid})
    update = await read(site, service, unknown)
    assert update.state is State.FAILED and update.error_type == "lost"


async def submit_error(site: Site, service: str, prompt: str = "x", number: int = 1) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await adapter(service).submit(site.http, account(site, service), job(service, prompt, number))
    return caught.value


# (status, action, error_type) of each service's table; 412 and 596 stop the account everywhere.
COMMON_ERRORS = [
    (429, ProviderAction.RETRY, None),
    (400, ProviderAction.GIVE_UP, None),
    (401, ProviderAction.STOP_ACCOUNT, "unauthorized"),
    (402, ProviderAction.STOP_ACCOUNT, "no_subscription"),
    (412, ProviderAction.STOP_ACCOUNT, "no_credits"),
    (596, ProviderAction.STOP_ACCOUNT, "account_on_hold"),
]


@pytest.mark.parametrize("service", SERVICES)
async def test_each_error_class_of_the_service_table(site: Site, service: str) -> None:
    path = f"{adapter(service).spec.base_path}/{OPERATION[service]}"
    for status, action, error_type in COMMON_ERRORS:
        await site.fault(method="POST", path_prefix=path, status=status, message=f"emulated {status}")
        error = await submit_error(site, service)
        assert (error.status, error.action, error.error_type) == (status, action, error_type), error
        assert not error.maybe_accepted
    # Moderation at submit: Kling answers 500 with a moderation text, the others 422.
    moderated = await submit_error(site, service, "[moderated] a forbidden thing")
    assert moderated.action is ProviderAction.GIVE_UP and moderated.error_type == "moderated"
    assert moderated.status == (500 if service == "kling" else 422)
    # A 500 without such a text is a server fault: retried.
    await site.fault(method="POST", path_prefix=path, status=500, message="Internal Server Error")
    fault = await submit_error(site, service)
    assert fault.action is ProviderAction.RETRY and fault.error_type is None
    # A full account: 429 from the emulator itself (maxJobs reached).
    for number in range(MAX_JOBS):
        await submitted(site, service, "fill", 10 + number)
    full = await submit_error(site, service, "one too many", 20)
    assert full.status == 429 and full.action is ProviderAction.RETRY
    assert (await site.service_stats(service))["accounts"][ACCOUNTS[service][0]]["rejected_429"] == 1


@pytest.mark.parametrize("status", [502, 504])
async def test_minimax_502_504_may_have_accepted_the_job(site: Site, status: int) -> None:
    path = "/v1/minimax/videos/create"
    await site.fault(method="POST", path_prefix=path, status=status, accept_then_error=True)
    error = await submit_error(site, "minimax", "busy site")
    assert error.maybe_accepted and error.action is ProviderAction.RETRY and error.status == status
    # It was accepted: the listing shows it by our replyRef, with no account field.
    listing = await adapter("minimax").capacity(site.http, account(site, "minimax"))  # type: ignore[attr-defined]
    assert [entry.reply_ref for entry in listing.executing] == [job("minimax", "x").id]
    # Elsewhere a 502 is a plain retry.
    await site.fault(method="POST", path_prefix="/v2/pixverse/videos/create", status=status)
    assert not (await submit_error(site, "pixverse")).maybe_accepted


@pytest.mark.parametrize("service", SERVICES)
async def test_stop_tracking_frees_the_slot_and_the_generation_goes_on(site: Site, service: str) -> None:
    record = await submitted(site, service, "to stop")
    note = await adapter(service).cancel(site.http, account(site, service), record)
    assert "stopped tracking" in note and "still runs" in note
    stats = await site.service_stats(service)
    assert stats["accounts"][ACCOUNTS[service][0]]["executing"] == 0
    again = await adapter(service).cancel(site.http, account(site, service), record)
    assert "no longer running" in again
    site.clock.now += 101
    assert (await read(site, service, record)).state is State.COMPLETED  # it ran on


@pytest.mark.parametrize("service", LISTING)
async def test_capacity_places_entries_by_account_and_reads_maxjobs(site: Site, service: str) -> None:
    ours = [await submitted(site, service, f"job {n}", n, index=n % 2) for n in range(3)]
    provider = adapter(service)
    assert isinstance(provider, UseapiListingProvider)
    for index, name in enumerate(ACCOUNTS[service]):
        listing = await provider.capacity(site.http, account(site, service, index))
        assert listing.max_jobs == MAX_JOBS
        expected = {r.provider_job_id for n, r in enumerate(ours) if n % 2 == index}
        assert {entry.provider_job_id for entry in listing.executing} == expected
        assert {entry.account for entry in listing.executing} == {name}
        assert all(entry.reply_ref for entry in listing.executing)


async def test_minimax_capacity_counts_videos_only(site: Site) -> None:
    headers = {"Authorization": f"Bearer {USEAPI_TOKEN}"}
    name = ACCOUNTS["minimax"][0]
    for n in range(3):  # someone else's images: no capacity taken, not in our listing
        body = {"account": name, "prompt": f"image {n}"}
        async with site.http.post(f"{site.url}/v1/minimax/images/create", json=body, headers=headers) as resp:
            assert resp.status == 200 and "imageId" in await resp.json()
    video = await submitted(site, "minimax", "a video")
    _, body = await site.get("/v1/minimax/scheduler/available")
    assert {e["account"]: e["executing"] for e in body["available"]}[name] == 1
    assert all("account" not in entry and "email" not in entry for entry in body["executing"])
    listing = await adapter("minimax").capacity(site.http, account(site, "minimax"))  # type: ignore[attr-defined]
    assert [entry.provider_job_id for entry in listing.executing] == [video.provider_job_id]


async def test_runway_has_no_capacity_listing(site: Site) -> None:
    provider = get_provider("runwayml")
    assert not callable(getattr(provider, "capacity", None))
    assert not getattr(provider, "lists_reply_refs", False)
    status, _ = await site.get("/v1/runwayml/scheduler/available")
    assert status in (404, 405)  # no such endpoint (only DELETE scheduler/{id} lives there)


async def test_kling_ids_are_url_safe_numbers_and_the_status_read_names_the_account(site: Site) -> None:
    record = await submitted(site, "kling", "x", index=1)
    # The task belongs to the second account: read as the first, Kling does not find it.
    wrong = await read(site, "kling", record, index=0)
    assert wrong.state is State.FAILED and wrong.error_type == "lost"
    assert (await read(site, "kling", record, index=1)).state is State.ACTIVE


async def test_accounts_of_one_token_share_one_request_budget(
    site: Site, redis_client: aioredis.Redis, open_daemon, make_settings
) -> None:  # type: ignore[no-untyped-def]
    services = await open_daemon(make_settings(site.url))
    async with aiohttp.ClientSession() as session:
        attach(session, RequestBudget(services.client, services.scripts))
        # Two services' accounts under the one useapi token, 4 requests per window (3 usable).
        kling = dataclasses.replace(account(site, "kling"), requests_per_minute=4, rate_window_seconds=30.0)
        minimax = dataclasses.replace(
            account(site, "minimax"), requests_per_minute=4, rate_window_seconds=30.0
        )
        assert shared_budget_holder(kling) == shared_budget_holder(minimax)
        await adapter("kling").submit(session, kling, job("kling", "one", 1))
        await adapter("minimax").submit(session, minimax, job("minimax", "two", 2))
        await adapter("minimax").submit(session, minimax, job("minimax", "three", 3))
        key = keys.request_budget_key(USEAPI_BUDGET, shared_budget_holder(kling))
        assert await redis_client.zcard(key) == 3
        with pytest.raises(ProviderError) as caught:
            await adapter("kling").submit(session, kling, job("kling", "four", 4))
        assert caught.value.status == 429 and caught.value.retry_after is not None
    # The fourth was never sent.
    sent = [await site.service_stats(s) for s in ("kling", "minimax")]
    assert [sum(a["submitted"] for a in s["accounts"].values()) for s in sent] == [1, 2]
    # Another token has a budget of its own.
    other = dataclasses.replace(kling, api_key="another-token")
    assert shared_budget_holder(other) != shared_budget_holder(kling)


def test_job_ids_of_every_useapi_provider_are_ours() -> None:
    for service in ("ltxstudio", *SERVICES):
        assert keys.provider_of(f"{service}-{'0' * 32}") == service


@pytest.mark.parametrize("service", SERVICES)
def test_a_callback_that_is_not_the_status_model_is_refused(service: str) -> None:
    with pytest.raises(InvalidRequest):
        adapter(service).parse_callback({"replyRef": f"{service}-{'0' * 32}", "hello": "world"})


def test_pixverse_queued_is_not_an_end_whatever_its_final_flag_says() -> None:
    body = {"video_status": 5, "video_status_name": "QUEUED", "video_status_final": True}
    ref, update = adapter("pixverse").parse_callback({**body, "replyRef": "x"})
    assert ref == "x" and update.state is State.ACTIVE
