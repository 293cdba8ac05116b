"""The one error tree of genrelay.

    DaemonError
    ├── SettingsError            bad or missing configuration, found at start
    ├── RequestError             a client sent something we refuse (always a 4xx)
    │   ├── InvalidRequest       400: malformed JSON, wrong types, missing fields
    │   ├── Unauthorized         401: missing or wrong bearer token
    │   ├── NotFound             404: unknown job, route or provider
    │   ├── Conflict             409: the job is in a state that forbids the action
    │   ├── PayloadTooLarge      413: body over the cap
    │   └── UnsupportedMediaType 415: not JSON
    ├── ServiceUnavailable       503: Redis cannot be reached right now
    └── ProviderError            a provider answered with an error or could not be reached
        (its ``action`` says what the caller should do: retry, give up, or stop the account)

The web layer turns every ``RequestError`` into ``{"error": ..., "code": ...}`` in one middleware.
"""

from __future__ import annotations

import enum


class DaemonError(Exception):
    """Raised for every failure genrelay knows how to describe."""


class SettingsError(DaemonError):
    """Raised when a setting or the accounts file is missing or malformed."""


class RequestError(DaemonError):
    """Raised when a client request is refused; carries the HTTP status."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, message={self.message!r})"


class InvalidRequest(RequestError):
    """Raised when a request body or query is malformed or has wrong types."""

    status = 400


class Unauthorized(RequestError):
    """Raised when a bearer token is missing or not accepted."""

    status = 401


class NotFound(RequestError):
    """Raised when a job, route or provider does not exist."""

    status = 404


class Conflict(RequestError):
    """Raised when the job's state does not allow the action."""

    status = 409


class PayloadTooLarge(RequestError):
    """Raised when a body exceeds the size cap."""

    status = 413


class UnsupportedMediaType(RequestError):
    """Raised when a body is not JSON."""

    status = 415


class ServiceUnavailable(DaemonError):
    """Raised when Redis cannot be reached; answered 503 so callers retry."""


class ProviderAction(enum.StrEnum):
    """What to do after a provider error."""

    RETRY = "retry"  # transient: back off (honouring Retry-After) and try again
    GIVE_UP = "give_up"  # the request itself is bad: fail the job with the provider's message
    STOP_ACCOUNT = "stop_account"  # the account cannot work (auth, credits): alert an operator
    LOST = "lost"  # the provider no longer knows the job (expired or never existed)


class Limit(enum.StrEnum):
    """Which of a provider's limits a 429 says was hit (https://docs.ltx.video/rate-limits,
    https://www.vydra.ai/docs/rate-limits)."""

    CONCURRENCY = "concurrency"  # every slot of the account is in use: the account runs fewer than we count
    RATE = "rate"  # too many requests: the account cools down, its slots are untouched


class ProviderError(DaemonError):
    """Raised when a provider call fails; ``action`` tells the caller what to do next."""

    def __init__(
        self,
        message: str,
        *,
        action: ProviderAction,
        status: int | None = None,
        error_type: str | None = None,
        retry_after: float | None = None,
        maybe_accepted: bool = False,
        limit: Limit | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.action = action
        self.status = status
        self.error_type = error_type
        self.retry_after = retry_after
        # The request was sent and no answer came (timeout, disconnect, reset): the provider may
        # have accepted it. A submit that ends so must not be sent again blindly (double billing).
        self.maybe_accepted = maybe_accepted
        # For a 429: which limit the provider says was hit (None: not said, treated as a rate limit).
        self.limit = limit

    def __repr__(self) -> str:
        return (
            f"ProviderError({self.message!r}, action={self.action.value}, status={self.status}, "
            f"error_type={self.error_type!r}, retry_after={self.retry_after}, "
            f"maybe_accepted={self.maybe_accepted}, limit={self.limit})"
        )
