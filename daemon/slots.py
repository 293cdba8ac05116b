"""Per-account slots: leases with an expiry, waiting queues per provider, hand-off on release.

The scripts do the work atomically (``lua/lib.lua`` and the scripts that include it): a new job
takes a free slot or joins the waiting queue (``create_job.lua``); the terminal transition
releases the slot and hands it to the next waiting job in the same script (``transition.lua``);
a 429 cools the account down and puts the job back at the head of the line (``requeue.lua``).
This module holds what the scripts need from Python (the key bundle and the config of one
provider), the operator actions, the capacity view and the upgrade of an older slot layout.
Every index is per provider (``lua/lib.lua``): no script reads every account, so a script costs
the same with 3 accounts or 300, and with an empty queue or 100,000 waiting jobs.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
import structlog

from daemon import keys
from daemon.budget_view import add_request_budgets
from daemon.learned_capacity import effective_max_jobs, learned_now
from daemon.providers.base import ProviderCapacity
from daemon.scripts import Scripts
from daemon.settings import Settings

# Events kept in each provider's stream; ~ lets Redis trim by whole nodes, which is much cheaper.
EVENTS_MAXLEN = 100_000
# arq drops a job whose key has expired; a dispatched submission is picked up within milliseconds,
# so a day is only a backstop (the sweep re-queues a job whose submission vanished).
ARQ_EXPIRY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class ProviderScope:
    """Everything a slot-aware script needs to know about one provider."""

    provider: str
    keys: tuple[str, ...]
    lease_ms: int
    retention_s: int
    recovery_ms: int = 120_000

    def config(self, now_ms: int | None = None) -> bytes:
        # Every script call sends this; only ``now_ms`` (tests) changes, so the rest is serialized once.
        head = self._config_head()
        return head + (f',"now_ms":{now_ms}}}' if now_ms is not None else "}").encode()

    def _config_head(self) -> bytes:
        head = _CONFIG_HEADS.get(self)
        if head is None:
            static: dict[str, Any] = {
                "lease_ms": self.lease_ms,
                "events_maxlen": EVENTS_MAXLEN,
                "retention_s": self.retention_s,
                "recovery_ms": self.recovery_ms,
            }
            head = _CONFIG_HEADS[self] = orjson.dumps(static)[:-1]
        return head

    def keys_with(self, *job_keys: str) -> list[str]:
        return [*self.keys, *job_keys]


_CONFIG_HEADS: dict[ProviderScope, bytes] = {}

# Jobs in 'submitting' looked at per reconcile (a backstop; normally a handful).
RECONCILE_SUBMITTING_SCAN = 1000
# 'queued' jobs one sweep checks for a lost place in line; the next sweep goes on from there.
SWEEP_QUEUED_SCAN = 200

log = structlog.get_logger("genrelay.slots")

# Why an account is disabled when an operator disabled it (`genrelay accounts disable`): the probe
# of workers/account_probe.py leaves such accounts alone.
OPERATOR_REASON = "disabled by an operator"


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis MATCH pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What one account's reconcile did (see ``lua/reconcile.lua``)."""

    foreign: int  # slots taken at the provider by jobs holding no lease of ours
    adopted: tuple[str, ...]  # ours, listed with no provider id yet: now active, never resubmitted
    rebuilt: tuple[str, ...]  # ours, active, whose lease was missing: recreated from the listing
    resubmitted: tuple[str, ...]  # uncertain submits the listing shows were never accepted
    interrupted: tuple[str, ...]  # uncertain submits with no way to tell: the caller fails them
    checked: tuple[str, ...]  # active leases the provider no longer lists: a status read is due now

    @property
    def changed(self) -> bool:
        return bool(self.adopted or self.rebuilt or self.resubmitted or self.interrupted or self.checked)


def _ids(value: object) -> tuple[str, ...]:
    # cjson encodes an empty Lua table as {}.
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def build_scope(settings: Settings, provider: str) -> ProviderScope:
    return ProviderScope(
        provider=provider,
        keys=tuple(keys.provider_keys(provider).fixed()),
        lease_ms=int(settings.lease_ttl_for(provider) * 1000),
        retention_s=int(settings.job_retention),
        recovery_ms=max(1, int(settings.capacity_recovery * 1000)),
    )


def _sync_record(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def format_elapsed(ms: int) -> str:
    """MM:SS, as the provider's scheduler listing shows it (minutes keep counting past 59)."""
    seconds = max(0, ms // 1000)
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


class SlotAllocator:
    """Slot bookkeeping for every provider that has accounts in the accounts file."""

    def __init__(self, client: aioredis.Redis, scripts: Scripts, settings: Settings) -> None:
        self.client = client
        self.scripts = scripts
        self.settings = settings
        self.scopes = {p: build_scope(settings, p) for p in settings.providers()}

    def scope(self, provider: str) -> ProviderScope:
        return self.scopes[provider]

    async def sync_accounts(self, unless_loaded: bool = False) -> None:
        """Load every account's maxJobs into Redis; a raised maxJobs dispatches waiting jobs at once.
        ``unless_loaded`` (the sweep's repair): skip a provider whose Redis already holds this exact
        list, one read instead of a script that rebuilds every account's room."""
        for provider, scope in self.scopes.items():
            accounts = orjson.dumps([[a.name, a.max_jobs] for a in self.settings.accounts_for(provider)])
            digest = hashlib.sha256(accounts).hexdigest()[:32]
            digest_key = keys.provider_keys(provider).accounts_digest
            if unless_loaded and await self.client.get(digest_key) == digest:
                continue
            await self.scripts.sync_accounts(
                keys=[*scope.keys, digest_key], args=[scope.config(), accounts, digest]
            )

    async def upgrade_layout(self) -> dict[str, int]:
        """Bring every provider's keys to the current slot layout (``lua/upgrade_layout.lua``), with
        jobs in flight; returns the leases and poll claims moved per provider (0: already current).
        Every process calls it at start; the script is atomic and does nothing the second time."""
        moved = {}
        for provider, scope in self.scopes.items():
            pk = keys.provider_keys(provider)
            if await self.client.get(pk.layout) == str(keys.SLOT_LAYOUT):
                moved[provider] = 0
                continue
            prefix = keys.layout1_lease_key(provider, "")
            names = {a.name for a in self.settings.accounts_for(provider)}
            names.update(await self.client.hkeys(pk.accounts))
            async for key in self.client.scan_iter(match=f"{_glob_escape(prefix)}*", count=1000):
                names.add(key[len(prefix) :])
            ordered = sorted(names)
            moved[provider] = int(
                await self.scripts.upgrade_layout(
                    keys=[*scope.keys, pk.layout, *(keys.layout1_lease_key(provider, n) for n in ordered)],
                    args=[scope.config(), orjson.dumps(ordered)],
                )
            )
            if moved[provider]:
                log.info(
                    "slot layout upgraded", provider=provider, layout=keys.SLOT_LAYOUT, moved=moved[provider]
                )
        return moved

    async def set_enabled(self, provider: str, account: str, *, enabled: bool, reason: str = "") -> bool:
        """Enable (clearing any cooldown) or disable an account; False when it does not exist."""
        scope = self.scope(provider)
        why = "" if enabled else (reason or OPERATOR_REASON)
        found = await self.scripts.set_account(keys=list(scope.keys), args=[scope.config(), account, why])
        return bool(found)

    async def heal(self, provider: str, account: str, reason: str) -> bool:
        """Enable an account the probe found working again, by the same script as an operator's
        enable, only while it is still disabled for ``reason`` (an operator's disable meanwhile
        wins); True when this call enabled it."""
        scope = self.scope(provider)
        found = await self.scripts.set_account(
            keys=[*scope.keys, keys.account_events_key(provider)], args=[scope.config(), account, "", reason]
        )
        return int(found) == 1

    async def sweep(self, provider: str, limit: int = 100) -> list[str]:
        """Repair after crashes; returns jobs whose lease expired, for the caller to fail."""
        scope = self.scope(provider)
        expired: list[str] = await self.scripts.sweep(
            keys=scope.keys_with(keys.provider_keys(provider).sweep_cursor),
            args=[scope.config(), limit, SWEEP_QUEUED_SCAN],
        )
        return expired

    async def reconcile(
        self,
        provider: str,
        account: str,
        listing: ProviderCapacity,
        *,
        listed_at_ms: int,
        lists_refs: bool,
        grace_ms: int,
        poll_ms: int,
    ) -> Reconciled:
        """Apply the provider's listing of ``account`` to the slots in one script call.

        The reads here only gather which job hashes the script must be allowed to touch (every key
        is declared); the script decides everything again from what Redis holds when it runs.
        """
        scope = self.scope(provider)
        pk = keys.provider_keys(provider)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zrangebylex(pk.held_by, *keys.held_by_range(account))
            pipe.zrange(pk.state("submitting"), 0, RECONCILE_SUBMITTING_SCAN - 1)
            held, submitting = await pipe.execute()
        leased = [member.split("\n", 1)[1] for member in held]
        async with self.client.pipeline(transaction=False) as pipe:
            for job in leased:
                pipe.hget(keys.job_key(job), "provider_job_id")
            for job in submitting:
                pipe.hget(keys.job_key(job), "account")
            found = await pipe.execute()
        by_pid = {pid: job for job, pid in zip(leased, found[: len(leased)], strict=True) if pid}
        concerned = dict.fromkeys(leased)
        concerned.update(
            (job, None) for job, acc in zip(submitting, found[len(leased) :], strict=True) if acc == account
        )
        entries = []
        for running in listing.executing:
            ref = running.reply_ref
            if ref is not None and keys.provider_of(ref) == provider:
                entries.append({"pid": running.provider_job_id, "job": ref, "by": "ref"})
                concerned[ref] = None
            elif running.provider_job_id in by_pid:
                entries.append(
                    {"pid": running.provider_job_id, "job": by_pid[running.provider_job_id], "by": "pid"}
                )
            else:
                entries.append({"pid": running.provider_job_id, "job": "", "by": "ref"})
        jobs = list(concerned)
        params = {
            "account": account,
            "listed_at_ms": listed_at_ms,
            "grace_ms": grace_ms,
            "poll_ms": poll_ms,
            "lists_refs": lists_refs,
            "max_tries": self.settings.submit_max_tries,
            "provider_max": listing.max_jobs,
            "entries": entries,
            "jobs": jobs,
        }
        raw = await self.scripts.reconcile(
            keys=scope.keys_with(pk.capacity, *(keys.job_key(job) for job in jobs)),
            args=[scope.config(), orjson.dumps(params)],
        )
        out = orjson.loads(raw)
        if "error" in out:
            raise ValueError(f"{provider} account {account!r}: {out['error']}")
        return Reconciled(
            foreign=int(out["foreign"]),
            adopted=_ids(out.get("adopted")),
            rebuilt=_ids(out.get("rebuilt")),
            resubmitted=_ids(out.get("resubmitted")),
            interrupted=_ids(out.get("interrupted")),
            checked=_ids(out.get("checked")),
        )

    async def capacity(self, provider: str | None = None) -> dict[str, Any]:
        """The capacity mirror in the shape of the provider's ``GET scheduler/available``."""
        executing: list[dict[str, Any]] = []
        available: list[dict[str, Any]] = []
        now_ms = int(time.time() * 1000)
        for name in [provider] if provider else sorted(self.scopes):
            scope = self.scopes.get(name)
            if scope is None:
                continue
            ex, av = await self._provider_capacity(scope, now_ms)
            executing += ex
            available += av
        return {"executing": executing, "available": available}

    async def _provider_capacity(
        self, scope: ProviderScope, now_ms: int
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        pk = keys.provider_keys(scope.provider)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(pk.accounts)
            pipe.hgetall(pk.disabled)
            pipe.zrange(pk.cooldown, 0, -1, withscores=True)
            pipe.zcard(pk.waiting)
            pipe.zcard(pk.waiting_pinned)
            pipe.hgetall(pk.foreign)
            pipe.hgetall(pk.capacity)
            pipe.zrangebyscore(pk.leases, now_ms, "+inf")
            pipe.hgetall(pk.lease_account)
            pipe.hgetall(pk.learned)
            pipe.zrange(pk.learned_due, 0, -1, withscores=True)
            (
                maxes,
                disabled,
                cooldowns,
                unpinned,
                pinned,
                foreign,
                synced,
                live,
                owners,
                learned,
                due,
            ) = await pipe.execute()
        due_at = dict(due)
        cooldown = {name: int(until) for name, until in cooldowns if until > now_ms}
        leases: dict[str, list[str]] = {account: [] for account in self._account_names(scope.provider)}
        for job in live:
            account = owners.get(job)
            if account in leases:
                leases[account].append(job)
        executing = await self._executing(scope, leases, now_ms)
        available = []
        for account, held in leases.items():
            max_jobs = int(maxes.get(account, 0))
            busy = int(foreign.get(account, 0))
            taken = learned_now(int(learned.get(account, 0)), due_at.get(account), now_ms, scope.recovery_ms)
            effective = effective_max_jobs(max_jobs, taken)
            sync = _sync_record(synced.get(account))
            available.append(
                {
                    "provider": scope.provider,
                    "email": account,
                    "maxJobs": max_jobs,
                    "executing": len(held),
                    # What concurrency 429s left of maxJobs (docs/slots.md "Learned capacity").
                    "effectiveMaxJobs": effective,
                    "available": max(0, effective - len(held) - busy),
                    # Jobs the provider runs on the account that are not ours (from the last sync).
                    "foreign": busy,
                    "lastSync": sync.get("synced_ms"),
                    "providerMaxJobs": sync.get("provider_max"),
                    "enabled": account not in disabled,
                    "disabledReason": disabled.get(account),
                    "cooldownUntil": cooldown.get(account),
                    "waiting": unpinned + pinned,
                }
            )
        await add_request_budgets(self.client, self.settings, scope.provider, available, now_ms)
        return executing, available

    def _account_names(self, provider: str) -> list[str]:
        return [a.name for a in self.settings.accounts_for(provider)]

    async def _executing(
        self, scope: ProviderScope, leases: dict[str, list[str]], now_ms: int
    ) -> list[dict[str, Any]]:
        held = [(account, job) for account, jobs in leases.items() for job in jobs]
        if not held:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for _, job in held:
                pipe.hmget(keys.job_key(job), "submitted_ms", "created_ms", "reply_url", "reply_ref")
            rows = await pipe.execute()
        out = []
        for (account, job), (submitted, created, reply_url, reply_ref) in zip(held, rows, strict=True):
            started = int(submitted or created or now_ms)
            out.append(
                {
                    "jobId": job,
                    "provider": scope.provider,
                    "email": account,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started / 1000))
                    + f".{started % 1000:03d}Z",
                    "elapsed": format_elapsed(now_ms - started),
                    "replyUrl": reply_url or None,
                    "replyRef": reply_ref or None,
                }
            )
        return out
