"""How every genrelay process talks to Redis: one client factory with the same timeouts, retries and
command packing for the web, the workers, arq, ``worker --check`` and the command-line tools.

Where the server comes from (an external URL or the embedded server) is :mod:`daemon.embedded_redis`;
the URL is composed from the ``GENRELAY_REDIS_*`` settings by :mod:`daemon.settings`. Accepted forms:

* ``redis://[user:password@]host:port[/db]`` and ``rediss://...`` (TLS). User and password are
  percent-decoded (``p%40ss%3Aw%2Frd`` is ``p@ss:w/rd``). TLS options go in the query:
  ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs`` (required, optional, none),
  ``ssl_check_hostname``.
* ``unix://[user:password@]/path/to/redis.sock[?db=N]``; as in redis-py, the user and password may
  instead be query options (``?db=0&password=...``), the form the embedded server's URL takes.
* ``redis+sentinel://[user:password@]host1:port1,host2:port2[/db]?master=NAME`` (``rediss+sentinel``:
  TLS to the data nodes). User and password are the data nodes'; ``sentinel_username``,
  ``sentinel_password`` and ``sentinel_tls=1`` (same TLS files) are the sentinels'.

Failover (Sentinel). Every connection asks the sentinels for the primary's address when it connects,
so after a promotion each process finds the new primary by itself: a command on a connection to the
dead primary fails (refused, reset, timed out, or ``READONLY`` from a demoted one, which redis-py turns
into a connection error), is retried with backoff on a fresh connection, and lands on the new primary
once the sentinels name it; until then the caller gets the connection error (the web answers 503).

Which commands are retried. redis-py's retry resends a command whose connection failed, including an
EVALSHA whose reply was lost after the script ran. That is safe for genrelay's scripts because each one
is idempotent under a resend: ``create_job`` answers 'exists' for a taken id; ``claim_submit`` answers
'go' again to the same attempt token; ``transition``, ``requeue``, ``mark_uncertain`` and
``poll_failed`` compare the job's state first and skip a job already moved (``poll_failed`` counts a
resent failure twice at most: one backoff step early); ``sweep``, ``sync_accounts``, ``set_account``,
``reconcile``, ``reschedule_polls``, ``postpone_poll`` and ``record_asset`` converge to the same state;
``take_request`` adds the caller's unique request id, a set member, once; ``claim_polls`` resent claims
a fresh batch, and polls the lost reply had claimed come back when their claim expires. A script that
ran on the old primary and never reached the replica is gone with it; the resend on the new primary
then applies it for the first time. That replication window is the one loss failover can add; see the
README ("Redis high availability") for ``min-replicas-to-write``, which bounds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
import redis.asyncio
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = [
    "BACKGROUND",
    "REPLY_TIMEOUT_S",
    "REQUEST_PATH",
    "SENTINEL_SCHEMES",
    "Timeouts",
    "client_for",
    "client_options",
    "connect",
    "parse_target",
]

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SCHEMES = ("redis", "rediss", "unix", *SENTINEL_SCHEMES)
# The query options a URL may carry (anything else is a typo that would otherwise be ignored).
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
SENTINEL_OPTIONS = ("master", "sentinel_username", "sentinel_password", "sentinel_tls")
UNIX_OPTIONS = ("username", "password")
CERT_REQS = ("required", "optional", "none")
DEFAULT_MASTER = "mymaster"

R = TypeVar("R", bound=redis.asyncio.Redis)


class _HiredisPacking:
    """Packs commands with hiredis (C) instead of redis-py's Python loop.

    redis-py's asyncio client packs every argument in Python: a slot script call carries about 25
    (the provider's keys), which cost ~120 us of CPU per call, most of a callback's budget.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str) and " " in args[0]:
            args = (*args[0].split(), *args[1:])  # "CONFIG GET" and friends, as redis-py does
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            packed: list[bytes] = super().pack_command(*args)  # type: ignore[misc]
            return packed


class HiredisPackingConnection(_HiredisPacking, Connection):  # type: ignore[misc]
    """TCP."""


class HiredisPackingSSLConnection(_HiredisPacking, SSLConnection):  # type: ignore[misc]
    """TCP with TLS."""


class HiredisPackingUnixConnection(_HiredisPacking, UnixDomainSocketConnection):  # type: ignore[misc]
    """A unix socket."""


class HiredisPackingSentinelConnection(_HiredisPacking, SentinelManagedConnection):  # type: ignore[misc]
    """TCP to whichever node the sentinels name the primary."""


class HiredisPackingSentinelSSLConnection(_HiredisPacking, SentinelManagedSSLConnection):  # type: ignore[misc]
    """TLS to whichever node the sentinels name the primary."""


class _SentinelPool(SentinelConnectionPool):  # type: ignore[misc]
    """Closing the client also closes its connections to the sentinels (redis-py leaves them open)."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:  # the client closes; a failover's disconnect keeps in-use connections
            for sentinel in self.sentinel_manager.sentinels:
                await sentinel.connection_pool.disconnect()


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long one command may take, and how often it is tried again on a broken connection."""

    reply: float
    connect: float
    retries: int
    backoff_cap: float


# Seconds to wait for a reply before a connection counts as broken. Without it, a command sent into a
# network partition (or a Redis frozen by SIGSTOP) waits forever and so does the process. Blocking reads
# (XREAD BLOCK) must block for less than this.
REPLY_TIMEOUT_S = 10.0
# Workers, sweeps, command-line tools: patient (a Redis restart or a failover takes seconds).
BACKGROUND = Timeouts(reply=REPLY_TIMEOUT_S, connect=5.0, retries=3, backoff_cap=0.5)
# A web request: two tries of 1.5 s and a short pause stay under 4 s, so a client gets its 503 within
# 5 s of Redis becoming unreachable (blackholed, or a primary gone before the sentinels promote one).
REQUEST_PATH = Timeouts(reply=1.5, connect=1.0, retries=1, backoff_cap=0.2)
# Asking a sentinel where the primary is: each sentinel gets this long before the next one is asked.
SENTINEL_TIMEOUT_S = 0.5


def client_options(*, decode_responses: bool = True, timeouts: Timeouts = BACKGROUND) -> dict[str, Any]:
    """The options of every long-lived client: retries with exponential backoff on connection errors and
    timeouts (then the error reaches the caller), connect and reply timeouts, health checks of idle
    connections every 30 s."""
    errors = (RedisConnectionError, RedisTimeoutError)
    return {
        "decode_responses": decode_responses,
        "health_check_interval": 30,
        "socket_connect_timeout": timeouts.connect,
        "socket_timeout": timeouts.reply,
        "retry": Retry(
            ExponentialBackoff(cap=timeouts.backoff_cap), timeouts.retries, supported_errors=errors
        ),
        "retry_on_error": list(errors),
    }


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed Redis URL: the data node's connection options, and the sentinels when there are some."""

    scheme: str
    options: dict[str, Any]
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = DEFAULT_MASTER
    sentinel_options: dict[str, Any] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return self.scheme.startswith("rediss")


def parse_target(url: str) -> Target:
    """Parse and check ``url`` (see the module docstring for its forms).

    Raises:
        ValueError: An unknown scheme or query option, a bad ``ssl_cert_reqs``, a sentinel URL without
            a sentinel. The message never quotes the URL (it may hold a password).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"must start with one of {', '.join(s + '://' for s in SCHEMES)}")
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    allowed = ("db", *TLS_OPTIONS, *(SENTINEL_OPTIONS if scheme in SENTINEL_SCHEMES else ()))
    if scheme == "unix":
        allowed = (*allowed, *UNIX_OPTIONS)
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise ValueError(f"has unknown query option(s) {', '.join(unknown)}; known: {', '.join(allowed)}")
    if query.get("ssl_cert_reqs", "required").lower() not in CERT_REQS:
        raise ValueError(f"must have ssl_cert_reqs one of {', '.join(CERT_REQS)}")
    tls: dict[str, Any] = {name: query[name] for name in TLS_OPTIONS if name in query}
    if "ssl_check_hostname" in tls:
        tls["ssl_check_hostname"] = tls["ssl_check_hostname"].lower() in ("1", "true", "yes", "on")
    if scheme not in SENTINEL_SCHEMES:
        options: dict[str, Any] = dict(parse_url(url))
        for name in TLS_OPTIONS:
            options.pop(name, None)
        options.pop("connection_class", None)
        if scheme == "rediss":
            options.update(tls)
        return Target(scheme, options)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    options = {"username": unquote(user) or None, "password": unquote(password) or None}
    db = query.get("db") or parts.path.strip("/")
    options["db"] = int(db) if db else 0
    if scheme == "rediss+sentinel":
        options.update(tls)
    sentinels = tuple(_host_port(item) for item in hosts.split(",") if item.strip())
    if not sentinels:
        raise ValueError("names no sentinel (host:port,host:port)")
    sentinel_options: dict[str, Any] = {
        "username": query.get("sentinel_username") or None,
        "password": query.get("sentinel_password") or None,
    }
    if query.get("sentinel_tls", "").lower() in ("1", "true", "yes", "on"):
        sentinel_options.update(ssl=True, **tls)
    return Target(scheme, options, sentinels, query.get("master") or DEFAULT_MASTER, sentinel_options)


def _host_port(item: str) -> tuple[str, int]:
    host, _, port = item.strip().rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must name each sentinel as host:port")
    return host.strip("[]"), int(port)


async def connect(
    url: str, *, decode_responses: bool = True, timeouts: Timeouts = BACKGROUND
) -> redis.asyncio.Redis:
    """Return an asyncio client for ``url`` with :func:`client_options`; it does not PING (the first
    command connects)."""
    return client_for(url, redis.asyncio.Redis, decode_responses=decode_responses, timeouts=timeouts)


def client_for(
    url: str, redis_class: type[R], *, decode_responses: bool = True, timeouts: Timeouts = BACKGROUND
) -> R:
    """A client of ``redis_class`` (arq's ``ArqRedis`` for the worker's pool) for ``url``; nothing is sent
    yet, so this works outside an event loop."""
    target = parse_target(url)
    options = {**client_options(decode_responses=decode_responses, timeouts=timeouts), **target.options}
    if target.sentinels:
        sentinel_kwargs = {
            **target.sentinel_options,
            "socket_timeout": SENTINEL_TIMEOUT_S,
            "socket_connect_timeout": SENTINEL_TIMEOUT_S,
            "decode_responses": True,
        }
        sentinel = Sentinel(target.sentinels, sentinel_kwargs=sentinel_kwargs)
        connection_class: type[Connection] = (
            HiredisPackingSentinelSSLConnection if target.tls else HiredisPackingSentinelConnection
        )
        client: R = sentinel.master_for(
            target.master,
            redis_class=redis_class,
            connection_pool_class=_SentinelPool,
            connection_class=connection_class,
            **options,
        )
        return client
    if target.scheme == "unix":
        connection_class = HiredisPackingUnixConnection
    elif target.tls:
        connection_class = HiredisPackingSSLConnection
    else:
        connection_class = HiredisPackingConnection
        options["socket_keepalive"] = True
    pool = redis.asyncio.ConnectionPool(connection_class=connection_class, **options)
    made: R = redis_class.from_pool(pool)
    return made
