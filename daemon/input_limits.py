"""Limits on decoded JSON input (job requests, provider callbacks, jobs enqueued through Redis).

Everything an app or a provider sends is checked here before it reaches code that would choke on
it: nesting deeper than :data:`MAX_DEPTH` (orjson refuses to write more than 254 levels, so a deeper
value would fail only when stored), numbers outside what JSON readers agree on (:data:`MAX_NUMBER`:
integers beyond 2**53 lose precision in JavaScript and beyond 2**64 are refused by orjson; floats
like ``1e308`` turn into huge integers), and strings or keys that are not text. A refusal is an
:class:`~daemon.errors.InvalidRequest` (400) naming where in the value the problem is.
"""

from __future__ import annotations

import math
from typing import Any

from yarl import URL

from daemon.errors import InvalidRequest
from daemon.url_guard import IPNetwork, UrlGuard, UrlRefused

__all__ = [
    "MAX_DEPTH",
    "MAX_NUMBER",
    "artifact_url_problem",
    "check_json",
    "check_reply_url",
    "http_url_problem",
    "json_problem",
]

MAX_DEPTH = 32
MAX_NUMBER = 2**53


def json_problem(value: Any, *, max_depth: int = MAX_DEPTH) -> str | None:
    """Why ``value`` (decoded JSON) is outside the limits, or ``None`` when it is within them.

    Iterative, so a hostile depth cannot exhaust the interpreter's stack either.
    """
    stack: list[tuple[Any, int, str]] = [(value, 1, "$")]
    while stack:
        item, depth, where = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                return f"{where} is nested more than {max_depth} levels deep"
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        return f"{where} has a key that is not a string"
                    stack.append((child, depth + 1, f"{where}.{key[:40]}"))
            else:
                stack.extend((child, depth + 1, f"{where}[{i}]") for i, child in enumerate(item))
        elif isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        elif isinstance(item, int):
            if abs(item) > MAX_NUMBER:
                return f"{where} is a number beyond ±2**53"
        elif isinstance(item, float):
            if not math.isfinite(item) or abs(item) > MAX_NUMBER:
                return f"{where} is a number beyond ±2**53"
        else:
            return f"{where} is not a JSON value"
    return None


def check_json(value: Any, what: str, *, max_depth: int = MAX_DEPTH) -> None:
    """Raise ``InvalidRequest`` (400) when :func:`json_problem` finds one in ``value``."""
    problem = json_problem(value, max_depth=max_depth)
    if problem is not None:
        raise InvalidRequest(f"{what}: {problem}")


def http_url_problem(value: Any) -> str | None:
    """Why ``value`` is not an absolute http(s) URL (artifact links from a provider), or ``None``."""
    if not isinstance(value, str) or not value:
        return "not a URL"
    try:
        url = URL(value)
    except (ValueError, TypeError):
        return "not a valid URL"
    if url.scheme.lower() not in ("http", "https") or not url.raw_host:
        return "only absolute http:// and https:// URLs are allowed"
    return None


def artifact_url_problem(artifact: Any) -> str | None:
    """Why an artifact (``assetUrl``, ``thumbnailUrl``, ``thumbnails{name: {assetUrl}}``) carries a
    link that is not http(s), or ``None`` when every link in it is one."""
    stack: list[Any] = [artifact]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and key.lower().endswith("url"):
                    problem = http_url_problem(child)
                    if problem is not None:
                        return f"artifact {key}: {problem}"
                elif isinstance(child, dict | list):
                    stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
    return None


def check_reply_url(url: str | None, allowed_networks: tuple[IPNetwork, ...]) -> None:
    """Refuse (400) a ``replyUrl`` that the deliveries' guard would never send to: its text, a literal
    address (legacy numeric forms included) and ``localhost`` names, unless an allowed network
    (``GENRELAY_DELIVERY_ALLOW_PRIVATE``) holds it. Other names are resolved at delivery time."""
    if url is None:
        return
    guard = UrlGuard(allowed_networks)
    try:
        parsed = guard.check_url(url)
    except UrlRefused as exc:
        raise InvalidRequest(f"'replyUrl' can never be delivered to: {exc.reason}") from None
    host = (parsed.host or "").removesuffix(".").lower()
    if (host == "localhost" or host.endswith(".localhost")) and not allowed_networks:
        raise InvalidRequest("'replyUrl' can never be delivered to: localhost is a loopback name")
