"""JSON responses, and the middleware that turns every failure into ``{"error": ..., "code": ...}``.

No stack trace ever reaches a client: a ``RequestError`` or an aiohttp HTTP exception keeps its
status and a message that says what to change, an unreachable Redis is a 503 (callers retry), and
anything else is logged here and answered with a bare 500.
"""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, LooseHeaders
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from daemon.errors import RequestError, ServiceUnavailable, Unauthorized
from daemon.logs import REDACTED

log = structlog.get_logger("genrelay.web")

# Failures that mean "Redis cannot be reached right now", not "genrelay has a bug".
REDIS_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ServiceUnavailable)
# Seconds a client should wait before retrying a 503; Redis restarts and failovers take about that.
RETRY_AFTER_SECONDS = 1


def json_response(data: Any, *, status: int = 200, headers: LooseHeaders | None = None) -> web.Response:
    """Serialize ``data`` with orjson (``web.json_response`` wants a ``dumps`` returning str)."""
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def error_response(status: int, message: str, *, headers: LooseHeaders | None = None) -> web.Response:
    """useapi.net's error shape, ``{"error": message, "code": status}`` (every endpoint page, e.g.
    https://useapi.net/docs/api-ltxstudio-v1/post-ltxstudio-accounts)."""
    return json_response({"error": message, "code": status}, status=status, headers=headers)


def loggable_path(request: web.BaseRequest) -> str:
    """The raw path without its query string, with the token of a callback path masked.

    The raw (still percent-encoded) path is used so that an encoded ``/`` cannot split a token in
    two and leave half of it in the log.
    """
    path = request.rel_url.raw_path
    parts = path.split("/", 3)
    if len(parts) == 4 and parts[1] == "callbacks":
        return f"/callbacks/{parts[2]}/{REDACTED}"
    return path


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every failure of ``handler`` in the JSON error shape."""
    try:
        return await handler(request)
    except RequestError as exc:
        headers = {hdrs.WWW_AUTHENTICATE: "Bearer"} if isinstance(exc, Unauthorized) else None
        return error_response(exc.status, exc.message, headers=headers)
    except web.HTTPException as exc:
        if exc.status < 400:  # a redirect is not an error
            raise
        return _http_error(request, exc)
    except REDIS_UNREACHABLE as exc:
        log.warning("redis unreachable", method=request.method, path=loggable_path(request), error=str(exc))
        return error_response(
            503,
            f"Redis is unreachable: {exc}",
            headers={hdrs.RETRY_AFTER: str(RETRY_AFTER_SECONDS)},
        )
    except ResponseError as exc:
        refusal = redis_refusal(exc)
        if refusal is None:
            log.exception("unhandled error", method=request.method, path=loggable_path(request))
            return error_response(500, "internal error")
        log.warning(
            "redis refused a write", method=request.method, path=loggable_path(request), error=str(exc)
        )
        return error_response(503, refusal, headers={hdrs.RETRY_AFTER: str(RETRY_AFTER_SECONDS)})
    except Exception:
        log.exception("unhandled error", method=request.method, path=loggable_path(request))
        return error_response(500, "internal error")


def redis_refusal(exc: ResponseError) -> str | None:
    """What to tell a client when Redis refuses writes for a while (nothing was written: a script is
    refused at its first write), or None for any other error."""
    message = str(exc)
    if "OOM command not allowed" in message:
        return (
            "Redis is out of memory (maxmemory reached; with maxmemory-policy noeviction it refuses "
            "writes rather than delete jobs): nothing was written. Retry later; the operator must "
            "raise maxmemory or free memory"
        )
    if isinstance(exc, ReadOnlyError) or "READONLY" in message:
        return "Redis is read-only (a replica, or a failover in progress): nothing was written; retry"
    return None


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own exceptions (no route, wrong method, body too large) in the JSON shape."""
    headers: dict[str, str] = {}
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        message = f"method {exc.method} is not allowed on {request.path}: use {allowed}"
        headers[hdrs.ALLOW] = exc.headers[hdrs.ALLOW]
    elif isinstance(exc, web.HTTPNotFound):
        message = f"no route for {request.method} {request.path}"
    elif isinstance(exc, web.HTTPRequestEntityTooLarge):
        message = f"request body is larger than {request.client_max_size} bytes"
    elif exc.text and exc.text != f"{exc.status}: {exc.reason}":
        message = exc.text
    else:
        message = exc.reason.lower()
    return error_response(exc.status, message, headers=headers)
