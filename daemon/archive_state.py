"""The archive's records in Redis: a queue per provider of assets to copy, and one hash per asset
with how its copy stands. Kept apart from the asset record itself, which only the asset scripts
write; the one link is a line in ``lua/asset_lib.lua`` that queues every recorded asset.

Keys (under the provider's hash tag, like the asset keys):

* ``genrelay:{p}:assets:archive:queue`` zset asset id -> due (ms); a claim moves it a claim
  lifetime ahead, a worker copying it keeps moving it, a retry sets it to the retry's time, a
  settled outcome removes it. Each of those scores carries a half (``TRIED``): a whole score is an
  asset no attempt has claimed yet, whose archive hash does not exist;
* ``genrelay:{p}:archive:<asset id>`` hash: ``state`` (pending | archived | failed | expired),
  ``sha256``, ``bytes``, ``mime``, ``message``, ``final`` (1: no more tries), ``tries``,
  ``retry_ms``, ``archived_ms``; it expires with the asset record;
* ``genrelay:{p}:archive:events`` stream: one entry per settled outcome (``asset``, ``state``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from daemon import keys

STATES = ("pending", "archived", "failed", "expired")
_LUA = resources.files("daemon") / "lua"


def queue_key(provider: str) -> str:
    return f"{keys.asset_index_key(provider)}:archive:queue"


def state_prefix(provider: str) -> str:
    return f"{keys.tag(provider)}:archive:"


def state_key(asset_id: str) -> str:
    provider = keys.provider_of_asset(asset_id)
    if provider is None:
        raise ValueError(f"not a genrelay asset id: {asset_id!r}")
    return f"{state_prefix(provider)}{asset_id}"


def events_key(provider: str) -> str:
    return f"{keys.tag(provider)}:archive:events"


# Shared by every provider: objects are content-addressed, so one may serve assets of several.
RETENTION_KEY = f"{keys.PREFIX}:{{archive}}:retention"
USAGE_KEY = f"{keys.PREFIX}:{{archive}}:usage"
REFS_PREFIX = f"{keys.PREFIX}:{{archive}}:refs:"


@dataclass(frozen=True, slots=True)
class Claim:
    asset_id: str
    url: str
    mime: str
    expires_ms: int | None
    created_ms: int
    tries: int

    @property
    def provider(self) -> str:
        provider = keys.provider_of_asset(self.asset_id)
        assert provider is not None
        return provider


# Added to the queue score of an asset an attempt has claimed (archive_claim.lua reads its record).
TRIED = 0.5


def now_ms() -> int:
    return int(time.time() * 1000)


def waiters_key(asset_id: str) -> str:
    """The deliveries parked until this asset's copy settles (daemon/archive_notify.py)."""
    return f"{state_key(asset_id)}:waiters"


def to_api(fields: dict[str, str], asset_id: str) -> dict[str, Any]:
    """The ``archive`` member of an asset in the API."""
    state = fields.get("state") or "pending"
    archived = state == "archived"
    record: dict[str, Any] = {
        "state": state,
        "sha256": fields.get("sha256") or None,
        "bytes": int(fields["bytes"]) if fields.get("bytes") else None,
        "mimeType": fields.get("mime") or None,
        "url": f"/v1/assets/{asset_id}/content" if archived else None,
        "message": fields.get("message") or None,
    }
    if fields.get("retry_ms") and not archived:
        record["retryAt"] = int(fields["retry_ms"])
    return record


class ArchiveState:
    """The archive's scripts and reads on one Redis client."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._claim: AsyncScript = client.register_script((_LUA / "archive_claim.lua").read_text())
        self._finish: AsyncScript = client.register_script((_LUA / "archive_finish.lua").read_text())
        self._expire: AsyncScript = client.register_script((_LUA / "archive_expire.lua").read_text())

    async def claim(self, provider: str, limit: int, claim_ms: int, asset_retention_ms: int) -> list[Claim]:
        """Up to ``limit`` due copies, each held for ``claim_ms``; an asset's archive hash expires
        with the asset (``asset_retention_ms`` after its creation)."""
        flat = await self._claim(
            keys=[queue_key(provider), keys.asset_key_prefix(provider), state_prefix(provider)],
            args=[limit, claim_ms, now_ms(), asset_retention_ms],
        )
        claims = []
        for i in range(0, len(flat), 6):
            asset_id, url, mime, expires, created, tries = flat[i : i + 6]
            claims.append(
                Claim(
                    str(asset_id),
                    str(url),
                    str(mime),
                    int(expires) if expires else None,
                    int(created),
                    int(tries),
                )
            )
        return claims

    async def renew(self, claim: Claim, claim_ms: int) -> None:
        """Keep the claim while the copy goes on (XX: a settled asset is not queued again)."""
        due = now_ms() + claim_ms + TRIED
        await self.client.zadd(queue_key(claim.provider), {claim.asset_id: due}, xx=True)

    async def finish(
        self, claim: Claim, fields: dict[str, str], retry_ms: int = 0, retention_ms: int = 0
    ) -> str:
        provider = claim.provider
        result = await self._finish(
            keys=[
                queue_key(provider),
                state_key(claim.asset_id),
                keys.asset_key(claim.asset_id),
                events_key(provider),
                RETENTION_KEY,
                REFS_PREFIX + fields.get("sha256", ""),
                USAGE_KEY,
                waiters_key(claim.asset_id),
                keys.ARQ_QUEUE,
            ],
            args=[claim.asset_id, orjson.dumps(fields), retry_ms, claim.created_ms + retention_ms, now_ms()],
        )
        return str(result)

    async def expire(self, limit: int = 100) -> list[str]:
        """End the copies past their retention; the objects no asset refers to any more."""
        shas = await self._expire(keys=[RETENTION_KEY, USAGE_KEY, REFS_PREFIX], args=[limit])
        return [str(sha) for sha in shas]

    async def usage(self) -> tuple[int, int]:
        """(objects, bytes) in the archive, as the copies and deletions counted them."""
        found = await self.client.hmget(USAGE_KEY, "objects", "bytes")
        return int(found[0] or 0), int(found[1] or 0)

    async def get(self, asset_id: str) -> dict[str, str]:
        fields: dict[str, str] = await self.client.hgetall(state_key(asset_id))
        return fields

    async def enqueue(self, asset_id: str, due_ms: int | None = None) -> bool:
        """Queue an asset for a copy (backfill); False when it is queued already."""
        provider = keys.provider_of_asset(asset_id)
        assert provider is not None
        due = due_ms if due_ms is not None else now_ms()
        added = await self.client.zadd(queue_key(provider), {asset_id: due}, nx=True)
        return bool(added)
