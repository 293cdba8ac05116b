"""The Lua scripts, read once from ``daemon/lua`` and registered once per Redis client.

Scripts that touch slots start with the shared prelude ``lib.lua`` (key layout, lease and hand-off
helpers); redis-py's ``Script`` runs them with EVALSHA and reloads them after a Redis restart.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

_LUA = resources.files("daemon") / "lua"
_PRELUDE = (_LUA / "lib.lua").read_text()
_STANDALONE = frozenset(
    {
        "claim_polls",
        "claim_tasks",
        "record_asset",
        "take_request",
        "correct_budget",
        "postpone_poll",
        "reject_job",
        "claim_alerts",
    }
)
# Scripts that record assets also get asset_lib.lua (after the slot prelude, when they have it).
_ASSET_LIB = (_LUA / "asset_lib.lua").read_text()
_WITH_ASSETS = frozenset({"transition", "record_asset"})


def script_source(name: str) -> str:
    body = (_LUA / f"{name}.lua").read_text()
    if name in _WITH_ASSETS:
        body = f"{_ASSET_LIB}\n{body}"
    return body if name in _STANDALONE else f"{_PRELUDE}\n{body}"


@dataclass(frozen=True, slots=True)
class Scripts:
    """One registered script per operation; see each ``.lua`` file's header for KEYS and ARGV."""

    create_job: AsyncScript
    claim_submit: AsyncScript
    transition: AsyncScript
    requeue: AsyncScript
    claim_polls: AsyncScript
    reschedule_polls: AsyncScript
    poll_failed: AsyncScript
    sweep: AsyncScript
    sync_accounts: AsyncScript
    set_account: AsyncScript
    reconcile: AsyncScript
    mark_uncertain: AsyncScript
    record_asset: AsyncScript
    take_request: AsyncScript
    correct_budget: AsyncScript
    postpone_poll: AsyncScript
    reject_job: AsyncScript
    claim_tasks: AsyncScript
    upgrade_layout: AsyncScript
    breaker: AsyncScript
    claim_alerts: AsyncScript

    @classmethod
    def register(cls, client: aioredis.Redis) -> Scripts:
        return cls(**{f.name: client.register_script(script_source(f.name)) for f in fields(cls)})

    async def load(self) -> None:
        """Load every script into Redis now, so a syntax error shows at start, not mid-job."""
        for f in fields(self):
            script: AsyncScript = getattr(self, f.name)
            await script.registered_client.script_load(script.script)
