"""The archive loop: copies every recorded artifact into the archive before its provider URL expires.

One ``Archiver`` per worker process claims due assets of every provider from the archive queues
(``lua/archive_claim.lua``; a claim left by a dead worker is due again after
``GENRELAY_ARCHIVE_CLAIM_TTL``), copies up to ``GENRELAY_ARCHIVE_CONCURRENCY`` at once and records
each outcome (``lua/archive_finish.lua``). An attempt downloads into a partial file under the
staging directory (``daemon/archive_fetch.py``), then hands the complete file to the backend and
only then writes the record. The partial file is kept across failures and crashes, so the next
attempt, in this worker or the next one started on the host, resumes it with ``Range``; a lock on
it (held while its attempt runs) keeps two attempts apart.

Outcomes: ``archived``; ``failed`` for good (refused address, over the size cap, out of tries);
``failed`` and retried (the disk or bucket refused the write); ``pending`` and retried (network,
5xx, timeouts) with backoff and jitter while the URL lives; ``expired`` once the URL is past its
expiry (or the provider keeps refusing it). The job is never touched: its state stays what it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp
import structlog

from daemon.archive_fetch import FetchError, Partial, discard, fetch, open_partial
from daemon.archive_metrics import record_outcome, set_usage
from daemon.archive_state import ArchiveState, Claim
from daemon.archive_store import ArchiveBackend, StorageError, open_backend
from daemon.backoff import backoff_seconds
from daemon.providers.base import USER_AGENT
from daemon.settings import Settings
from daemon.url_guard import UrlGuard
from workers.runtime import WorkerRuntime

log = structlog.get_logger("genrelay.archive")

# Wait between looks at the archive queues: MIN_IDLE_S after a look that found copies to start
# (a burst of completions is still arriving), doubling after each look that found none, up to
# MAX_IDLE_S (a copy of a lone completion waits about half of it to start).
MIN_IDLE_S = 0.02
MAX_IDLE_S = 0.5
# Retries of a copy back off from 2 s up to 5 min (with jitter): a URL that keeps failing costs little.
RETRY_BASE_S = 2.0
RETRY_MAX_S = 300.0
# How often a worker deletes the copies past their retention (and reads the usage for /metrics).
EXPIRY_INTERVAL_S = 30.0
FALLBACK_MIME = "application/octet-stream"


class Archiver:
    def __init__(self, runtime: WorkerRuntime, backend: ArchiveBackend | None = None) -> None:
        self.runtime = runtime
        self.settings: Settings = runtime.services.settings
        self.config = self.settings.archive
        self.state = ArchiveState(runtime.services.client)
        self.backend = backend or open_backend(self.config)
        self.guard = UrlGuard(self.config.allow_private)
        self.claim_ms = int(self.config.claim_ttl * 1000)
        self.asset_retention_ms = int(self.settings.asset_retention * 1000)
        self.in_flight: set[asyncio.Task[None]] = set()
        self.session = aiohttp.ClientSession(
            connector=self.guard.connector(limit=self.config.concurrency * 2),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": USER_AGENT},
            auto_decompress=False,  # the bytes as the provider stores them: their hash, their size
            trust_env=False,
        )

    async def run(self) -> None:
        stopping = self.runtime.stopping
        providers = self.settings.providers()
        next_expiry = 0.0
        idle_s = MAX_IDLE_S
        try:
            while not stopping.is_set():
                if time.monotonic() >= next_expiry:
                    next_expiry = time.monotonic() + min(EXPIRY_INTERVAL_S, self.config.retention / 2)
                    await self.expire()
                more_due = found = False
                for provider in providers:
                    free = self.config.concurrency - len(self.in_flight)
                    if free <= 0:
                        break
                    claims = await self.state.claim(provider, free, self.claim_ms, self.asset_retention_ms)
                    more_due = more_due or len(claims) == free
                    found = found or bool(claims)
                    for claim in claims:
                        task = asyncio.create_task(self.archive(claim))
                        self.in_flight.add(task)
                        task.add_done_callback(self.in_flight.discard)
                idle_s = MIN_IDLE_S if found else min(idle_s * 2, MAX_IDLE_S)
                full = len(self.in_flight) >= self.config.concurrency
                if full or not more_due:
                    await self._pause(full, idle_s)
        finally:
            for task in self.in_flight:
                task.cancel()
            await asyncio.gather(*self.in_flight, return_exceptions=True)
            await self.session.close()

    async def _pause(self, full: bool, idle_s: float) -> None:
        """Between looks at the queues. Full: until half the copies ended (or MAX_IDLE_S). Every
        queue drained: ``idle_s``. Either way the next look takes what came meanwhile in one claim,
        not one claim per copy."""
        stopping = self.runtime.stopping
        deadline = time.monotonic() + (MAX_IDLE_S if full else idle_s)
        refill_at = self.config.concurrency // 2
        stop = asyncio.ensure_future(stopping.wait())
        try:
            while not stopping.is_set() and (left := deadline - time.monotonic()) > 0:
                if full and len(self.in_flight) <= refill_at:
                    return
                waiters: set[asyncio.Future[Any]] = {stop, *self.in_flight} if full else {stop}
                await asyncio.wait(waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()

    async def expire(self) -> None:
        """Delete the copies past GENRELAY_ARCHIVE_RETENTION that no asset refers to any more."""
        try:
            for sha in await self.state.expire():
                await self.backend.delete(sha)
                log.info("archived object deleted after its retention", sha256=sha)
            set_usage(*await self.state.usage())
        except Exception:
            log.exception("archive retention pass failed")

    async def archive(self, claim: Claim) -> None:
        part = self.config.staging_dir / f"{claim.asset_id}.part"
        try:
            try:
                partial = await asyncio.to_thread(open_partial, part)
            except OSError as exc:
                await self._retry(claim, "failed", f"cannot open the partial copy: {exc.strerror or exc}")
                return
            if partial is None:
                return  # another attempt on this host holds it; its claim renewals keep it
            renewing = asyncio.create_task(self._renew(claim))
            try:
                await self._attempt(claim, partial)
            finally:
                renewing.cancel()
                partial.close()
        except Exception:
            log.exception("archive attempt crashed", asset_id=claim.asset_id)

    async def _attempt(self, claim: Claim, partial: Partial) -> None:
        config = self.config
        part = partial.path
        try:
            fetched = await fetch(
                self.session,
                self.guard,
                claim.url,
                partial,
                max_bytes=config.max_bytes,
                read_timeout=config.timeout,
                keep_type=not claim.mime,
            )
            mime = claim.mime or fetched.mime or FALLBACK_MIME
            await self.backend.put(part, fetched.sha256, mime)
            if not claim.mime:
                await asyncio.to_thread(discard, part)  # the Content-Type kept beside it
        except StorageError as exc:
            await self._retry(claim, "failed", exc.args[0] if exc.args else str(exc))
            return
        except FetchError as exc:
            await self._failed(claim, exc)
            return
        fields = {"state": "archived", "sha256": fetched.sha256, "bytes": str(fetched.size), "mime": mime}
        retention_ms = int(config.retention * 1000)
        await self.state.finish(claim, {**fields, "final": "1"}, retention_ms=retention_ms)
        record_outcome("archived", fetched.size)
        log.info(
            "asset archived", asset_id=claim.asset_id, bytes=fetched.size, resumed_from=fetched.resumed_from
        )

    async def _failed(self, claim: Claim, exc: FetchError) -> None:
        if exc.kind in ("refused", "too_large"):
            await self._settle(claim, "failed", exc.message)
        elif exc.kind == "storage":
            await self._retry(claim, "failed", exc.message)
        elif exc.kind == "gone" and (_past(claim.expires_ms) or claim.tries >= self.config.max_tries):
            await self._settle(claim, "expired", f"{exc.message}; the URL has expired")
        else:
            await self._retry(claim, "pending", exc.message)

    async def _retry(self, claim: Claim, state: str, message: str) -> None:
        if _past(claim.expires_ms):
            await self._settle(claim, "expired", f"{message}; the URL expired before a copy succeeded")
            return
        if claim.expires_ms is None and claim.tries >= self.config.max_tries:
            await self._settle(claim, "failed", f"{message} (gave up after {claim.tries} tries)")
            return
        delay = backoff_seconds(claim.tries, RETRY_BASE_S, RETRY_MAX_S)
        retry_ms = int((time.time() + delay) * 1000)
        if claim.expires_ms is not None:
            retry_ms = min(retry_ms, claim.expires_ms)
        await self.state.finish(claim, {"state": state, "message": message}, retry_ms=retry_ms)
        record_outcome(f"retry_{state}", 0)
        log.warning("archive attempt failed", asset_id=claim.asset_id, error=message, tries=claim.tries)

    async def _settle(self, claim: Claim, state: str, message: str) -> None:
        discard(self.config.staging_dir / f"{claim.asset_id}.part")
        await self.state.finish(claim, {"state": state, "message": message, "final": "1"})
        record_outcome(state, 0)
        log.warning("archive gave up", asset_id=claim.asset_id, state=state, error=message)

    async def _renew(self, claim: Claim) -> None:
        while True:
            await asyncio.sleep(self.config.claim_ttl / 3)
            with contextlib.suppress(Exception):
                await self.state.renew(claim, self.claim_ms)


def _past(expires_ms: int | None) -> bool:
    return expires_ms is not None and expires_ms <= time.time() * 1000


async def archive_forever(runtime: WorkerRuntime) -> None:
    await Archiver(runtime).run()
