"""A hypothesis state machine drives the slot scripts in random order against real Redis and checks
the allocator's invariants after every step."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from daemon import keys
from daemon.jobs import JobRequest, State, Update
from daemon.services import Services, open_services
from daemon.settings import Settings
from tests.conftest import process_env
from tests.harness import slots as slot_index

ACCOUNTS = {"a1": 1, "a2": 2, "a3": 3}
ARTIFACT = {"assetUrl": "https://cdn.example/v.mp4", "kind": "video", "expirationDateString": "1"}


class SlotMachine(RuleBasedStateMachine):
    def __init__(self, settings_: Settings, redis_url: str) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.settings_ = settings_
        self.redis_url = redis_url
        self.services: Services | None = None
        self.jobs: dict[str, State] = {}  # in creation order, so draws replay the same way
        self.released: set[str] = set()

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    @property
    def svc(self) -> Services:
        assert self.services is not None
        return self.services

    @property
    def redis(self) -> aioredis.Redis:
        return self.svc.client

    @initialize()
    def open(self) -> None:
        self.services = self.run(open_services(self.settings_, self.redis_url, sync_accounts=False))
        self.run(self.redis.flushdb())
        self.run(self.svc.slots.sync_accounts())

    def teardown(self) -> None:
        if self.services is not None:
            self.run(self.services.close())
        self.loop.close()

    async def holders(self) -> dict[str, list[str]]:
        return {name: await slot_index.leases_on(self.redis, "ltx", name) for name in ACCOUNTS}

    async def state_of(self, job_id: str) -> State:
        return State(await self.redis.hget(keys.job_key(job_id), "state"))

    def leased(self) -> list[str]:
        held = {job for jobs in self.run(self.holders()).values() for job in jobs}
        return [job for job in self.jobs if job in held]

    def with_state(self, *states: State) -> list[str]:
        return [j for j, s in self.jobs.items() if s in states]

    def refresh(self) -> None:
        for job_id in list(self.jobs):
            self.jobs[job_id] = self.run(self.state_of(job_id))

    @rule(priority=st.integers(0, 9))
    def acquire(self, priority: int) -> None:
        body = {"provider": "ltx", "operation": "text-to-video", "params": {}, "priority": priority}
        created = self.run(self.svc.store.create(JobRequest.from_json(body)))
        self.jobs[created.job_id] = State.QUEUED

    @precondition(lambda self: bool(self.leased()))
    @rule(data=st.data())
    def start(self, data: st.DataObject) -> None:
        """A worker takes a dispatched job to the provider and it becomes active."""
        job_id = data.draw(st.sampled_from(self.leased()))
        claim = self.run(self.svc.store.claim_submit(job_id))
        if claim.outcome == "go":
            self.run(self.svc.store.apply(job_id, Update(State.ACTIVE, provider_job_id="p"), source="submit"))
        self.refresh()

    @precondition(lambda self: bool(self.with_state(State.ACTIVE)))
    @rule(data=st.data(), progress=st.integers(0, 100))
    def renew(self, data: st.DataObject, progress: int) -> None:
        job_id = data.draw(st.sampled_from(self.with_state(State.ACTIVE)))
        self.run(self.svc.store.apply(job_id, Update(State.ACTIVE, progress=progress), source="poll"))

    @precondition(lambda self: bool(self.with_state(State.ACTIVE, State.SUBMITTING)))
    @rule(data=st.data(), completed=st.booleans())
    def release(self, data: st.DataObject, completed: bool) -> None:
        job_id = data.draw(st.sampled_from(self.with_state(State.ACTIVE, State.SUBMITTING)))
        update = (
            Update(State.COMPLETED, artifact=ARTIFACT) if completed else Update(State.FAILED, message="x")
        )
        assert self.run(self.svc.store.apply(job_id, update, source="poll")) == "applied"
        self.released.add(job_id)
        # The same terminal update again (a duplicate callback) changes nothing.
        assert self.run(self.svc.store.apply(job_id, update, source="poll")) == "terminal"
        self.refresh()

    @precondition(lambda self: bool(self.with_state(State.SUBMITTING)))
    @rule(data=st.data())
    def cooldown(self, data: st.DataObject) -> None:
        """The provider answered 429: the account cools down and the job goes back in line."""
        job_id = data.draw(st.sampled_from(self.with_state(State.SUBMITTING)))
        account = self.run(self.redis.hget(keys.job_key(job_id), "account"))
        until = int(time.time() * 1000) + 3_600_000
        self.run(self.svc.store.requeue(job_id, account, cooldown_until_ms=until, message="429"))
        self.refresh()

    @rule()
    def cooldowns_end(self) -> None:
        """Time passes: every cooldown is over and the dispatch task runs."""
        cooldown = keys.provider_keys("ltx").cooldown
        for name in self.run(self.redis.zrange(cooldown, 0, -1)):
            self.run(self.redis.zadd(cooldown, {name: 1}, xx=True))
        self.run(self.svc.slots.sweep("ltx", limit=0))
        self.refresh()

    @precondition(lambda self: bool(self.leased()))
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        """A lease's holder died and its TTL ran out; the sweep fails the job and frees the slot."""
        job_id = data.draw(st.sampled_from(self.leased()))
        self.run(slot_index.expire_lease(self.redis, "ltx", job_id))
        for expired in self.run(self.svc.slots.sweep("ltx")):
            outcome = self.run(self.svc.store.fail_timed_out(expired, 1))
            if outcome == "applied":
                self.released.add(expired)
        self.refresh()

    @invariant()
    def leases_never_exceed_max_jobs(self) -> None:
        if self.services is None:
            return
        held = self.run(self.holders())
        for name, jobs in held.items():
            assert len(jobs) <= ACCOUNTS[name], held
        everyone = [job for jobs in held.values() for job in jobs]
        assert len(everyone) == len(set(everyone)), f"a job holds two slots: {held}"
        assert not set(everyone) & self.released, "a released job holds a slot again"

    @invariant()
    def a_waiting_job_means_no_usable_slot_is_free(self) -> None:
        if self.services is None:
            return
        waiting = len(self.run(slot_index.waiting_jobs(self.redis, "ltx")))
        if not waiting:
            return
        held = self.run(self.holders())
        now = int(time.time() * 1000)
        cooling = {
            n
            for n, until in self.run(
                self.redis.zrange(keys.provider_keys("ltx").cooldown, 0, -1, withscores=True)
            )
            if until > now
        }
        for name, jobs in held.items():
            if name not in cooling:
                assert len(jobs) == ACCOUNTS[name], f"{name} has a free slot while {waiting} jobs wait"


def test_slot_invariants_hold_under_random_operations(tmp_path: Path, redis_url: str) -> None:
    env = process_env(tmp_path, redis_url, "http://127.0.0.1:9", ACCOUNTS)
    app_settings = Settings.from_env(env)
    run_state_machine_as_test(
        lambda: SlotMachine(app_settings, redis_url),
        settings=settings(
            max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )
