"""Bearer-token authentication of the HTTP API (``/v1/*``).

With ``GENRELAY_API_TOKENS`` set, every ``/v1`` request must carry ``Authorization: Bearer
<token>`` with one of those tokens. Without tokens the API is open, which is meant for a daemon
bound to loopback; the app warns at start when it is not. Health routes and the provider callbacks
(authenticated by their own path token) never need a bearer token.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from daemon.errors import Unauthorized

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
