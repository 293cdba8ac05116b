"""H6: the invariants every fault scenario ends with, checked by one call.

``await check_invariants(redis, oracle, job_ids, logs=group.logs(), ...)`` asserts, with messages
that name the job, account or log line at fault:

1. every enqueued job has exactly one terminal record: its hash says completed/failed/canceled,
   it sits in exactly one state index (the terminal one) and the events stream holds one terminal
   event for it;
2. the lease sets are empty, and no job is left waiting, after the drain;
3. the emulator's peak per account is at most the maxJobs it enforces (``allow_over_max`` for a
   scenario that breaks Redis on purpose: then every excess must have met a 429);
4. at most ``max_submissions`` accepted submissions per ``replyRef`` (useapi) or per prompt (LTX,
   whose jobs the scenarios prompt uniquely);
5. no 5xx: neither among the statuses the test saw nor in the web processes' access-log lines;
6. no secret (API keys, tokens, the signing secret) in any captured log.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import orjson
import redis.asyncio as aioredis

from daemon import keys
from tests.harness import slots as slot_index
from tests.harness.oracle import Oracle

TERMINAL = ("completed", "failed", "canceled")

# GENRELAY_SECRET of every test process (tests.conftest.process_env), which must never be logged.
TEST_SECRET = "test-secret-5f0c2d4e9b8a7c6d1e3f2a4b"


async def check_invariants(
    client: aioredis.Redis,
    oracle: Oracle,
    job_ids: Iterable[str],
    *,
    logs: Mapping[str, str] | None = None,
    secrets: Iterable[str] = (),
    statuses_seen: Iterable[int] = (),
    allow_over_max: bool = False,
    max_submissions: int = 1,
) -> None:
    ids = list(job_ids)
    providers = sorted({keys.provider_of(job_id) or "" for job_id in ids} - {""})
    await _one_terminal_record_each(client, ids, providers)
    await _no_lease_or_waiting_job_left(client, providers)
    await _peaks_within_max_jobs(oracle, allow_over_max)
    await _submissions_bounded(oracle, max_submissions)
    no_server_errors(statuses_seen, logs or {})
    no_secrets_logged(logs or {}, [*secrets, TEST_SECRET])


async def _one_terminal_record_each(client: aioredis.Redis, ids: list[str], providers: list[str]) -> None:
    terminal_events: Counter[str] = Counter()
    for provider in providers:
        for _, fields in await client.xrange(keys.events_key(provider)):
            if fields.get("state") in TERMINAL:
                terminal_events[fields["job"]] += 1
    for job_id in ids:
        state = await client.hget(keys.job_key(job_id), "state")
        assert state in TERMINAL, f"job {job_id} has no terminal record: its state is {state!r}"
        scope = keys.provider_keys(keys.provider_of(job_id) or "")
        indexed = [name for name in keys.STATES if await client.zscore(scope.state(name), job_id) is not None]
        assert indexed == [state], f"job {job_id} is {state} but indexed under {indexed}"
        assert terminal_events[job_id] == 1, (
            f"job {job_id} has {terminal_events[job_id]} terminal events in the stream, not 1"
        )


async def _no_lease_or_waiting_job_left(client: aioredis.Redis, providers: list[str]) -> None:
    for provider in providers:
        pk = keys.provider_keys(provider)
        held = await client.zrange(pk.held_by, 0, -1)
        assert held == [], f"{provider} still holds leases after the drain: {held}"
        assert await client.zcard(pk.leases) == 0, f"{provider}'s lease index is not empty after the drain"
        async for old_key in client.scan_iter(match=f"{keys.tag(provider)}:leases:*"):
            raise AssertionError(f"{old_key}: a layout-1 lease key is still there")
        waiting = await slot_index.waiting_jobs(client, provider)
        assert waiting == [], f"jobs of {provider} still waiting after the drain: {waiting}"


async def _peaks_within_max_jobs(oracle: Oracle, allow_over_max: bool) -> None:
    rejected = await oracle.rejected_429()
    for account in await oracle.peaks():
        if account.peak <= account.max_jobs:
            continue
        assert allow_over_max, (
            f"the provider saw {account.peak} jobs at once on {account.account}, "
            f"over its maxJobs {account.max_jobs}"
        )
        # The emulator refuses past maxJobs itself; an over-allocation shows as its 429s.
        assert rejected[account.account] > 0, f"{account.account} went over maxJobs without a 429"


async def _submissions_bounded(oracle: Oracle, max_submissions: int) -> None:
    for ref, count in (await oracle.submissions_by_ref()).items():
        assert count <= max_submissions, (
            f"replyRef {ref} was submitted {count} times (at most {max_submissions})"
        )
    for prompt, count in (await oracle.submissions_by_prompt()).items():
        assert count <= max_submissions, (
            f"prompt {prompt!r} was submitted {count} times (at most {max_submissions})"
        )


def no_server_errors(statuses_seen: Iterable[int], logs: Mapping[str, str]) -> None:
    errors = [status for status in statuses_seen if status >= 500]
    assert errors == [], f"the test saw 5xx answers: {errors}"
    for name, text in logs.items():
        for line in text.splitlines():
            if '"request"' not in line:
                continue
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if entry.get("event") == "request" and int(entry.get("status", 0)) >= 500:
                raise AssertionError(f"{name} answered a 5xx: {line}")


def no_secrets_logged(logs: Mapping[str, str], secrets: Iterable[str]) -> None:
    values = sorted({value for value in secrets if len(value) >= 4})
    for name, text in logs.items():
        for value in values:
            assert value not in text, f"{name} logged a secret ({value[:3]}...)"
