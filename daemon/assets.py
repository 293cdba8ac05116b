"""Assets: every finished artifact (video, image, audio, thumbnails), recorded once, listed newest
first and kept after its job record has expired.

An asset arrives two ways: a job's ``completed`` transition records its artifact in the same
script (``lua/transition.lua`` with ``lua/asset_lib.lua``), and ``genrelay import-assets`` records
what a provider's asset listing shows (``lua/record_asset.lua``). Both derive the asset id from the
artifact's identity (the provider's job id when known, else its asset id), so each artifact is
listed once whichever way it came. The rules live in ``asset_lib.lua``; this module holds the
shapes around them: artifact -> record fields, record -> API, and the listing's reads.

Retention: an asset is kept ``GENRELAY_ASSET_RETENTION`` seconds (default 30 days) after its
creation time; its hash expires then, and readers skip index entries older than that (the next
write to an index trims them).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio as aioredis

from daemon import archive_state, keys
from daemon.errors import NotFound
from daemon.scripts import Scripts
from daemon.settings import Settings

if TYPE_CHECKING:  # the adapters import this module for asset_type
    from daemon.providers.base import ProviderAsset

ASSET_TYPES = ("images", "videos", "audio", "other")
# A provider's artifact ``kind`` (or the main part of its MIME type) -> the asset type.
KIND_TYPES = {
    "video": "videos",
    "videos": "videos",
    "image": "images",
    "images": "images",
    "audio": "audio",
    "exr_frames": "other",  # LTX HDR: a ZIP of EXR frames
}
# The name a provider's single thumbnail URL (vydra ``thumbnailUrl``) is listed under.
DEFAULT_THUMBNAIL = "default"
MAX_WORKFLOW_LENGTH = 200


def asset_type(kind: str | None, mime_type: str | None = None) -> str:
    """images | videos | audio | other, from the artifact's kind or else its MIME type."""
    for hint in (kind, (mime_type or "").split("/")[0]):
        if hint and hint.lower() in KIND_TYPES:
            return KIND_TYPES[hint.lower()]
    return "other"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _epoch_ms(value: Any) -> str | None:
    """An ``expirationDateString`` (epoch ms as a string, as the providers write it), or None."""
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    return text if text.isdigit() else None


def artifact_fields(artifact: Mapping[str, Any]) -> dict[str, str]:
    """The asset record's fields that a job's artifact gives (the transition script adds the job's
    own: provider, account, workflow, job ids, created time).

    Artifact shapes: useapi ``{assetUrl, kind, expirationDateString, asset{type, fileId, mimeType}}``,
    ltx ``{assetUrl, kind: video|exr_frames, expirationDateString}``, vydra ``{assetUrl, kind,
    asset{mimeType}, thumbnailUrl}`` (no expiry).
    """
    raw_asset = artifact.get("asset")
    asset: Mapping[str, Any] = raw_asset if isinstance(raw_asset, Mapping) else {}
    mime = _text(asset.get("mimeType")) or _text(artifact.get("mimeType"))
    expires = _epoch_ms(artifact.get("expirationDateString"))
    thumbnails: dict[str, dict[str, str]] = {}
    raw_thumbnails = artifact.get("thumbnails")
    if isinstance(raw_thumbnails, Mapping):
        for name, entry in raw_thumbnails.items():
            url = _text(entry.get("assetUrl")) if isinstance(entry, Mapping) else _text(entry)
            if url:
                thumbnails[str(name)] = {"assetUrl": url}
    single = _text(artifact.get("thumbnailUrl"))
    if single:
        thumbnails[DEFAULT_THUMBNAIL] = {"assetUrl": single}
    fields = {
        "type": asset_type(_text(artifact.get("kind")), mime),
        "url": _text(artifact.get("assetUrl")) or "",
        "mime": mime or "",
        "expires_ms": expires or "",
        "provider_asset_id": _text(asset.get("fileId")) or _text(asset.get("id")) or "",
        "thumbnails": orjson.dumps(thumbnails).decode() if thumbnails else "",
    }
    return {name: value for name, value in fields.items() if value}


def imported_fields(
    provider: str,
    account: str,
    found: ProviderAsset,
    *,
    created_ms: int,
    job_id: str | None = None,
    workflow: str | None = None,
) -> dict[str, str]:
    """The record of an asset found in ``account``'s listing at ``provider``; ``job_id`` and
    ``workflow`` when it is the artifact of one of our jobs."""
    # Thumbnails of a signed listing are signed with the asset's URL: they expire with it.
    thumbnails = {name: {"assetUrl": url} for name, url in found.thumbnails.items() if url}
    fields = {
        "provider": provider,
        "account": account,
        "workflow": workflow or found.workflow or "",
        "type": found.kind if found.kind in ASSET_TYPES else asset_type(found.kind, found.mime_type),
        "url": found.url,
        "mime": found.mime_type or "",
        "expires_ms": str(found.expires_ms) if found.expires_ms is not None else "",
        "provider_asset_id": found.provider_asset_id,
        "provider_job_id": found.provider_job_id or "",
        "job_id": job_id or "",
        "thumbnails": orjson.dumps(thumbnails).decode() if thumbnails else "",
        "created_ms": str(created_ms),
        "source": "import",
    }
    return {name: value for name, value in fields.items() if value}


def to_api(fields: Mapping[str, str], archive: Mapping[str, str] | None = None) -> dict[str, Any]:
    """An asset record in the API's shape (names as in the providers' asset listings), with how
    its archived copy stands (``archive``; ``assetUrl`` stays the provider's URL)."""
    expires = fields.get("expires_ms") or None
    thumbnails: dict[str, dict[str, str]] = (
        orjson.loads(fields["thumbnails"]) if fields.get("thumbnails") else {}
    )
    if expires:
        thumbnails = {name: {**entry, "expirationDateString": expires} for name, entry in thumbnails.items()}
    record: dict[str, Any] = {
        "id": fields["id"],
        "provider": fields.get("provider"),
        "account": fields.get("account") or None,
        "workflow": fields.get("workflow") or None,
        "type": fields.get("type") or "other",
        "assetUrl": fields.get("url"),
        "mimeType": fields.get("mime") or None,
        "thumbnails": thumbnails,
        "jobId": fields.get("job_id") or None,
        "providerJobId": fields.get("provider_job_id") or None,
        "providerAssetId": fields.get("provider_asset_id") or None,
        "createdAt": int(fields["created_ms"]) if fields.get("created_ms") else None,
        "source": fields.get("source") or None,
        "archive": archive_state.to_api(dict(archive or {}), fields["id"]),
    }
    if expires:
        record["expirationDateString"] = expires
    return record


@dataclass(frozen=True, slots=True)
class Recorded:
    outcome: str  # new | replaced | known | refreshed | too_old
    asset_id: str


class AssetStore:
    """Reads of the asset records, and the import's write (through ``record_asset.lua``)."""

    def __init__(self, client: aioredis.Redis, scripts: Scripts, settings: Settings) -> None:
        self.client = client
        self.scripts = scripts
        self.settings = settings

    @property
    def retention_ms(self) -> int:
        return int(self.settings.asset_retention * 1000)

    async def get(self, asset_id: str) -> dict[str, Any] | None:
        if keys.provider_of_asset(asset_id) is None:
            return None
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.asset_key(asset_id))
            pipe.hgetall(archive_state.state_key(asset_id))
            fields, archive = await pipe.execute()
        return to_api(fields, archive) if fields else None

    async def require(self, asset_id: str) -> dict[str, Any]:
        found = await self.get(asset_id)
        if found is None:
            raise NotFound(f"no asset {asset_id!r} (unknown, or expired after its retention period)")
        return found

    async def list_assets(
        self,
        *,
        asset_type: str | None = None,
        provider: str | None = None,
        workflow: str | None = None,
        archive: str | None = None,
        page: int = 1,
        limit: int = 20,
    ) -> tuple[list[dict[str, Any]], int]:
        """Newest first; one page and the exact total matching the filters (each filter combination
        has its own index per provider; providers are merged here). ``archive`` (an archive state)
        is applied over the matching index, reading each entry's archive state."""
        if archive is not None:
            return await self._list_by_archive(asset_type, provider, workflow, archive, page, limit)
        providers = [provider] if provider else list(self.settings.providers())
        index_keys = [keys.asset_index_key(p, asset_type, workflow) for p in providers]
        oldest = int(time.time() * 1000) - self.retention_ms
        async with self.client.pipeline(transaction=False) as pipe:
            for key in index_keys:
                pipe.zcount(key, f"({oldest}", "+inf")
                pipe.zrevrangebyscore(key, "+inf", f"({oldest}", start=0, num=page * limit, withscores=True)
            results = await pipe.execute()
        total = sum(results[0::2])
        # Ties in time go by id, descending, as Redis orders them inside one index.
        merged = sorted(
            (entry for rows in results[1::2] for entry in rows), key=lambda e: (e[1], e[0]), reverse=True
        )
        ids = [asset_id for asset_id, _ in merged[(page - 1) * limit : page * limit]]
        return await self._records(ids), total

    async def _records(self, ids: list[str]) -> list[dict[str, Any]]:
        async with self.client.pipeline(transaction=False) as pipe:
            for asset_id in ids:
                pipe.hgetall(keys.asset_key(asset_id))
                pipe.hgetall(archive_state.state_key(asset_id))
            rows = await pipe.execute()
        return [to_api(r, a) for r, a in zip(rows[0::2], rows[1::2], strict=True) if r]

    async def _list_by_archive(
        self,
        asset_type: str | None,
        provider: str | None,
        workflow: str | None,
        state: str,
        page: int,
        limit: int,
    ) -> tuple[list[dict[str, Any]], int]:
        providers = [provider] if provider else list(self.settings.providers())
        oldest = int(time.time() * 1000) - self.retention_ms
        entries: list[tuple[str, float]] = []
        for p in providers:
            rows = await self.client.zrevrangebyscore(
                keys.asset_index_key(p, asset_type, workflow), "+inf", f"({oldest}", withscores=True
            )
            entries.extend(rows)
        async with self.client.pipeline(transaction=False) as pipe:
            for asset_id, _ in entries:
                pipe.hget(archive_state.state_key(asset_id), "state")
            states = await pipe.execute()
        matching = [e for e, s in zip(entries, states, strict=True) if (s or "pending") == state]
        matching.sort(key=lambda e: (e[1], e[0]), reverse=True)
        ids = [asset_id for asset_id, _ in matching[(page - 1) * limit : page * limit]]
        return await self._records(ids), len(matching)

    async def record_import(self, fields: Mapping[str, str]) -> Recorded:
        """Record an asset from a provider's listing unless it is known (see ``asset_lib.lua``)."""
        provider = fields["provider"]
        outcome, asset_id = await self.scripts.record_asset(
            keys=[keys.asset_index_key(provider), keys.asset_key_prefix(provider)],
            args=[orjson.dumps(dict(fields)), self.retention_ms],
        )
        return Recorded(str(outcome), str(asset_id))
