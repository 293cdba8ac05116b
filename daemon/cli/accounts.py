"""``genrelay accounts``: the capacity mirror as a table (or ``--json``), and the operator's enable /
disable. Needs Redis and the accounts' names, never their keys."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import TYPE_CHECKING, Any

from daemon.budget_view import budget_text
from daemon.cli.common import add_json_flag, existing_redis, format_table, load_settings, note, print_json
from daemon.errors import InvalidRequest

if TYPE_CHECKING:
    from daemon.settings import Settings

COLUMNS = (
    "provider",
    "account",
    "maxJobs",
    "effectiveMaxJobs",
    "executing",
    "available",
    "state",
    "requests",
)


def add_parser(sub: Any) -> None:
    accounts = sub.add_parser(
        "accounts",
        help="show slots per account; enable or disable an account",
        description="Without an action (or with `show`): one row per account of the accounts file with "
        "its maxJobs, its effective slot count (maxJobs less the slots concurrency 429s showed taken by "
        "someone else; they come back one per GENRELAY_CAPACITY_RECOVERY seconds without one), the jobs "
        "executing on it, the free slots and its state (ok, cooling down after a "
        "429, disabled), the requests its request budget counted against the provider's limits per "
        "minute, hour and day (vydra; useapi accounts with requests_per_minute), then the jobs waiting "
        "per provider. `enable NAME` / `disable NAME` switch an "
        "account on or off for new submissions (jobs running on it finish). Reads Redis only: the "
        "accounts' key variables need not be set.",
    )
    accounts.add_argument("action", nargs="?", choices=("show", "enable", "disable"), default="show")
    accounts.add_argument("name", nargs="?", help="account name (for enable / disable)")
    accounts.add_argument("--provider", help="only this provider (needed when names repeat across providers)")
    add_json_flag(accounts)
    accounts.set_defaults(command=cmd_accounts)


def cmd_accounts(args: argparse.Namespace) -> int:
    settings = load_settings(require_keys=False)
    return asyncio.run(
        run_accounts(settings, existing_redis(settings), args.action, args.name, args.provider, args.json)
    )


def state_of(entry: dict[str, Any], now_ms: int) -> str:
    if not entry["enabled"]:
        return f"disabled: {entry.get('disabledReason') or 'by an operator'}"
    if entry.get("cooldownUntil"):
        return f"cooling down {max(0, entry['cooldownUntil'] - now_ms) / 1000:.0f}s"
    return "ok"


def account_rows(capacity: dict[str, Any], now_ms: int) -> list[tuple[str, ...]]:
    return [
        (
            entry["provider"],
            entry["email"],
            str(entry["maxJobs"]),
            str(entry.get("effectiveMaxJobs", entry["maxJobs"])),
            str(entry["executing"]),
            str(entry["available"]),
            state_of(entry, now_ms),
            budget_text(entry.get("requestBudget")),
        )
        for entry in capacity["available"]
    ]


def sync_lines(capacity: dict[str, Any], now_ms: int) -> list[str]:
    """One line per account the capacity sync has read at the provider: the jobs running there that
    are not genrelay's (they take slots here too) and how long ago the listing was read."""
    lines = []
    for entry in capacity["available"]:
        synced = entry.get("lastSync")
        if synced is None:
            continue
        age = max(0, now_ms - int(synced)) / 1000
        lines.append(
            f"{entry['provider']} {entry['email']}: {entry.get('foreign', 0)} job(s) of other clients "
            f"running at the provider (listing read {age:.0f}s ago)"
        )
    return lines


def as_json(capacity: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """The table's data for scripts: one object per account, and the jobs waiting per provider."""
    accounts = [
        {
            "provider": entry["provider"],
            "account": entry["email"],
            "maxJobs": entry["maxJobs"],
            "effectiveMaxJobs": entry.get("effectiveMaxJobs", entry["maxJobs"]),
            "executing": entry["executing"],
            "available": entry["available"],
            "enabled": entry["enabled"],
            "state": state_of(entry, now_ms),
            "foreign": entry.get("foreign", 0),
            "lastSync": entry.get("lastSync"),
            "requestBudget": entry.get("requestBudget"),
        }
        for entry in capacity["available"]
    ]
    waiting = {entry["provider"]: entry["waiting"] for entry in capacity["available"]}
    return {"accounts": accounts, "waiting": dict(sorted(waiting.items()))}


async def run_accounts(
    settings: Settings, redis_url: str, action: str, name: str | None, provider: str | None, json: bool
) -> int:
    from daemon.services import open_services

    services = await open_services(settings, redis_url, sync_accounts=False)
    try:
        if action in ("enable", "disable"):
            if not name:
                raise InvalidRequest(f"`genrelay accounts {action}` needs the account name")
            matches = [a for a in settings.accounts if a.name == name and provider in (None, a.provider)]
            if not matches:
                raise InvalidRequest(f"no account named {name!r} in {settings.accounts_path}")
            if len(matches) > 1:
                raise InvalidRequest(f"{name!r} exists for several providers: add --provider")
            account = matches[0]
            await services.slots.set_enabled(account.provider, account.name, enabled=action == "enable")
            note(f"{account.provider} account {account.name} {action}d")
        capacity = await services.slots.capacity(provider)
        now_ms = int(time.time() * 1000)
        if json:
            print_json(as_json(capacity, now_ms))
            return 0
        print(format_table(COLUMNS, account_rows(capacity, now_ms)))
        for line in sync_lines(capacity, now_ms):
            print(line)
        for name_, count in as_json(capacity, now_ms)["waiting"].items():
            print(f"{name_}: {count} job(s) waiting for a slot")
        return 0
    finally:
        await services.close()
