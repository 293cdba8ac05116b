"""Telling the app: what the worker and the CLI share about deliveries to an app's replyUrl.

A job whose request carried ``replyUrl`` gets one delivery per terminal transition (and per progress
step when it asked for ``notifyProgress``): ``lua/lib.lua`` enqueues the arq task ``deliver_job`` with
args ``[job_id, seq]`` and arq id ``deliver:<job_id>:<seq>`` in the transition's own script, and
``workers/deliver.py`` sends it. This module holds:

* signing, the Standard Webhooks way (https://www.standardwebhooks.com/): ``webhook-id``,
  ``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256>`` over
  ``"{id}.{timestamp}.{body}"``, with a ``whsec_`` secret;
* the try counter of one delivery, and the dead letters of deliveries that gave up;
* replaying dead letters, and the secret ``genrelay deliveries secret`` prints (the command itself
  is ``daemon/cli/deliveries.py``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import orjson
import redis.asyncio as aioredis

from daemon import keys
from daemon.redis_connection import connect
from daemon.secret_store import resolve_secret
from daemon.settings import Settings

SECRET_PREFIX = "whsec_"
# Domain separation: the delivery key derived from GENRELAY_SECRET can never equal a key that secret
# signs anything else with (callback tokens). Changing this string changes every app's secret.
DERIVATION_LABEL = b"genrelay webhook delivery signing key v1"


def derive_secret(shared_secret: str) -> str:
    """The ``whsec_`` secret every process derives from the shared secret (GENRELAY_SECRET, or the one
    generated into Redis), so no extra value has to be stored or distributed."""
    key = hmac.new(shared_secret.encode(), DERIVATION_LABEL, hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(key).decode()


def signing_secret(settings: Settings, shared_secret: str) -> str:
    """GENRELAY_DELIVERY_SECRET when set, else :func:`derive_secret`; what ``genrelay deliveries secret``
    prints for the app to verify with."""
    return settings.delivery_secret or derive_secret(shared_secret)


def message_id(job_id: str, seq: int) -> str:
    """``webhook-id``: the same for every attempt at one transition, so the app can drop duplicates."""
    return f"msg_{job_id}_{seq}"


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs delivery bodies with one ``whsec_`` secret."""

    key: bytes

    @classmethod
    def from_secret(cls, secret: str) -> Signer:
        return cls(base64.b64decode(secret.removeprefix(SECRET_PREFIX)))

    def signature(self, msg_id: str, timestamp: int, body: bytes) -> str:
        signed = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
        return "v1," + base64.b64encode(hmac.new(self.key, signed, hashlib.sha256).digest()).decode()

    def headers(self, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        """The three Standard Webhooks headers; the timestamp is the attempt's, so a retry is fresh."""
        when = int(time.time()) if timestamp is None else timestamp
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(when),
            "webhook-signature": self.signature(msg_id, when, body),
        }


# --- try counter ----------------------------------------------------------------------------------------


async def count_failed_try(client: aioredis.Redis, job_id: str, seq: int) -> int:
    """Record one more failed attempt at a delivery and return how many attempts there have been.

    Counted by us rather than by arq's ``job_try``, which also counts a worker's shutdown cancelling a
    task (arq #267): only a request that was really sent and failed uses up one of the app's tries.
    A delivery that succeeds at once writes nothing. One round, no transaction: both commands go in
    one write, and a counter left without its expiry is deleted when the delivery ends.
    """
    key = keys.delivery_tries_key(job_id, seq)
    async with client.pipeline(transaction=False) as pipe:
        pipe.incr(key)
        pipe.expire(key, keys.DELIVERY_TRIES_TTL_S)
        failed, _ = await pipe.execute()
    return int(failed)


async def forget_tries(client: aioredis.Redis, job_id: str, seq: int) -> int:
    """The delivery succeeded: drop its counter; how many attempts it took (1 when none failed)."""
    key = keys.delivery_tries_key(job_id, seq)
    async with client.pipeline(transaction=False) as pipe:
        pipe.get(key)
        pipe.delete(key)
        failed, _ = await pipe.execute()
    return int(failed or 0) + 1


# --- dead letters ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A delivery that gave up: the last try failed, or the URL was refused (no retry then)."""

    job_id: str
    seq: int
    url: str
    status: int | None  # the app's last HTTP status; None when no answer came (network, refused)
    error: str
    tries: int
    failed_ms: int

    @property
    def field(self) -> str:
        return dead_letter_field(self.job_id, self.seq)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> DeadLetter:
        return cls(**orjson.loads(raw))


def dead_letter_field(job_id: str, seq: int) -> str:
    return f"{job_id}:{seq}"


async def add_dead_letter(client: aioredis.Redis, letter: DeadLetter) -> None:
    """Keep the dead letter (replacing an older one of the same delivery) and drop its try counter."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.hset(keys.DELIVERIES_DEAD, letter.field, letter.to_json())
        pipe.delete(keys.delivery_tries_key(letter.job_id, letter.seq))
        await pipe.execute()


async def dead_letters(client: aioredis.Redis, job_id: str | None = None) -> list[DeadLetter]:
    """Every dead letter (or those of one job), oldest failure first."""
    raw: dict[str, str] = await client.hgetall(keys.DELIVERIES_DEAD)
    letters = [DeadLetter.from_json(value) for value in raw.values()]
    if job_id is not None:
        letters = [letter for letter in letters if letter.job_id == job_id]
    return sorted(letters, key=lambda letter: (letter.failed_ms, letter.job_id, letter.seq))


async def replay(client: aioredis.Redis, letters: Iterable[DeadLetter]) -> int:
    """Enqueue each delivery again with a fresh set of tries and remove its dead letter; returns how
    many were replayed.

    Each one is one MULTI: the queue entry (same id as the original, ``deliver:<job>:<seq>``, so the
    app sees the same ``webhook-id``; the id says what to run, daemon/tasks.py), the reset counter
    and the removed dead letter land together. ``NX`` makes a replay of a delivery that is already
    queued change nothing.
    """
    count = 0
    for letter in letters:
        arq_id = f"deliver:{letter.job_id}:{letter.seq}"
        now_ms = int(time.time() * 1000)
        async with client.pipeline(transaction=True) as pipe:
            pipe.zadd(keys.ARQ_QUEUE, {arq_id: now_ms}, nx=True)
            pipe.delete(keys.delivery_tries_key(letter.job_id, letter.seq))
            pipe.hdel(keys.DELIVERIES_DEAD, letter.field)
            await pipe.execute()
        count += 1
    return count


async def show_secret(settings: Settings, redis_url: Callable[[], str]) -> str:
    """The ``whsec_`` secret apps verify with. Redis is only asked (``redis_url`` only called) when
    neither GENRELAY_DELIVERY_SECRET nor GENRELAY_SECRET is set, i.e. the secret was generated in the
    embedded server's data dir."""
    if settings.delivery_secret or settings.secret:
        return signing_secret(settings, settings.secret or "")
    url = redis_url()
    client = await connect(url)
    try:
        return signing_secret(settings, await resolve_secret(settings, client, url))
    finally:
        await client.aclose()
