"""``genrelay import-assets ACCOUNT``: record the assets a provider account lists (made before
genrelay, or whose callbacks were lost). Progress on stderr, the summary on stdout. Calls the
provider, so the account's key must be set."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from daemon.cli.common import existing_redis, load_settings, note
from daemon.errors import InvalidRequest

if TYPE_CHECKING:
    from daemon.settings import Settings


def add_parser(sub: Any) -> None:
    imports = sub.add_parser(
        "import-assets",
        help="record the assets a provider account lists (made before genrelay, or callbacks lost)",
        description="Page through ACCOUNT's asset listing at its provider (useapi.net services, vydra) and "
        "record every asset genrelay does not have yet, so GET /v1/assets shows it. An asset already "
        "recorded is not recorded twice (its link is renewed when the listing's expires later); one made "
        "by a genrelay job gets that job's id. Progress goes to stderr, a summary to stdout. Exit 0 when "
        "done, 1 when the provider fails (nothing recorded is lost: run it again), 2 for bad arguments or "
        "a provider without a listing (ltx).",
    )
    imports.add_argument("account", metavar="ACCOUNT", help="the account's name in the accounts file")
    imports.add_argument(
        "--provider", help="the account's provider (needed when the name repeats across providers)"
    )
    imports.add_argument(
        "--limit", type=int, default=50, help="assets per listing page, 1..100 (default: %(default)s)"
    )
    imports.add_argument(
        "--max-pages", type=int, default=1000, help="stop after this many pages (default: %(default)s)"
    )
    imports.set_defaults(command=cmd_import_assets)


def cmd_import_assets(args: argparse.Namespace) -> int:
    settings = load_settings()
    return asyncio.run(
        run_import(
            settings,
            lambda: existing_redis(settings),
            args.account,
            args.provider,
            page_size=args.limit,
            max_pages=args.max_pages,
        )
    )


async def run_import(
    settings: Settings,
    redis_url: Callable[[], str],
    name: str,
    provider: str | None,
    *,
    page_size: int,
    max_pages: int,
) -> int:
    """``redis_url`` is asked only once the arguments are known to be good."""
    import aiohttp

    from daemon.asset_import import find_account, import_assets, listing_provider
    from daemon.assets import AssetStore
    from daemon.request_budget import RequestBudget, attach
    from daemon.services import open_services

    account = find_account(settings, name, provider)
    listing_provider(account)  # refuse before connecting anywhere
    if not 1 <= page_size <= 100:
        raise InvalidRequest("--limit must be from 1 to 100")
    if max_pages < 1:
        raise InvalidRequest("--max-pages must be at least 1")
    services = await open_services(settings, redis_url(), sync_accounts=False)
    try:
        store = AssetStore(services.client, services.scripts, settings)
        async with aiohttp.ClientSession() as session:
            # The listing's requests take from the accounts' request budgets, like the workers' do.
            attach(session, RequestBudget(services.client, services.scripts))
            summary = await import_assets(
                store, session, account, page_size=page_size, max_pages=max_pages, progress=note
            )
    finally:
        await services.close()
    print(summary.line(account))
    if not summary.complete:
        note(f"stopped after --max-pages {max_pages}: run again with a higher --max-pages for the rest")
    return 0
