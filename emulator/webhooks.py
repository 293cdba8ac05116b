"""Callback delivery for the useapi.net contract: POST the status model to a job's ``replyUrl``.

useapi documents the callback as "webhook URL for job completion notifications, see GET
assets/jobId for response model" and nothing about signatures, retries or ordering
(docs/providers.md §1.4). So a callback here is one unsigned ``POST`` with ``Content-Type:
application/json``, sent once (no retry when the receiver fails), and the fault knobs of
``EmulatorConfig`` (drop, duplicate, reorder, delay, before the submit response) make the
sloppiness a real sender may show happen on demand.

Time comes from the emulator's clock, so a test that moves a fake clock moves callbacks too. The
sender wakes at least every ``TICK_SECONDS`` of real time to notice a clock it cannot wait on
(a fake one); ``flush()`` sends whatever is due at once, for tests that want no waiting at all.

Safety: callbacks go only to loopback hosts unless ``webhook_allow_remote`` is set, redirects are
never followed, and proxies from the environment are ignored, so the emulator sends nothing off
the machine by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import ipaddress
import itertools
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from yarl import URL

from emulator.config import EmulatorConfig

log = logging.getLogger(__name__)

# How often the sender re-reads the clock while a callback is pending: a fake clock cannot wake it.
TICK_SECONDS = 0.02
SEND_TIMEOUT_SECONDS = 10.0
USER_AGENT = "genrelay-emulator/useapi-callbacks"


@dataclass(slots=True)
class Delivery:
    """One callback: the body is the status model as it was at ``at`` (emulator clock); it leaves
    at ``at`` plus the delay knob."""

    job_id: str
    url: str
    ref: str | None
    body: dict[str, Any]
    at: float
    kind: str  # "progress", "terminal" or "stale" (a progress sent after the terminal one)


def is_loopback_url(url: str) -> bool:
    """True for http(s) URLs whose host is ``localhost`` or a loopback address."""
    try:
        parsed = URL(url)
    except (TypeError, ValueError):
        return False
    host = (parsed.host or "").lower()
    if parsed.scheme not in ("http", "https") or not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def wait_for_clock(clock: Callable[[], float], at: float) -> None:
    """Sleep until ``clock()`` reaches ``at``; works for the real monotonic clock and a fake one.

    Polling is the point: a test's fake clock moves without telling anyone, so no Event exists.
    """
    while (left := at - clock()) > 0:  # noqa: ASYNC110
        await asyncio.sleep(min(left, TICK_SECONDS))


class WebhookDispatcher:
    """Pending callbacks in a heap by event time, sent by one background task over one session.

    Callbacks of one job go out one after another in schedule order (so "stale progress after the
    terminal one" really arrives second); different jobs' callbacks go out concurrently.
    """

    def __init__(
        self, clock: Callable[[], float], config: Callable[[], EmulatorConfig], rng: random.Random
    ) -> None:
        self._clock = clock
        self._config = config
        self._rng = rng
        self._queue: list[tuple[float, int, Delivery]] = []
        self._order = itertools.count()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self.session: aiohttp.ClientSession | None = None
        self.counts: Counter[str] = Counter()
        self.sent_by_ref: Counter[str] = Counter()

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: the one ClientSession and the sender task live with the app."""
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SEND_TIMEOUT_SECONDS))
        task = asyncio.create_task(self._run(), name="emulator-webhooks")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.session.close()
            self.session = None

    def schedule(self, delivery: Delivery) -> None:
        heapq.heappush(self._queue, (delivery.at, next(self._order), delivery))
        self.counts["scheduled"] += 1
        self._wake.set()

    def cancel(self, job_id: str) -> int:
        """Forget the job's pending callbacks (useapi stops tracking a cancelled job); returns how many."""
        kept = [entry for entry in self._queue if entry[2].job_id != job_id]
        dropped = len(self._queue) - len(kept)
        if dropped:
            heapq.heapify(kept)
            self._queue = kept
            self.counts["cancelled"] += dropped
        return dropped

    def pending(self) -> int:
        return len(self._queue)

    async def send_now(self, delivery: Delivery) -> None:
        """Deliver at once, outside the schedule (the callback that beats the submit response)."""
        self.counts["scheduled"] += 1
        await self._deliver([delivery])

    async def flush(self) -> int:
        """Send every callback due by the clock now and wait for them; returns how many were due."""
        async with self._lock:
            due = self._pop_due()
            by_job: dict[str, list[Delivery]] = {}
            for delivery in due:
                by_job.setdefault(delivery.job_id, []).append(delivery)
            await asyncio.gather(*(self._deliver(group) for group in by_job.values()))
            return len(due)

    def reset(self) -> None:
        self._queue.clear()
        self.counts.clear()
        self.sent_by_ref.clear()

    def stats(self) -> dict[str, Any]:
        names = ("scheduled", "sent", "delivered", "failed", "dropped", "duplicated", "blocked", "cancelled")
        data: dict[str, Any] = {name: self.counts[name] for name in names}
        data["pending"] = self.pending()
        data["sent_by_ref"] = dict(self.sent_by_ref)
        return data

    def _pop_due(self) -> list[Delivery]:
        cutoff = self._clock() - self._config().webhook_delay_seconds
        due: list[Delivery] = []
        while self._queue and self._queue[0][0] <= cutoff:
            due.append(heapq.heappop(self._queue)[2])
        return due

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            if not self._queue:
                await self._wake.wait()
                continue
            left = self._queue[0][0] + self._config().webhook_delay_seconds - self._clock()
            if left > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, TICK_SECONDS)):
                        await self._wake.wait()
                continue
            try:
                await self.flush()
            except Exception:  # the sender must outlive any one bad callback
                log.exception("emulator webhook delivery failed")

    async def _deliver(self, group: list[Delivery]) -> None:
        for delivery in group:
            config = self._config()
            if not (config.webhook_allow_remote or is_loopback_url(delivery.url)):
                self.counts["blocked"] += 1
            elif self._rng.random() < config.webhook_drop_rate:
                self.counts["dropped"] += 1
            else:
                copies = 2 if self._rng.random() < config.webhook_duplicate_rate else 1
                self.counts["duplicated"] += copies - 1
                for _ in range(copies):
                    await self._post(delivery)

    async def _post(self, delivery: Delivery) -> None:
        self.counts["sent"] += 1
        if delivery.ref is not None:
            self.sent_by_ref[delivery.ref] += 1
        if self.session is None:
            self.counts["failed"] += 1
            log.warning("emulator webhook to %s not sent: the app is not running", delivery.url)
            return
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        try:
            async with self.session.post(
                delivery.url, data=orjson.dumps(delivery.body), headers=headers, allow_redirects=False
            ) as resp:
                await resp.read()
                ok = 200 <= resp.status < 300
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("emulator webhook to %s failed: %r", delivery.url, exc)
            ok = False
        self.counts["delivered" if ok else "failed"] += 1
