from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_funds_error",
    403: "permission_error",  # not in the LTX table; the name its envelope family uses [I]
    404: "not_found_error",
    413: "request_too_large",
    422: "content_filtered_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "service_unavailable",
    529: "overloaded_error",
}

DEFAULT_MESSAGES: dict[int, str] = {
    400: "Invalid request",
    401: "Invalid or missing API key",
    402: "Insufficient funds",
    403: "This API key is not allowed to use this resource",
    404: "Not found",
    405: "Method not allowed",
    413: "Request too large",
    422: "Content was filtered",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
    529: "Service overloaded, try again later",
}

# The standard library has no phrase for 529, and an empty reason phrase trips some clients.
_REASONS: dict[int, str] = {529: "Site Overloaded"}


class ApiError(Exception):
    """Raised anywhere in a handler; the error middleware renders it as the provider's envelope."""

    def __init__(
        self,
        status: int,
        message: str | None = None,
        error_type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message or default_message(status)
        self.error_type = error_type or error_type_for(status)
        self.headers = dict(headers or {})


def error_type_for(status: int) -> str:
    known = ERROR_TYPES.get(status)
    if known is not None:
        return known
    return "api_error" if status >= 500 else "invalid_request_error"


def default_message(status: int) -> str:
    return DEFAULT_MESSAGES.get(status, "Request failed")


def json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload),
        content_type="application/json",
        status=status,
        reason=_REASONS.get(status),
        headers=headers,
    )


def error_response(error: ApiError) -> web.Response:
    envelope = {"type": "error", "error": {"type": error.error_type, "message": error.message}}
    return json_response(envelope, status=error.status, headers=error.headers)


def decode_object(raw: bytes, *, empty: dict[str, Any] | None = None) -> dict[str, Any]:
    """A request body that must be a JSON object; ``empty`` is what a blank body means (None: a 400)."""
    if not raw.strip():
        if empty is None:
            raise ApiError(400, "Request body must be a JSON object")
        return empty
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"Malformed JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")
    return body
