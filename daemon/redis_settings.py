"""The ``GENRELAY_REDIS_*`` settings, composed into the one URL :mod:`daemon.redis_connection` connects
with (so every process, and every child ``genrelay run`` starts, connects the same way).

* ``GENRELAY_REDIS_URL``: ``redis://``, ``rediss://`` or ``unix://`` (or the ``redis+sentinel://`` form
  this module composes, which ``genrelay run`` hands to its children).
* ``GENRELAY_REDIS_USERNAME`` / ``GENRELAY_REDIS_PASSWORD``: the ACL user and password, when the URL
  has none (and for the data nodes behind Sentinel). Written as is, no percent-encoding.
* ``GENRELAY_REDIS_TLS_CA``, ``_TLS_CERT``, ``_TLS_KEY``, ``_TLS_CERT_REQS`` (required, optional,
  none): TLS files for ``rediss://`` and for TLS behind Sentinel; options in the URL's query win.
* ``GENRELAY_REDIS_SENTINELS`` (``host:port,host:port``) with ``GENRELAY_REDIS_SENTINEL_MASTER`` (the
  service name, default ``mymaster``), ``GENRELAY_REDIS_SENTINEL_USERNAME`` / ``_PASSWORD``,
  ``GENRELAY_REDIS_SENTINEL_TLS`` (1: talk TLS to the sentinels) and ``GENRELAY_REDIS_TLS`` (1: TLS
  to the data nodes). With sentinels no embedded Redis starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from daemon.errors import SettingsError
from daemon.redis_connection import CERT_REQS, DEFAULT_MASTER, SENTINEL_SCHEMES, parse_target

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["mask_url", "redis_url_from_env", "url_secrets"]

_SECRET_QUERY = ("password", "sentinel_password")


class _Reader(Protocol):
    env: Mapping[str, str]

    def text(self, suffix: str) -> str | None: ...

    def flag(self, suffix: str, default: bool) -> bool: ...


def redis_url_from_env(reader: _Reader) -> str | None:
    """The URL every process connects with, or ``None`` (the embedded server)."""
    url = reader.text("REDIS_URL")
    sentinels = reader.text("REDIS_SENTINELS")
    if url is not None:
        try:
            target = parse_target(url)
        except ValueError as exc:
            raise SettingsError(f"GENRELAY_REDIS_URL {exc}") from None
        if sentinels is not None and target.scheme not in SENTINEL_SCHEMES:
            raise SettingsError(
                "GENRELAY_REDIS_URL and GENRELAY_REDIS_SENTINELS are both set: with Sentinel, leave "
                "GENRELAY_REDIS_URL unset (the sentinels name the primary)"
            )
        if sentinels is None:
            return _with_settings(url, reader)
    if sentinels is None:
        return None
    return _sentinel_url(sentinels, reader)


def _tls_query(reader: _Reader) -> dict[str, str]:
    query = {
        name: value
        for name, suffix in (("ssl_ca_certs", "CA"), ("ssl_certfile", "CERT"), ("ssl_keyfile", "KEY"))
        if (value := reader.text(f"REDIS_TLS_{suffix}"))
    }
    reqs = reader.text("REDIS_TLS_CERT_REQS")
    if reqs is not None:
        if reqs.lower() not in CERT_REQS:
            raise SettingsError(
                f"GENRELAY_REDIS_TLS_CERT_REQS has value {reqs!r}: must be one of {', '.join(CERT_REQS)}"
            )
        query["ssl_cert_reqs"] = reqs.lower()
    return query


def _userinfo(reader: _Reader) -> str:
    user = reader.text("REDIS_USERNAME") or ""
    password = reader.env.get("GENRELAY_REDIS_PASSWORD", "")
    if not password:
        return f"{quote(user, safe='')}@" if user else ""
    return f"{quote(user, safe='')}:{quote(password, safe='')}@"


def _with_settings(url: str, reader: _Reader) -> str:
    """``url`` with the TLS files and the credentials of the settings added where it has none."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    if parts.scheme.lower() == "rediss":
        query = {**_tls_query(reader), **query}
    netloc = parts.netloc
    if "@" not in netloc:
        netloc = _userinfo(reader) + netloc
    if netloc == parts.netloc and query == dict(parse_qsl(parts.query)):
        return url  # as written (urlunsplit would shorten unix:///path to unix:/path)
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))


def _sentinel_url(sentinels: str, reader: _Reader) -> str:
    hosts = [item.strip() for item in sentinels.split(",") if item.strip()]
    query: dict[str, str] = {"master": reader.text("REDIS_SENTINEL_MASTER") or DEFAULT_MASTER}
    sentinel_user = reader.text("REDIS_SENTINEL_USERNAME")
    sentinel_password = reader.env.get("GENRELAY_REDIS_SENTINEL_PASSWORD", "")
    if sentinel_user:
        query["sentinel_username"] = sentinel_user
    if sentinel_password:
        query["sentinel_password"] = sentinel_password
    data_tls = reader.flag("REDIS_TLS", False)
    sentinel_tls = reader.flag("REDIS_SENTINEL_TLS", False)
    if sentinel_tls:
        query["sentinel_tls"] = "1"
    if data_tls or sentinel_tls:
        query.update(_tls_query(reader))
    scheme = "rediss+sentinel" if data_tls else "redis+sentinel"
    url = f"{scheme}://{_userinfo(reader)}{','.join(hosts)}/0?{urlencode(query)}"
    try:
        parse_target(url)
    except ValueError as exc:
        raise SettingsError(
            f"GENRELAY_REDIS_SENTINELS has value {sentinels!r}: the URL made of it {exc}"
        ) from None
    return url


def url_secrets(url: str | None) -> list[str]:
    """The passwords in ``url`` as written and percent-decoded (logs may show either)."""
    if not url:
        return []
    parts = urlsplit(url)
    values = [parts.netloc.rpartition("@")[0].partition(":")[2]]
    values.extend(value for name, value in parse_qsl(parts.query) if name in _SECRET_QUERY)
    found: list[str] = []
    for value in values:
        if value:
            found.extend((value, unquote(value), quote(value, safe="")))
    return found


def mask_url(url: str) -> str:
    """``url`` with its passwords (the data node's, the sentinels') replaced by ``***``."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    query = [(name, "***" if name in _SECRET_QUERY else value) for name, value in parse_qsl(parts.query)]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*")))
