"""Every Redis key genrelay uses, in one place.

Keys of one provider share the hash tag ``{provider}`` so every multi-key script runs on one
Redis Cluster slot. The arq queue and arq's own ``arq:job:*`` keys cannot be tagged (arq fixes
their names); arq does not run on Cluster anyway, so the supported scale-out Redis is a single
primary, and the day arq supports Cluster only the queue has to move.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache, lru_cache

PREFIX = "genrelay"

# The arq queue all genrelay tasks go through.
ARQ_QUEUE = f"{PREFIX}:queue"
# arq's fixed prefix for serialized jobs; the dispatch scripts write submissions there themselves.
ARQ_JOB_PREFIX = "arq:job:"
# hash  task id -> runs so far beyond the first, for tasks taken more than once (claim_tasks.lua).
TASK_RERUNS = f"{ARQ_QUEUE}:reruns"
# Where versions before the secrets-at-rest change kept a generated GENRELAY_SECRET; read once to move
# it into the embedded server's data dir, then deleted (see daemon/secret_store.py).
SECRET = f"{PREFIX}:secret"
# hash  "<job id>:<seq>" -> JSON dead letter: deliveries to an app's replyUrl that gave up. No TTL: an
# operator replays (`genrelay deliveries replay`) or reads them; nothing else removes them.
DELIVERIES_DEAD = f"{PREFIX}:deliveries:dead"
# A delivery's try counter, refreshed at every attempt, outlives the longest wait between two attempts.
DELIVERY_TRIES_TTL_S = 2 * 86_400

# Matched with fullmatch: "$" would also accept an id followed by a newline.
JOB_ID_PATTERN = re.compile(r"(?P<provider>[a-z][a-z0-9]*)-(?P<token>[0-9a-f]{32})")

# The slot layout the scripts in daemon/lua expect (lib.lua); older layouts are upgraded at start.
SLOT_LAYOUT = 3
# What ``room`` subtracts while an account is disabled / cooling down (DISABLED_OFFSET and
# COOLING_OFFSET in lua/lib.lua).
ROOM_DISABLED_OFFSET = 1_000_000_000
ROOM_COOLING_OFFSET = 1_000_000

STATES = ("queued", "submitting", "active", "completed", "failed", "canceled")


@lru_cache(maxsize=65_536)
def provider_of(job_id: str) -> str | None:
    """The provider named in a job id, or None when the id is not one of ours (cached: every
    update of a job asks again)."""
    match = JOB_ID_PATTERN.fullmatch(job_id)
    return match.group("provider") if match else None


def tag(provider: str) -> str:
    return f"{PREFIX}:{{{provider}}}"


def job_key(job_id: str) -> str:
    provider = provider_of(job_id)
    if provider is None:
        raise ValueError(f"not a genrelay job id: {job_id!r}")
    return f"{tag(provider)}:job:{job_id}"


def events_key(provider: str) -> str:
    return f"{tag(provider)}:events"


@dataclass(frozen=True, slots=True)
class ProviderKeys:
    """The fixed keys of one provider, in the order the Lua prelude (lua/lib.lua) expects them."""

    accounts: str  # hash  account name -> maxJobs
    disabled: str  # hash  account name -> why it was disabled
    cooldown: str  # zset  account name -> cooling down until (ms)
    waiting: str  # zset  unpinned waiting job id -> priority band * 1e13 + arrival ms
    pins: str  # hash  pinned waiting job id -> its member of ``waiting_pinned``
    events: str  # stream of every transition, capped
    polls: str  # zset  job id -> next poll due (ms)
    polling: str  # zset  layout 2's claimed polls (layout 3 keeps them in polls; emptied by the upgrade)
    expired: str  # list  job ids whose lease expired, for the sweep to fail
    index: str  # zset  job id -> created (ms), every job
    states: tuple[str, ...]  # one zset per state: job id -> last update (ms)
    # hash  account -> slots taken at the provider by jobs holding no lease of ours (the capacity
    # sync writes it from the provider's listing; free slots subtract it)
    foreign: str
    leases: str  # zset  job id -> lease expiry (ms, Redis server clock), every account's leases
    lease_account: str  # hash  job id -> the account its lease is on
    held_by: str  # zset  score 0, "<account>\n<job id>": one account's leases by lex range
    # zset  account -> maxJobs - foreign - learned - leases, minus 1e9 while disabled and 1e6 while cooling
    # down: the account's free slots where positive
    room: str
    # zset  score 0, "<account>\n<16-digit waiting score>\n<job id>": the per-account pinned queues
    waiting_pinned: str
    # zset  account -> score of its pinned queue's head, for the accounts with room and pinned jobs
    pinned_ready: str
    # hash  account -> slots a concurrency 429 showed taken by someone else: the effective slot
    # count is maxJobs minus this (never below 1); free slots subtract it
    learned: str
    # zset  account -> when one learned slot comes back (ms), for the accounts with learned slots
    learned_due: str
    # hash  account -> JSON of the last capacity sync (when, what the provider listed)
    capacity: str
    layout: str  # string  the slot layout version of this provider's keys (see SLOT_LAYOUT)
    accounts_digest: str  # string  digest of the accounts list sync_accounts.lua loaded last
    sweep_cursor: str  # string  where in the 'queued' index the last sweep stopped

    def fixed(self) -> list[str]:
        return [
            self.accounts,
            self.disabled,
            self.cooldown,
            self.waiting,
            self.pins,
            self.events,
            self.polls,
            self.polling,
            self.expired,
            self.index,
            *self.states,
            ARQ_QUEUE,
            self.foreign,
            self.leases,
            self.lease_account,
            self.held_by,
            self.room,
            self.waiting_pinned,
            self.pinned_ready,
            self.learned,
            self.learned_due,
        ]

    def state(self, name: str) -> str:
        return self.states[STATES.index(name)]


@cache
def provider_keys(provider: str) -> ProviderKeys:
    base = tag(provider)
    return ProviderKeys(
        accounts=f"{base}:accounts",
        disabled=f"{base}:disabled",
        cooldown=f"{base}:cooldown",
        waiting=f"{base}:waiting",
        pins=f"{base}:pins",
        events=f"{base}:events",
        polls=f"{base}:polls",
        polling=f"{base}:polling",
        expired=f"{base}:expired",
        index=f"{base}:jobs",
        states=tuple(f"{base}:state:{state}" for state in STATES),
        foreign=f"{base}:foreign",
        leases=f"{base}:leases",
        lease_account=f"{base}:lease_account",
        held_by=f"{base}:held_by",
        room=f"{base}:room",
        waiting_pinned=f"{base}:waiting_pinned",
        learned=f"{base}:learned",
        learned_due=f"{base}:learned_due",
        pinned_ready=f"{base}:pinned_ready",
        capacity=f"{base}:capacity",
        layout=f"{base}:layout",
        accounts_digest=f"{base}:accounts-digest",
        sweep_cursor=f"{base}:sweep_cursor",
    )


def delivery_tries_key(job_id: str, seq: int) -> str:
    """Counter of the attempts at one delivery (a job's transition ``seq``) to the app's replyUrl."""
    return f"{job_key(job_id)}:delivery:{seq}:tries"


def layout1_lease_key(provider: str, account: str) -> str:
    """Where slot layout 1 kept one account's leases (a zset per account); read only by the upgrade."""
    return f"{tag(provider)}:leases:{account}"


def held_by_range(account: str) -> tuple[str, str]:
    """The lex range of one account's members in ``held_by`` (and ``waiting_pinned``)."""
    return f"[{account}\n", f"({account}\x0b"


def capacity_lock_key(provider: str) -> str:
    """Held (with an expiry) by the one worker that reads the provider's listing this interval."""
    return f"{tag(provider)}:capacity:lock"


ASSET_ID_PATTERN = re.compile(r"(?P<provider>[a-z][a-z0-9]*)-asset-(?P<token>[0-9a-f]{32})")


def provider_of_asset(asset_id: str) -> str | None:
    """The provider named in an asset id, or None when the id is not one of ours."""
    match = ASSET_ID_PATTERN.fullmatch(asset_id)
    return match.group("provider") if match else None


def asset_id(provider: str, provider_job_id: str | None, provider_asset_id: str | None, job_id: str) -> str:
    """The id ``lua/asset_lib.lua`` gives the asset of this artifact (the same rule, in Python)."""
    if provider_job_id:
        identity = f"job:{provider_job_id}"
    elif provider_asset_id:
        identity = f"asset:{provider_asset_id}"
    else:
        identity = f"ours:{job_id}"
    digest = hashlib.sha1(f"{provider}\n{identity}".encode()).hexdigest()
    return f"{provider}-asset-{digest[:32]}"


def asset_key_prefix(provider: str) -> str:
    """Prefix of the asset hashes: ``<prefix><asset id>`` is one asset's hash (the scripts build the
    key from it, as the id is derived inside them)."""
    return f"{tag(provider)}:asset:"


def asset_key(asset_id: str) -> str:
    provider = provider_of_asset(asset_id)
    if provider is None:
        raise ValueError(f"not a genrelay asset id: {asset_id!r}")
    return f"{asset_key_prefix(provider)}{asset_id}"


def asset_index_key(provider: str, asset_type: str | None = None, workflow: str | None = None) -> str:
    """zset asset id -> created (ms): every asset of the provider, or those of one type, one
    workflow, or both (one zset per combination, so a combined filter still has an exact count)."""
    key = f"{tag(provider)}:assets"
    if asset_type:
        key += f":type:{asset_type}"
    if workflow:
        key += f":workflow:{workflow}"
    return key


def request_budget_key(provider: str, holder: str, window: str = "minute") -> str:
    """zset of the requests one budget holder (an account, or a token or organisation its
    accounts share) made in one of its provider's rate windows (``minute``, ``hour``, ``day``):
    request id -> taken (ms, Redis server clock); see ``lua/take_request.lua``."""
    key = f"{tag(provider)}:budget:{holder}"
    return key if window == "minute" else f"{key}:{window}"


def request_limit_key(provider: str, holder: str) -> str:
    """hash window (``minute``, ``hour``, ``day``) -> the requests the provider last said the
    holder may make in it (vydra's ``X-RateLimit-Limit``, ``/account/rate-limits``), shared by
    every process; expires, so a limit that stops being reported falls back to the default."""
    return f"{tag(provider)}:budget-limit:{holder}"


def organization_key(provider: str, account: str) -> str:
    """string: the id of the organisation the provider says the account belongs to (vydra's
    ``GET /organization``); the accounts of one organisation share its request budget."""
    return f"{tag(provider)}:organization:{account}"


def account_events_key(provider: str) -> str:
    """stream, capped: one entry per change of an account's health (``account_enabled`` by the
    probe, ``breaker_open``), with ``account``, ``event``, ``reason`` and ``ts``."""
    return f"{tag(provider)}:account-events"


def breaker_key(provider: str, account: str) -> str:
    """list, newest first, capped: ``"<ms>:<1 failed | 0 ok>"`` of the account's last submit
    outcomes, while any failed recently (see ``lua/breaker.lua``)."""
    return f"{tag(provider)}:breaker:{account}"


def probe_lock_key(provider: str, account: str) -> str:
    """Held (with an expiry) by the one worker that probes a disabled account this interval."""
    return f"{tag(provider)}:probe-lock:{account}"


# zset  alert id -> when it is due (ms): operator alerts waiting to be sent (or being sent: a claim
# moves it to the claim's expiry, so one a dead worker held comes back); see daemon/alerts.py.
ALERTS = f"{PREFIX}:alerts"
# hash  alert id -> the alert's JSON body
ALERT_BODIES = f"{PREFIX}:alerts:bodies"
# hash  alert id -> attempts so far
ALERT_TRIES = f"{PREFIX}:alerts:tries"
