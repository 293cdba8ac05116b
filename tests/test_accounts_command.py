"""``genrelay accounts``: the capacity table, and an operator disabling and re-enabling an account."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from daemon.request_budget import FULL_SHARE, RequestBudget, RequestLimits
from tests.conftest import process_env


def accounts(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "accounts", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_accounts_table_and_enable_disable(
    tmp_path: Path, redis_url: str, open_daemon, make_settings
) -> None:
    """``genrelay accounts`` prints the slots table; ``disable`` and ``enable`` change the account in
    Redis, and an unknown name is a usage error."""
    services = await open_daemon(make_settings(accounts={"a1": 1, "a2": 3}))
    env = process_env(tmp_path, redis_url, "http://127.0.0.1:9", {"a1": 1, "a2": 3})
    shown = accounts(env)
    assert shown.returncode == 0, shown.stderr
    rows = [line.split() for line in shown.stdout.splitlines()]
    header = ["provider", "account", "maxJobs", "effectiveMaxJobs", "executing", "available", "state"]
    assert rows[0] == [*header, "requests"]
    assert rows[1:3] == [
        ["ltx", "a1", "1", "1", "0", "1", "ok", "-"],
        ["ltx", "a2", "3", "3", "0", "3", "ok", "-"],
    ]

    disabled = accounts(env, "disable", "a2")
    assert disabled.returncode == 0, disabled.stderr
    assert "a2" in disabled.stdout.splitlines()[2] and "disabled" in disabled.stdout.splitlines()[2]
    capacity = await services.slots.capacity("ltx")
    assert [a["enabled"] for a in capacity["available"]] == [True, False]

    enabled = accounts(env, "enable", "a2")
    assert enabled.returncode == 0
    assert (await services.slots.capacity("ltx"))["available"][1]["enabled"] is True

    unknown = accounts(env, "enable", "nobody")
    assert unknown.returncode == 2
    assert "no account named 'nobody'" in unknown.stderr


async def test_accounts_shows_the_request_budget_of_a_budgeted_account(
    tmp_path: Path, redis_url: str, open_daemon, make_settings
) -> None:  # type: ignore[no-untyped-def]
    """A vydra account's row and JSON say what its request budget counted, per window, of the
    limits it takes with (taken here through the budget's own script)."""
    vydra = {"max_jobs": 2, "requests_per_minute": 30, "requests_per_hour": 500}
    services = await open_daemon(make_settings(accounts={"a1": 1, "vydra/v1": vydra}))
    budget = RequestBudget(services.client, services.scripts)
    limits = RequestLimits.scaled({"minute": 30, "hour": 500}, 60.0, learnt=False)
    for _ in range(3):
        assert await budget.take("vydra", "v1", limits, FULL_SHARE) == 0
    env = process_env(tmp_path, redis_url, "http://127.0.0.1:9", {"a1": 1, "vydra/v1": vydra})
    shown = accounts(env)
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if line.startswith("vydra"))
    assert row.endswith("3/30 min, 3/500 h"), row
    as_json = accounts(env, "--json")
    entry = next(a for a in orjson.loads(as_json.stdout)["accounts"] if a["provider"] == "vydra")
    assert entry["requestBudget"] == {"minute": {"limit": 30, "used": 3}, "hour": {"limit": 500, "used": 3}}
    ltx = next(a for a in orjson.loads(as_json.stdout)["accounts"] if a["provider"] == "ltx")
    assert ltx["requestBudget"] is None
