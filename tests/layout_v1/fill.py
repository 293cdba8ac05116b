"""The frozen layout-1 writer, used to test the upgrade of a Redis to slot layout 2.

Layout 1 is the slot layout before the scale change: one lease zset per account
(``genrelay:{p}:leases:<account>``), one ``waiting`` zset holding pinned and unpinned jobs, and a
``pins`` hash job -> account. This module fills a Redis exactly as that code did, so a test can hand
the Redis to the current daemon and check what its start-up upgrade makes of it.

Nothing here follows the daemon as it changes: ``lua/`` holds verbatim copies of the layout-1
scripts this writer runs (create_job, claim_submit, transition, sync_accounts, and the preludes
lib.lua and asset_lib.lua), and the
key names, the scripts' KEYS and ARGV, the prelude's task names and the job fields are copied (not
imported) from the same commit's ``daemon/keys.py``, ``daemon/tasks.py``, ``daemon/scripts.py``,
``daemon/slots.py`` and ``daemon/store.py``. Do not edit it to match newer code.
"""

from __future__ import annotations

import random
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

LUA = Path(__file__).resolve().parent / "lua"
# daemon/tasks.py lua_names(): the task names the prelude gets as locals.
TASK_NAMES = "local TASK_SUBMIT = 'submit_job'\nlocal TASK_DELIVER = 'deliver_job'\n"
# daemon/scripts.py: scripts without the prelude, and those that also get asset_lib.lua.
STANDALONE = frozenset({"claim_polls", "record_asset", "take_request", "postpone_poll", "reject_job"})
WITH_ASSETS = frozenset({"transition", "record_asset"})

# daemon/keys.py and daemon/slots.py
STATES = ("queued", "submitting", "active", "completed", "failed", "canceled")
ARQ_QUEUE = "genrelay:queue"
ARQ_JOB_PREFIX = "arq:job:"
ARQ_EXPIRY_MS = 86_400_000
EVENTS_MAXLEN = 100_000
# daemon/settings.py defaults: GENRELAY_LEASE_TTL, GENRELAY_JOB_RETENTION, GENRELAY_ASSET_RETENTION
LEASE_MS = 1_800_000
RETENTION_S = 604_800
ASSET_RETENTION_MS = 2_592_000_000


def tag(provider: str) -> str:
    return f"genrelay:{{{provider}}}"


def lease_key(provider: str, account: str) -> str:
    return f"{tag(provider)}:leases:{account}"


def job_key(job_id: str) -> str:
    return f"{tag(job_id.partition('-')[0])}:job:{job_id}"


def fixed_keys(provider: str) -> list[str]:
    """``ProviderKeys.fixed()``: KEYS[1..18] of the prelude (lib.lua)."""
    base = tag(provider)
    return [
        *(f"{base}:{name}" for name in ("accounts", "disabled", "cooldown", "waiting", "pins")),
        *(f"{base}:{name}" for name in ("events", "polls", "polling", "expired", "jobs")),
        *(f"{base}:state:{state}" for state in STATES),
        ARQ_QUEUE,
        f"{base}:foreign",
    ]


def script_source(name: str) -> str:
    body = (LUA / f"{name}.lua").read_text()
    if name in WITH_ASSETS:
        body = f"{(LUA / 'asset_lib.lua').read_text()}\n{body}"
    return body if name in STANDALONE else f"{TASK_NAMES}{(LUA / 'lib.lua').read_text()}\n{body}"


@dataclass
class Layout1:
    """One provider's slots as layout 1 kept them, driven like ``SlotAllocator`` and ``JobStore``."""

    client: aioredis.Redis
    provider: str
    accounts: Mapping[str, int]  # name -> maxJobs, in the accounts file's order
    lease_ms: int = LEASE_MS
    retention_s: int = RETENTION_S
    scripts: dict[str, Any] = field(default_factory=dict)

    def _script(self, name: str) -> Any:
        if name not in self.scripts:
            self.scripts[name] = self.client.register_script(script_source(name))
        return self.scripts[name]

    def _keys(self, *job_keys: str) -> list[str]:
        """``build_scope``'s keys: the fixed ones, one lease zset per account, then the job's."""
        leases = [lease_key(self.provider, account) for account in self.accounts]
        return [*fixed_keys(self.provider), *leases, *job_keys]

    def _config(self) -> bytes:
        """``ProviderScope.config()``: the same JSON, ``rand`` last."""
        return orjson.dumps(
            {
                "accounts": list(self.accounts),
                "lease_ms": self.lease_ms,
                "arq_prefix": ARQ_JOB_PREFIX,
                "arq_expiry_ms": ARQ_EXPIRY_MS,
                "events_maxlen": EVENTS_MAXLEN,
                "retention_s": self.retention_s,
                "rand": random.randrange(1 << 30),
            }
        )

    async def sync_accounts(self) -> None:
        """``SlotAllocator.sync_accounts``: every process ran it at start."""
        max_jobs = [str(n) for n in self.accounts.values()]
        await self._script("sync_accounts")(keys=self._keys(), args=[self._config(), *max_jobs])

    async def create(
        self, operation: str, params: dict[str, Any], *, account: str = "", priority: int = 5
    ) -> tuple[str, list[str]]:
        """``JobStore.create`` of a request with no request id, reply URL or ref: the new job's id
        and the script's answer (``['dispatched', account]`` or ``['waiting']``)."""
        job_id = f"{self.provider}-{uuid.uuid4().hex}"
        fields = {
            "id": job_id,
            "provider": self.provider,
            "operation": operation,
            "params": orjson.dumps(params).decode(),
            "pinned": account,
            "reply_url": "",
            "reply_ref": "",
            "priority": str(priority),
            "request_id": "",
            "notify_progress": "",
            "archive_notify": "",
        }
        result = await self._script("create_job")(
            keys=self._keys(job_key(job_id)), args=[self._config(), orjson.dumps(fields), account, priority]
        )
        return job_id, [str(r) for r in result]

    async def claim_submit(self, job_id: str) -> list[str]:
        """``JobStore.claim_submit``, as ``submit_job`` calls it before the provider call:
        ``['go', account, tries, previous state]`` when the job holds a live lease."""
        attempt = secrets.token_hex(8)
        result = await self._script("claim_submit")(
            keys=self._keys(job_key(job_id)), args=[self._config(), attempt]
        )
        return [str(r) for r in result]

    async def submit_attempt_ended(self, job_id: str) -> None:
        """``JobStore.submit_attempt_ended``: the provider answered with an error worth retrying; the
        task's arq entry stays in the queue for the retry."""
        await self.client.hset(job_key(job_id), "submit_open", "0")

    async def submitted(self, job_id: str, provider_job_id: str, poll_in_ms: int) -> list[str]:
        """What ``submit_job`` did once the provider accepted the job: the transition to active with
        its provider job id (which also schedules the first poll); then arq (``keep_result=0``)
        removed the finished task's entry."""
        update = {
            "state": "active",
            "progress": 0,
            "message": "submitted",
            "provider_job_id": provider_job_id,
            "fields": {"submit_open": "0"},
        }
        result = await self._script("transition")(
            keys=self._keys(job_key(job_id), f"{tag(self.provider)}:assets", f"{tag(self.provider)}:asset:"),
            args=[self._config(), orjson.dumps(update), poll_in_ms, "submit", b"", ASSET_RETENTION_MS],
        )
        entries = [e for e in await self.client.zrange(ARQ_QUEUE, 0, -1) if e.startswith(f"submit:{job_id}:")]
        if entries:
            await self.client.zrem(ARQ_QUEUE, *entries)
            await self.client.delete(*(ARQ_JOB_PREFIX + e for e in entries))
        return [str(r) for r in result]
