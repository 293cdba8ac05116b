"""A submit that may have been accepted: how a network failure is classified ("never left" is safe
to retry, "sent, no answer" is not), the emulator's accept-then-drop fault that makes the second,
useapi's listing that finds such a job, and the rule for a provider that cannot be asked (ltx)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from daemon.accounts_file import Account
from daemon.cli.accounts import sync_lines
from daemon.client import Client
from daemon.errors import ProviderError
from daemon.jobs import JobRequest
from daemon.providers.base import request_json
from daemon.services import Services
from emulator.config import EmulatorConfig
from tests.conftest import API_KEYS, USEAPI_TOKEN, Emulator
from workers.capacity import capacity_provider

ACCOUNT = "a@x"
CREATE = "/v1/ltxstudio/videos/ltx-create"
T2V = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(
        keys={API_KEYS["a1"]: 2},
        useapi_accounts={USEAPI_TOKEN: {ACCOUNT: 3, "b@x": 1}},
        job_seconds=2.0,
    )


def useapi_account(base_url: str) -> Account:
    return Account("ltxstudio", ACCOUNT, 3, "USEAPI_TOKEN", base_url, USEAPI_TOKEN)


async def post_create(emulator: Emulator, body: dict[str, Any]) -> dict[str, Any]:
    account = useapi_account(emulator.url)
    _, answer = await request_json(
        emulator.session,
        "POST",
        f"{emulator.url}{CREATE}",
        account=account,
        classify=lambda *_: None,
        json_body=body,
    )
    result: dict[str, Any] = answer
    return result


async def test_a_request_that_never_left_is_not_maybe_accepted() -> None:
    account = useapi_account("http://127.0.0.1:9")  # nothing listens on the discard port
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ProviderError) as refused:
            await request_json(
                session, "POST", "http://127.0.0.1:9/v1/x", account=account, classify=None, json_body={}
            )
    assert refused.value.maybe_accepted is False


async def test_accept_then_drop_creates_the_job_and_sends_no_answer(emulator: Emulator) -> None:
    await emulator.fault(method="POST", path_prefix=CREATE, accept_then_drop=True, count=1)
    with pytest.raises(ProviderError) as lost:
        await post_create(emulator, {"email": ACCOUNT, "prompt": "lost answer", "replyRef": "ref-1"})
    assert lost.value.maybe_accepted is True
    stats: dict[str, Any] = await emulator.stats()
    assert stats["submissions_by_ref"] == {"ref-1": 1}
    assert stats["useapi_accounts"][ACCOUNT]["submitted"] == 1
    # The fault is spent: the next create is answered.
    assert "jobId" in await post_create(
        emulator, {"email": ACCOUNT, "prompt": "answered", "replyRef": "ref-2"}
    )


async def test_hold_seconds_answers_late_and_bad_faults_are_refused(emulator: Emulator) -> None:
    await emulator.fault(method="POST", path_prefix=CREATE, hold_seconds=0.2, count=1)
    answer = await post_create(emulator, {"email": ACCOUNT, "prompt": "held", "replyRef": "held-1"})
    assert answer["jobId"].startswith(f"email:{ACCOUNT}-job:")
    for bad in ({"accept_then_drop": 1}, {"hold_seconds": -1}, {"drop_connection": True, "hold_seconds": 1}):
        async with emulator.session.post(f"{emulator.url}/_emulator/faults", json=bad) as resp:
            assert resp.status == 400, bad


async def test_useapi_capacity_lists_the_account_jobs_with_their_refs(emulator: Emulator) -> None:
    ours = await post_create(
        emulator, {"email": ACCOUNT, "prompt": "ours", "replyRef": "ltxstudio-" + "0" * 32}
    )
    theirs = await post_create(emulator, {"email": ACCOUNT, "prompt": "theirs"})
    await post_create(emulator, {"email": "b@x", "prompt": "another account"})
    adapter = capacity_provider("ltxstudio")
    assert adapter is not None and capacity_provider("ltx") is None
    listing = await adapter.capacity(emulator.session, useapi_account(emulator.url))
    assert listing.max_jobs == 3
    assert {(r.provider_job_id, r.reply_ref) for r in listing.executing} == {
        (ours["jobId"], "ltxstudio-" + "0" * 32),
        (theirs["jobId"], None),
    }
    assert {r.account for r in listing.executing} == {ACCOUNT}


async def test_ltx_submit_without_an_answer_fails_and_is_not_sent_again(
    redis_client: aioredis.Redis, emulator: Emulator, open_daemon, make_settings, start_worker
) -> None:
    settings = make_settings(emulator.url, {"a1": 2})
    services: Services = await open_daemon(settings)
    await start_worker(settings)
    await emulator.fault(method="POST", path_prefix="/v2/", accept_then_drop=True, count=1)
    created = await services.store.create(
        JobRequest("ltx", "text-to-video", {"prompt": "[seconds=0.2] no answer", **T2V})
    )
    async with asyncio.timeout(30):
        job = await Client(redis_client).wait(created.job_id)
    assert job["errorType"] == "submit_interrupted", job
    assert "not submitted again" in job["status"]["message"]
    jobs = (await emulator.control("GET", "jobs"))["jobs"]
    assert [j["prompt"] for j in jobs] == ["[seconds=0.2] no answer"]  # type: ignore[index]


def test_sync_lines_say_what_runs_at_the_provider() -> None:
    """The sync summary names accounts with jobs of other clients at the provider and how old the
    listing is, and says nothing of accounts without any."""
    capacity = {
        "available": [
            {"provider": "ltxstudio", "email": ACCOUNT, "foreign": 2, "lastSync": 1_000},
            {"provider": "ltx", "email": "a1", "foreign": 0, "lastSync": None},
        ]
    }
    assert sync_lines(capacity, 4_000) == [
        f"ltxstudio {ACCOUNT}: 2 job(s) of other clients running at the provider (listing read 3s ago)"
    ]
