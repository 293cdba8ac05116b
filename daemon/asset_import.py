"""``genrelay import-assets ACCOUNT``: page through a provider account's asset listing and record
what is there, so results made before genrelay, or whose callbacks were lost, are found too.

Each asset goes through the same identity as a job's completion (``lua/asset_lib.lua``): one already
recorded is not recorded again (a later-expiring signed URL from the listing renews its link), and
one whose provider job id is a job of ours gets that job's id and operation. Running it twice adds
nothing. Works for every provider whose adapter has ``list_assets`` (the ``AssetProvider`` protocol).
The command around it (arguments, progress on stderr, the summary) is ``daemon/cli/assets.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import redis.asyncio as aioredis

from daemon import keys
from daemon.accounts_file import Account
from daemon.assets import AssetStore, imported_fields
from daemon.errors import DaemonError, InvalidRequest, ProviderAction, ProviderError
from daemon.providers import get_provider
from daemon.providers.base import AssetProvider, ProviderAsset
from daemon.settings import Settings

DEFAULT_PAGE_SIZE = 50
DEFAULT_MAX_PAGES = 1000
# Our jobs are read in batches of this many when matching provider job ids to them.
JOB_SCAN_BATCH = 1000


@dataclass(frozen=True, slots=True)
class OurJob:
    job_id: str
    operation: str
    ended_ms: int | None


@dataclass(slots=True)
class ImportSummary:
    pages: int = 0
    seen: int = 0
    new: int = 0
    known: int = 0
    refreshed: int = 0
    matched: int = 0  # recorded with our job id (new, or an earlier import that had none)
    too_old: int = 0
    complete: bool = False  # the listing's end was reached (not cut by --max-pages)

    def line(self, account: Account) -> str:
        text = (
            f"{account.provider} account {account.name}: {self.seen} asset(s) on {self.pages} page(s): "
            f"{self.new} new, {self.known + self.refreshed} already recorded"
        )
        if self.refreshed:
            text += f" ({self.refreshed} with a renewed link)"
        if self.matched:
            text += f", {self.matched} matched to genrelay jobs"
        if self.too_old:
            text += f", {self.too_old} older than GENRELAY_ASSET_RETENTION (not recorded)"
        return text


def find_account(settings: Settings, name: str, provider: str | None) -> Account:
    """The account of the accounts file called ``name`` (under ``provider`` when given)."""
    matches = [a for a in settings.accounts if a.name == name and provider in (None, a.provider)]
    if not matches:
        where = f" for provider {provider!r}" if provider else ""
        raise InvalidRequest(f"no account named {name!r}{where} in {settings.accounts_path}")
    if len(matches) > 1:
        found = ", ".join(a.provider for a in matches)
        raise InvalidRequest(f"{name!r} is an account of several providers ({found}): add --provider")
    return matches[0]


def listing_provider(account: Account) -> AssetProvider:
    """The account's adapter when its provider has an asset listing; else a refusal saying why."""
    provider = get_provider(account.provider)
    if not hasattr(provider, "list_assets"):
        raise InvalidRequest(
            f"{account.provider} has no asset listing to import from: genrelay records the assets of "
            f"{account.provider} jobs as they complete (GET /v1/assets), nothing else can be found"
        )
    return provider  # type: ignore[return-value]  # has list_assets: an AssetProvider


async def our_jobs(client: aioredis.Redis, account: Account) -> dict[str, OurJob]:
    """Provider job id -> our job, for the account's jobs still retained."""
    index = keys.provider_keys(account.provider).index
    found: dict[str, OurJob] = {}
    start = 0
    while True:
        ids = await client.zrange(index, start, start + JOB_SCAN_BATCH - 1)
        if not ids:
            return found
        async with client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(keys.job_key(job_id), "provider_job_id", "account", "operation", "finished_ms")
            rows = await pipe.execute()
        for job_id, (provider_job_id, name, operation, finished) in zip(ids, rows, strict=True):
            if provider_job_id and name == account.name:
                found[provider_job_id] = OurJob(job_id, operation or "", int(finished) if finished else None)
        start += JOB_SCAN_BATCH


async def import_assets(
    store: AssetStore,
    session: aiohttp.ClientSession,
    account: Account,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
    max_pages: int = DEFAULT_MAX_PAGES,
    progress: Callable[[str], None] = lambda line: None,
) -> ImportSummary:
    """Record every asset of ``account``'s listing, page by page, newest first."""
    provider = listing_provider(account)
    jobs = await our_jobs(store.client, account)
    summary = ImportSummary()
    # Assets without a creation time keep the listing's order: newest first, a millisecond apart.
    started_ms = int(time.time() * 1000)
    for page in range(1, max_pages + 1):
        try:
            listed = await provider.list_assets(session, account, page=page, limit=page_size)
        except ProviderError as exc:
            raise DaemonError(listing_failed(account, page, exc, summary)) from None
        summary.pages = page
        new_before = summary.new
        for found in listed.assets:
            await record(store, account, found, jobs.get(found.provider_job_id or ""), started_ms, summary)
        progress(f"page {page}: {len(listed.assets)} asset(s), {summary.new - new_before} new")
        if not listed.has_more or not listed.assets:
            summary.complete = True
            break
    return summary


async def record(
    store: AssetStore,
    account: Account,
    found: ProviderAsset,
    job: OurJob | None,
    started_ms: int,
    summary: ImportSummary,
) -> None:
    created_ms = found.created_ms or (job.ended_ms if job else None) or started_ms - summary.seen
    summary.seen += 1
    fields = imported_fields(
        account.provider,
        account.name,
        found,
        created_ms=created_ms,
        job_id=job.job_id if job else None,
        workflow=job.operation if job else None,
    )
    outcome = (await store.record_import(fields)).outcome
    if outcome in ("new", "replaced"):
        summary.new += outcome == "new"
        summary.known += outcome == "replaced"
        summary.matched += job is not None
    elif outcome == "refreshed":
        summary.refreshed += 1
    elif outcome == "too_old":
        summary.too_old += 1
    else:
        summary.known += 1


def listing_failed(account: Account, page: int, exc: ProviderError, summary: ImportSummary) -> str:
    advice = {
        ProviderAction.STOP_ACCOUNT: f"check the account's API key (environment variable "
        f"{account.api_key_env}) and its subscription",
        ProviderAction.LOST: f"check that {account.name!r} is the account's name at {account.provider} "
        f"and that base_url ({account.base_url}) is right",
        ProviderAction.RETRY: "the provider could not answer now: try again later",
    }.get(exc.action, "check the account in the accounts file")
    return (
        f"the {account.provider} asset listing failed on page {page}: {exc}. {advice}. "
        f"{summary.new} new asset(s) were recorded before that; running the command again records "
        "nothing twice"
    )
