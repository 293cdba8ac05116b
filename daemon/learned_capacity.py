"""Learned capacity: the slots of an account that someone else uses, as the provider's 429s tell.

A concurrency 429 (LTX ``concurrency_limit_error``, https://docs.ltx.video/rate-limits; useapi.net
429 "maxJobs reached"; vydra 429 with ``limits.type`` ``concurrent``,
https://www.vydra.ai/docs/rate-limits) means the provider's slots of the account are all in use
while we count one free: another client runs jobs on the same key. The slot scripts then lower
the account's effective slot count by one, never below one (``lua/lib.lua`` learn_busy), and give
one slot back after each quiet period of ``GENRELAY_CAPACITY_RECOVERY`` seconds without another
(settle_learned); a capacity listing replaces what was learned at once (``lua/reconcile.lua``).
docs/slots.md "Learned capacity" has the keys.

These helpers compute the same figures for the views (``GET /v1/scheduler/available``, metrics)
from what Redis holds, so that a read between two scripts shows what the next script will apply.
"""

from __future__ import annotations


def learned_now(learned: int, due_ms: float | None, now_ms: int, recovery_ms: int) -> int:
    """The slots concurrency 429s still take from an account at ``now_ms``: ``learned`` less one for
    each quiet period (``recovery_ms``) that began at or after ``due_ms``, as settle_learned does."""
    if learned <= 0:
        return 0
    if due_ms is None or due_ms > now_ms:
        return learned
    back = 1 + int((now_ms - due_ms) // max(1, recovery_ms))
    return max(0, learned - back)


def effective_max_jobs(max_jobs: int, learned: int) -> int:
    """The account's effective slot count: ``maxJobs`` less what concurrency 429s taught, at least
    one (an account configured with none keeps none)."""
    return max(min(max_jobs, 1), max_jobs - learned)
