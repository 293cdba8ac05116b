"""Bearer-token authentication of the HTTP API (``/v1/*``).

With ``GENRELAY_API_TOKENS`` set, every ``/v1`` request must carry ``Authorization: Bearer
<token>`` with one of those tokens. Without tokens the API is open, which is meant for a daemon
bound to loopback; the app warns at start when it is not. Health routes and the provider callbacks
(authenticated by their own path token) never need a bearer token.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware
from yarl import URL

from daemon.errors import RequestError, Unauthorized

UNAUTHORIZED_MESSAGE = (
    "missing or wrong bearer token: send Authorization: Bearer <token> (GENRELAY_API_TOKENS)"
)
PROTECTED_PREFIX = "/v1"


def token_accepted(authorization: str | None, tokens: Sequence[str]) -> bool:
    """Whether an ``Authorization`` header value carries one of ``tokens``."""
    scheme, _, credential = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return False
    # aiohttp decodes header bytes with surrogateescape; encode them back the same way.
    presented = credential.strip().encode("utf-8", "surrogateescape")
    # Compare with every token, so the time taken does not depend on which one matched.
    matches = [hmac.compare_digest(presented, token.encode()) for token in tokens]
    return any(matches)


def is_protected(request: web.Request) -> bool:
    """Whether the request targets the API: by its matched route, else (no route) by its path."""
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else request.path
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")


def bearer_auth(tokens: Sequence[str]) -> Middleware:
    """A middleware refusing API requests without an accepted token; lets all through if none is set."""
    accepted = tuple(tokens)

    @web.middleware
    async def bearer_auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            accepted
            and is_protected(request)
            and not token_accepted(request.headers.get(hdrs.AUTHORIZATION), accepted)
        ):
            raise Unauthorized(UNAUTHORIZED_MESSAGE)
        return await handler(request)

    return bearer_auth_middleware


class MisdirectedRequest(RequestError):
    """421: the request names a host this open API does not answer for."""

    status = 421


# Provider callbacks carry their own credential (the token in the path) and may arrive through a
# proxy that names another host: they are not host-checked.
CALLBACK_PREFIX = "/callbacks/"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})


def request_host(host_header: str | None) -> str | None:
    """The host name of a ``Host`` header, lower case, without port or IPv6 brackets."""
    if not host_header:
        return None
    try:
        host = URL(f"http://{host_header.strip()}/").host
    except (ValueError, TypeError):
        return None
    return host.lower() if host else None


def is_loopback_host(host: str) -> bool:
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_check(public_url: str | None, *, exempt: frozenset[str] = frozenset()) -> Middleware:
    """A middleware for the open API (no ``GENRELAY_API_TOKENS``): a request whose ``Host`` is neither a
    loopback name or address nor the host of ``GENRELAY_PUBLIC_URL`` gets 421. A page that rebinds its
    own DNS name to 127.0.0.1 sends its own name as Host, so the operator's browser cannot be used to
    reach the API. ``exempt`` paths (the probes, which orchestrators call by the pod's address) and the
    token-authenticated callbacks pass."""
    public_host = request_host(URL(public_url).raw_authority) if public_url else None

    @web.middleware
    async def host_check_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request_host(request.headers.get(hdrs.HOST))
        if request.path in exempt or request.path.startswith(CALLBACK_PREFIX):
            return await handler(request)
        if host is None or not (is_loopback_host(host) or host == public_host):
            raise MisdirectedRequest(
                "this genrelay answers only for loopback names and GENRELAY_PUBLIC_URL's host "
                "(the API has no tokens): use http://127.0.0.1 or set GENRELAY_API_TOKENS"
            )
        return await handler(request)

    return host_check_middleware
