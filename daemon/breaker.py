"""The per-account breaker: an account whose recent submits mostly failed with a 5xx or got no
answer is paused for ``GENRELAY_BREAKER_COOLDOWN`` seconds, and the jobs that wait go to the other
accounts meanwhile.

A paused account is a cooling account (the cooldown of a 429 in ``lua/lib.lua``, only longer and
decided from the outcomes): the slot indexes already keep new jobs off it, and hand its slots out
again when the cooldown ends. The outcomes are a short list per account in Redis
(``keys.breaker_key``) updated by ``lua/breaker.lua``, so every worker process sees the same window,
and recording one costs the same whatever the number of accounts. A success writes nothing unless
failures are remembered.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon import keys
from daemon.scripts import Scripts
from daemon.slots import SlotAllocator

# The breaker opens when this many of the last OUTCOMES submits of an account failed, within WINDOW_S.
FAILURES = 5
OUTCOMES = 8
WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class BreakerState:
    """What recording an outcome found: ``open`` (opened by this outcome), ``cooling`` (the account
    was already cooling down), ``closed``; ``until_ms`` while it is paused."""

    state: str
    until_ms: int = 0

    @property
    def paused(self) -> bool:
        return self.state in ("open", "cooling")


class Breaker:
    def __init__(self, scripts: Scripts, slots: SlotAllocator, cooldown_s: float) -> None:
        self.scripts = scripts
        self.slots = slots
        self.cooldown_ms = int(cooldown_s * 1000)

    async def record(self, provider: str, account: str, *, failed: bool) -> BreakerState:
        scope = self.slots.scope(provider)
        raw = await self.scripts.breaker(
            keys=scope.keys_with(keys.breaker_key(provider, account), keys.account_events_key(provider)),
            args=[
                scope.config(),
                account,
                "1" if failed else "0",
                FAILURES,
                OUTCOMES,
                int(WINDOW_S * 1000),
                self.cooldown_ms,
            ],
        )
        state = str(raw[0])
        return BreakerState(state, int(raw[1]) if len(raw) > 1 else 0)
