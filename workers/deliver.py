"""The ``deliver_job`` arq task: tell the app, with a signed POST of the job to its ``replyUrl``.

The transition script enqueued this task (``notify_app`` in ``lua/lib.lua``), once per terminal
transition (and progress step, when asked). One run is one attempt:

* the body is the job as ``GET /v1/jobs/{id}`` shows it *now* (it carries the app's ``replyRef``),
  signed the Standard Webhooks way; ``webhook-id`` names the transition (``msg_<job>_<seq>``), so
  every attempt at it carries the same id and the app can drop duplicates;
* 2xx means delivered. Anything else is retried with exponential backoff and jitter, never sooner
  than the app's ``Retry-After``, up to ``GENRELAY_DELIVERY_MAX_TRIES`` attempts; then the delivery
  becomes a dead letter (``genrelay deliveries`` lists them, ``replay`` sends them again);
* the URL goes through the SSRF guard (``daemon/url_guard.py``), redirects included, each hop checked;
  a refused URL is a dead letter at once: retrying cannot make it acceptable.

Every attempt is logged with the job id, the host only (an app's query string may hold a token),
the status and the outcome.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import structlog
from arq import Retry
from yarl import URL

from daemon import archive_state, keys
from daemon.alerts import DEAD_LETTER, raise_alert
from daemon.archive_notify import hold_delivery
from daemon.backoff import backoff_seconds
from daemon.deliveries import DeadLetter, Signer, add_dead_letter, count_failed_try, forget_tries, message_id
from daemon.jobs import Job
from daemon.providers.base import USER_AGENT, retry_after_seconds
from daemon.settings import Settings
from daemon.slots import ARQ_EXPIRY_MS
from daemon.task_guard import arq_id, refuse
from daemon.tasks import Task, task_from_id
from daemon.url_guard import UrlGuard, UrlRefused
from workers.runtime import RUNTIME, WorkerRuntime

log = structlog.get_logger("genrelay.deliver")

# Where arq's ctx keeps the worker's DeliverySender.
DELIVERY_SENDER = "delivery_sender"
MAX_REDIRECTS = 3
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# The longest wait honoured from an app's Retry-After. A queued arq task vanishes when its key expires
# (a day after this task last refreshed it), so no single wait may come near a day.
MAX_RETRY_AFTER_S = 6 * 3600.0


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one attempt went: ``delivered``, ``failed`` (worth a retry) or ``refused`` (never)."""

    outcome: str
    status: int | None = None
    error: str = ""
    retry_after: float | None = None


class DeliverySender:
    """One HTTP session for every delivery of a worker process.

    Its connector resolves through the URL guard, so a connection only ever goes to an address the
    guard checked; the session follows no redirect by itself and keeps no cookies between apps.
    """

    def __init__(self, guard: UrlGuard, signer: Signer, timeout: float, connections: int = 100) -> None:
        self.guard = guard
        self.signer = signer
        self.timeout = timeout
        self.session = aiohttp.ClientSession(
            connector=guard.connector(limit=connections),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": USER_AGENT},
            raise_for_status=False,
            trust_env=False,
        )

    @classmethod
    def open(cls, settings: Settings, secret: str) -> DeliverySender:
        """A sender for ``settings``, signing with the ``whsec_`` ``secret``; needs a running loop."""
        guard = UrlGuard(settings.delivery_allow_private)
        return cls(guard, Signer.from_secret(secret), settings.delivery_timeout, settings.worker_concurrency)

    async def close(self) -> None:
        await self.session.close()

    async def send(self, url: str, msg_id: str, body: bytes) -> Attempt:
        """POST ``body`` to ``url``, signed; the whole attempt, redirects included, within the timeout."""
        headers = {"Content-Type": "application/json", **self.signer.headers(msg_id, body)}
        try:
            async with asyncio.timeout(self.timeout):
                return await self._post(url, headers, body)
        except UrlRefused as exc:
            return Attempt("refused", error=f"refused: {exc.reason}")
        except TimeoutError:
            return Attempt("failed", error=f"no answer within {self.timeout:g} s")
        except aiohttp.ClientConnectorError as exc:
            return Attempt("failed", error=f"cannot connect: {exc.os_error.strerror or exc.os_error}")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            # Only the class: the text of some of these quotes the whole URL.
            return Attempt("failed", error=f"request failed: {type(exc).__name__}")

    async def _post(self, url: str, headers: dict[str, str], body: bytes) -> Attempt:
        target = self.guard.check_url(url)
        for _ in range(MAX_REDIRECTS + 1):
            async with self.session.post(target, data=body, headers=headers, allow_redirects=False) as resp:
                location = resp.headers.get("Location")
                if resp.status not in REDIRECT_STATUSES or not location:
                    return _answer(resp)
            # The same signed POST goes to the next hop: the signature covers the body, not the URL.
            next_target = self.guard.check_url(target.join(URL(location)))
            log.info("delivery redirected", host=target.host, to_host=next_target.host, status=resp.status)
            target = next_target
        return Attempt("failed", error=f"more than {MAX_REDIRECTS} redirects")


def _answer(resp: aiohttp.ClientResponse) -> Attempt:
    if 200 <= resp.status < 300:
        return Attempt("delivered", status=resp.status)
    return Attempt(
        "failed",
        status=resp.status,
        error=f"HTTP {resp.status}",
        retry_after=retry_after_seconds(resp.headers),
    )


def host_of(url: str) -> str:
    """The host of ``url`` for a log line: never the path or query, which may carry the app's token."""
    try:
        return URL(url).host or "?"
    except (ValueError, TypeError):
        return "?"


async def deliver_job(ctx: dict[str, Any], job_id: str, seq: int) -> str:
    runtime: WorkerRuntime = ctx[RUNTIME]
    sender: DeliverySender = ctx[DELIVERY_SENDER]
    client = runtime.services.client
    # notify_app (lua/lib.lua) and a replay schedule it as 'deliver:<job id>:<seq>' for a transition
    # the job has had, and the archive releases a parked one as 'deliver:<job id>:<seq>:archived'
    # (daemon/archive_notify.py); anything else was not scheduled by genrelay.
    scheduled = (f"deliver:{job_id}:{seq}", f"deliver:{job_id}:{seq}:archived")
    if not isinstance(seq, int) or isinstance(seq, bool) or arq_id(ctx) not in scheduled:
        return await refuse(client, Task.DELIVER, ctx, "not scheduled by genrelay")
    job = await runtime.services.store.get(job_id)
    if job is not None and not 0 <= seq <= int(job.fields.get("seq") or 0):
        return await refuse(client, Task.DELIVER, ctx, "the job has had no such transition")
    if job is None:
        log.warning("delivery dropped: the job is gone (expired after its retention)", job_id=job_id, seq=seq)
        return "missing"
    url = job.fields.get("reply_url", "")
    if not url:
        log.warning("delivery dropped: the job has no replyUrl", job_id=job_id, seq=seq)
        return "no_reply_url"
    body = job.to_api()
    artifact = body["status"].get("artifact")
    if job.fields.get("archive_notify") and isinstance(artifact, dict) and artifact.get("assetId"):
        asset_id = artifact["assetId"]
        if await hold_delivery(client, asset_id, job_id, seq):
            log.info("delivery waits for the archive", job_id=job_id, seq=seq, asset_id=asset_id)
            return "waiting_for_archive"
        artifact["archive"] = archive_state.to_api(
            await archive_state.ArchiveState(client).get(asset_id), asset_id
        )
    attempt = await sender.send(url, message_id(job_id, seq), orjson.dumps(body))
    context = {"job_id": job_id, "seq": seq, "host": host_of(url), "status": attempt.status}
    if attempt.outcome == "delivered":
        # A first run that succeeds left no counter; a rerun may follow failed attempts.
        tries = await forget_tries(client, job_id, seq) if int(ctx.get("job_try") or 1) > 1 else 1
        log.info("delivery attempt", outcome="delivered", tries=tries, **context)
        return "delivered"
    tries = await count_failed_try(client, job_id, seq)
    context["tries"] = tries
    settings = runtime.services.settings
    if attempt.outcome == "refused" or tries >= settings.delivery_max_tries:
        await _dead_letter(runtime, job, seq, attempt, tries)
        log.error("delivery attempt", outcome="dead_letter", error=attempt.error, **context)
        return "dead_letter"
    retry_after = min(attempt.retry_after or 0.0, MAX_RETRY_AFTER_S)
    delay = backoff_seconds(tries, settings.retry_base, settings.retry_max, retry_after)
    await _keep_queued_task(runtime, ctx)
    log.warning("delivery attempt", outcome="retry", error=attempt.error, delay_s=round(delay, 3), **context)
    raise Retry(defer=delay)


async def _dead_letter(runtime: WorkerRuntime, job: Job, seq: int, attempt: Attempt, tries: int) -> None:
    letter = DeadLetter(
        job_id=job.id,
        seq=seq,
        url=job.fields.get("reply_url", ""),
        status=attempt.status,
        error=attempt.error,
        tries=tries,
        failed_ms=int(time.time() * 1000),
    )
    await add_dead_letter(runtime.services.client, letter)
    # The app's URL may carry its token: the alert names the host only.
    await raise_alert(
        runtime.services.client,
        runtime.services.settings,
        DEAD_LETTER,
        provider=job.provider,
        account=job.account,
        message=f"delivery to {host_of(letter.url)} gave up after {tries} attempt(s): {attempt.error}",
        jobId=job.id,
        seq=seq,
        status=attempt.status,
    )


async def _keep_queued_task(runtime: WorkerRuntime, ctx: dict[str, Any]) -> None:
    """Give the task's payload key a fresh day (a delivery the archive released has one; a long
    retry schedule with big Retry-After values must not outlive it). A task whose id names it has
    no payload (daemon/tasks.py)."""
    arq_id = ctx.get("job_id")
    if arq_id and task_from_id(arq_id, 0) is None:
        await runtime.services.client.pexpire(keys.ARQ_JOB_PREFIX + arq_id, ARQ_EXPIRY_MS)
