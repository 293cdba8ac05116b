"""Where ``GENRELAY_SECRET`` comes from, and what Redis keeps of it (a key id and a verifier, never the
secret).

The secret mints callback tokens and derives the signing key of the deliveries to apps, so whoever holds
it can forge both. It is therefore never written to Redis, whose contents travel further than a file
(replicas, backups, the AOF, anyone with the Redis password):

* with the embedded Redis, the secret is generated once into ``DATA/secret`` (``0600``) next to the
  server's socket; every process that reaches that socket (so: the daemon's own user on the same
  machine) reads it from there, so ``genrelay run`` and the CLI need no configuration;
* with an external Redis, ``GENRELAY_SECRET`` is required: start-up stops with a message saying so.

Redis keeps ``genrelay:secret-verifier``: ``{key id}:{HMAC of a fixed label}``. A process whose secret
does not match it logs an error at start (its callback URLs would be refused by the others). A secret
kept in Redis by earlier versions (``genrelay:secret``) is moved into the file once, or deleted when
``GENRELAY_SECRET`` is set.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

import redis.asyncio as aioredis
import structlog

from daemon import keys
from daemon.callback_tokens import key_id
from daemon.embedded_redis import embedded_data_dir
from daemon.errors import SettingsError
from daemon.settings import Settings

__all__ = ["SECRET_FILE", "VERIFIER_KEY", "resolve_secret", "verifier"]

log = structlog.get_logger("genrelay.secret")

SECRET_FILE = "secret"
VERIFIER_KEY = f"{keys.PREFIX}:secret-verifier"

MISSING = (
    "GENRELAY_SECRET is required with an external Redis (GENRELAY_REDIS_URL): it signs the callback URLs "
    "and the deliveries to apps, and genrelay does not keep it in Redis, where anyone who can read Redis "
    "could forge both. Generate one (`openssl rand -hex 32`) and give every genrelay process the same "
    "value. An installation that ran without it kept a generated one in Redis: set "
    'GENRELAY_SECRET="$(redis-cli GET genrelay:secret)" to keep the callback URLs already issued'
)


def verifier(secret: str) -> str:
    """``{key id}:{HMAC-SHA256(secret, label)}``: tells two secrets apart, reveals nothing of either."""
    mac = hmac.new(secret.encode(), b"genrelay-secret-verifier", hashlib.sha256).hexdigest()
    return f"{key_id(secret)}:{mac}"


async def resolve_secret(settings: Settings, client: aioredis.Redis, redis_url: str) -> str:
    """The secret this process signs with (see the module docstring).

    Raises:
        SettingsError: An external Redis and no ``GENRELAY_SECRET``.
    """
    secret = settings.secret
    if secret is None:
        data_dir = embedded_data_dir(redis_url)
        if data_dir is None:
            raise SettingsError(MISSING)
        legacy: str | None = await client.get(keys.SECRET)
        secret = _read_or_create(data_dir / SECRET_FILE, legacy or secrets.token_urlsafe(32))
    # Not kept in Redis any more (it is in the file, or in the settings).
    await client.delete(keys.SECRET)
    await _check_shared(client, secret, settings.secret_previous)
    return secret


async def _check_shared(client: aioredis.Redis, secret: str, previous: str | None) -> None:
    mine = verifier(secret)
    stored: str | None = await client.get(VERIFIER_KEY)
    if stored is None or stored == mine or (previous is not None and stored == verifier(previous)):
        # First process, same secret, or a rotation under way (the old secret is our previous one).
        if stored != mine:
            await client.set(VERIFIER_KEY, mine)
        return
    log.error(
        "GENRELAY_SECRET differs from the one other genrelay processes on this Redis use: callbacks and "
        "deliveries signed by one are refused by the others; give every process the same value "
        "(to rotate: the old value in GENRELAY_SECRET_PREVIOUS)",
        key_id=key_id(secret),
        others_key_id=stored.split(":", 1)[0],
    )


def _read_or_create(path: Path, value: str) -> str:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        existing = path.read_text().strip()
        if not existing:
            raise SettingsError(
                f"{path} is empty: delete it (a new secret is generated) or restore it"
            ) from None
        path.chmod(0o600)
        return existing
    with os.fdopen(fd, "w") as file:
        file.write(value)
    return value
