"""``genrelay accounts``: the capacity mirror as a table, and the operator's enable / disable."""

from __future__ import annotations

import sys
import time
from typing import Any

from daemon.errors import InvalidRequest
from daemon.services import open_services
from daemon.settings import Settings

COLUMNS = ("provider", "account", "maxJobs", "executing", "available", "state")


def account_rows(capacity: dict[str, Any], now_ms: int) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for entry in capacity["available"]:
        if not entry["enabled"]:
            state = f"disabled: {entry.get('disabledReason') or 'by an operator'}"
        elif entry.get("cooldownUntil"):
            state = f"cooling down {max(0, entry['cooldownUntil'] - now_ms) / 1000:.0f}s"
        else:
            state = "ok"
        rows.append(
            (
                entry["provider"],
                entry["email"],
                str(entry["maxJobs"]),
                str(entry["executing"]),
                str(entry["available"]),
                state,
            )
        )
    return rows


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


def format_table(rows: list[tuple[str, ...]]) -> str:
    table = [COLUMNS, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
    return "\n".join(lines)


async def run_accounts(
    settings: Settings, redis_url: str, action: str, name: str | None, provider: str | None
) -> int:
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
            print(f"{account.provider} account {account.name} {action}d", file=sys.stderr)
        capacity = await services.slots.capacity(provider)
        print(format_table(account_rows(capacity, int(time.time() * 1000))))
        for line in sync_lines(capacity, int(time.time() * 1000)):
            print(line)
        waiting = {e["provider"]: e["waiting"] for e in capacity["available"]}
        for name_, count in sorted(waiting.items()):
            print(f"{name_}: {count} job(s) waiting for a slot")
        return 0
    finally:
        await services.close()
