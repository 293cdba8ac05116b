"""How every genrelay process talks to Redis: one client factory with the same timeouts, retries and
command packing for the web, the workers and the command-line tools.

Where the server comes from (an external URL or the embedded server) is :mod:`daemon.embedded_redis`.
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["REPLY_TIMEOUT_S", "client_options", "connect"]


class HiredisPackingConnection(redis.asyncio.Connection):  # type: ignore[misc]
    """A TCP connection that packs commands with hiredis (C) instead of redis-py's Python loop.

    redis-py's asyncio client packs every argument in Python: a slot script call carries about 25
    (the provider's keys), which cost ~120 us of CPU per call, most of a callback's budget.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str) and " " in args[0]:
            args = (*args[0].split(), *args[1:])  # "CONFIG GET" and friends, as redis-py does
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            packed: list[bytes] = super().pack_command(*args)
            return packed


class HiredisPackingUnixConnection(redis.asyncio.UnixDomainSocketConnection):  # type: ignore[misc]
    """The same packing over a unix socket (the embedded server's default)."""

    pack_command = HiredisPackingConnection.pack_command


# Options that only TCP connections take.
_TCP_ONLY = ("socket_keepalive",)


# Seconds to wait for a reply before a connection counts as broken. Without it, a command sent into a
# network partition (or a Redis frozen by SIGSTOP) waits forever and so does the process. Blocking reads
# (XREAD BLOCK) must block for less than this.
REPLY_TIMEOUT_S = 10.0


def client_options(*, decode_responses: bool = True) -> dict[str, Any]:
    """The options of every long-lived client: retries with exponential backoff on connection errors and
    timeouts (three, then the error reaches the caller), connect and reply timeouts, health checks of
    idle connections every 30 s, TCP keepalive."""
    return {
        "decode_responses": decode_responses,
        "health_check_interval": 30,
        "socket_connect_timeout": 5,
        "socket_timeout": REPLY_TIMEOUT_S,
        "socket_keepalive": True,
        "retry": Retry(ExponentialBackoff(), 3, supported_errors=(RedisConnectionError, RedisTimeoutError)),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }


async def connect(url: str, *, decode_responses: bool = True) -> redis.asyncio.Redis:
    """Return an asyncio client for ``url`` with :func:`client_options`; it does not PING (the first
    command connects)."""
    options = client_options(decode_responses=decode_responses)
    if url.startswith("unix:"):
        for name in _TCP_ONLY:
            options.pop(name)
        options["connection_class"] = HiredisPackingUnixConnection
    else:
        # Only plain TCP; redis-py picks its own class for rediss:// URLs.
        options["connection_class"] = HiredisPackingConnection
    client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(url, **options)
    return client
