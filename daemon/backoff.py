"""Exponential backoff with jitter, never sooner than the other side asked (``Retry-After``)."""

from __future__ import annotations

import random


def backoff_seconds(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Delay before attempt ``attempt + 1`` (attempt counts from 1): ``base * 2**(attempt-1)``, capped,
    scaled by a random factor in [0.5, 1] so that many clients do not retry in step."""
    delay = min(cap, base * 2 ** max(0, attempt - 1)) * random.uniform(0.5, 1.0)
    return float(max(delay, retry_after or 0.0))
