from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from emulator.responses import ApiError

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


@dataclass(slots=True)
class Fault:
    method: str | None
    path_prefix: str
    status: int
    remaining: int
    retry_after: int | None = None
    error_type: str | None = None
    message: str | None = None
    drop_connection: bool = False
    # The request is handled (a create makes and counts its job) and then the connection closes
    # with no answer: the client cannot tell whether it was accepted.
    accept_then_drop: bool = False
    # The request is handled at once, and its answer leaves only this many seconds later.
    hold_seconds: float = 0.0
    # The request is handled (a create makes and counts its job) and the answer is this fault's
    # error all the same (MiniMax's 502/504 "while still accepting jobs").
    accept_then_error: bool = False

    @property
    def handled(self) -> bool:
        """True when the request still reaches its handler (the fault acts on the answer)."""
        return self.accept_then_drop or self.accept_then_error or self.hold_seconds > 0

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and path.startswith(self.path_prefix)

    def to_error(self) -> ApiError:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return ApiError(self.status, self.message, self.error_type, headers)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path_prefix": self.path_prefix,
            "status": self.status,
            "count": self.remaining,
            "retry_after": self.retry_after,
            "error_type": self.error_type,
            "message": self.message,
            "drop_connection": self.drop_connection,
            "accept_then_drop": self.accept_then_drop,
            "hold_seconds": self.hold_seconds,
            "accept_then_error": self.accept_then_error,
        }


class FaultQueue:
    """Injected failures, consumed first-in first-out by the requests they match."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def __bool__(self) -> bool:
        return bool(self._faults)

    def add(self, fault: Fault) -> None:
        self._faults.append(fault)

    def take(self, method: str, path: str) -> Fault | None:
        for index, fault in enumerate(self._faults):
            if fault.matches(method, path):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del self._faults[index]
                return fault
        return None

    def remaining(self) -> int:
        return sum(fault.remaining for fault in self._faults)

    def clear(self) -> None:
        self._faults.clear()

    def to_json(self) -> list[dict[str, Any]]:
        return [fault.to_json() for fault in self._faults]


_FIELDS = frozenset(
    {
        "method",
        "path_prefix",
        "status",
        "count",
        "retry_after",
        "error_type",
        "message",
        "drop_connection",
        "accept_then_drop",
        "hold_seconds",
        "accept_then_error",
    }
)


def parse_fault(body: Mapping[str, Any]) -> Fault:
    """Build a Fault from a control request; raises ValueError naming the offending field."""
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown fault field(s): {', '.join(unknown)}")
    method = _optional_str(body, "method")
    if method is not None and method.upper() not in _METHODS:
        raise ValueError("method must be null or an HTTP method such as GET or POST")
    drop = body.get("drop_connection", False)
    if not isinstance(drop, bool):
        raise ValueError("drop_connection must be a boolean")
    accept_then_drop = body.get("accept_then_drop", False)
    if not isinstance(accept_then_drop, bool):
        raise ValueError("accept_then_drop must be a boolean")
    accept_then_error = body.get("accept_then_error", False)
    if not isinstance(accept_then_error, bool):
        raise ValueError("accept_then_error must be a boolean")
    hold = body.get("hold_seconds", 0)
    if isinstance(hold, bool) or not isinstance(hold, int | float) or not 0 <= hold <= 600:
        raise ValueError("hold_seconds must be a number between 0 and 600")
    if drop and (accept_then_drop or accept_then_error or hold):
        raise ValueError(
            "drop_connection drops before the handler: it cannot be combined with "
            "accept_then_drop or hold_seconds"
        )
    return Fault(
        method=method.upper() if method is not None else None,
        path_prefix=_optional_str(body, "path_prefix") or "/v2/",
        status=_status(body.get("status", 500)),
        remaining=_at_least(body.get("count", 1), "count", 1),
        retry_after=_optional_int(body.get("retry_after"), "retry_after"),
        error_type=_optional_str(body, "error_type"),
        message=_optional_str(body, "message"),
        drop_connection=drop,
        accept_then_drop=accept_then_drop,
        hold_seconds=float(hold),
        accept_then_error=accept_then_error,
    )


def _optional_str(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be a string or null")
    return value


def _status(value: object) -> int:
    status = _at_least(value, "status", 400)
    if status > 599:
        raise ValueError("status must be between 400 and 599")
    return status


def _at_least(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}")
    return value


def _optional_int(value: object, name: str) -> int | None:
    return None if value is None else _at_least(value, name, 0)
