"""Job request validation: the msgspec structs of ``daemon/api_models.py`` against the hand-written
checks they replaced, in the same run.

Run: ``.venv/bin/python -m bench validation``. Each case is a decoded JSON body (what
``POST /v1/jobs``, ``Client.submit`` and the ``accept_job`` task hand to ``JobRequest.from_json``),
validated over and over by each validator in turn; the figure is the best of several rounds, and the
ratio is new / old (above 1: the new validator is faster). "from bytes" adds the JSON decoding
that the HTTP path does first. The old validator is kept below, as it was,
only as this baseline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from daemon.api_models import JobRequest
from daemon.errors import InvalidRequest
from daemon.jobs import DEFAULT_PRIORITY, MAX_PARAMS_BYTES, MAX_REF_LENGTH
from daemon.url_guard import url_problem

ROUNDS = 7
ROUND_SECONDS = 0.15

MINIMAL = {"provider": "ltx", "operation": "text-to-video", "params": {"prompt": "a lighthouse at dawn"}}
CASES: dict[str, dict[str, Any]] = {
    "minimal": MINIMAL,
    "typical": {
        **MINIMAL,
        "params": {
            "prompt": "a lighthouse at dawn",
            "model": "ltx-2-3-fast",
            "duration": 4,
            "resolution": "1920x1080",
        },
        "replyRef": "order-1234",
        "priority": 7,
        "requestId": "order-1234-v1",
    },
    "every field": {
        **MINIMAL,
        "account": "a1",
        "replyUrl": "https://app.example.com/genrelay/done",
        "replyRef": "order-1234",
        "priority": 7,
        "requestId": "order-1234-v1",
        "notifyProgress": True,
    },
    "refused: unknown field": {**MINIMAL, "colour": "red"},
    "refused: priority": {**MINIMAL, "priority": 12},
}


# --- the baseline: the validator as it was before daemon/api_models.py ----------------------------------


@dataclass(frozen=True, slots=True)
class BaselineRequest:
    provider: str
    operation: str
    params: dict[str, Any]
    account: str | None = None
    reply_url: str | None = None
    reply_ref: str | None = None
    priority: int = DEFAULT_PRIORITY
    request_id: str | None = None
    notify_progress: bool = False


def baseline_from_json(body: Any) -> BaselineRequest:
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    unknown = set(body) - {
        "provider",
        "operation",
        "params",
        "account",
        "replyUrl",
        "replyRef",
        "priority",
        "requestId",
        "notifyProgress",
    }
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise InvalidRequest("'params' must be a JSON object")
    if len(orjson.dumps(params)) > MAX_PARAMS_BYTES:
        raise InvalidRequest(f"'params' is larger than {MAX_PARAMS_BYTES} bytes")
    priority = body.get("priority", DEFAULT_PRIORITY)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise InvalidRequest("'priority' must be an integer from 0 to 9 (higher runs first)")
    notify_progress = body.get("notifyProgress", False)
    if not isinstance(notify_progress, bool):
        raise InvalidRequest("'notifyProgress' must be true or false")
    reply_url = _optional_str(body, "replyUrl")
    problem = url_problem(reply_url) if reply_url is not None else None
    if problem is not None:
        raise InvalidRequest(f"'replyUrl' cannot be used: {problem}")
    return BaselineRequest(
        provider=_required_str(body, "provider"),
        operation=_required_str(body, "operation"),
        params=params,
        account=_optional_str(body, "account"),
        reply_url=reply_url,
        reply_ref=_optional_str(body, "replyRef"),
        priority=priority,
        request_id=_optional_str(body, "requestId"),
        notify_progress=notify_progress,
    )


def _required_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'{name}' is required and must be a non-empty string")
    return value


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_REF_LENGTH:
        raise InvalidRequest(f"'{name}' must be a non-empty string of at most {MAX_REF_LENGTH} characters")
    return value


# --- the measurement ------------------------------------------------------------------------------------


def outcome(validate: Callable[[Any], object], body: Any) -> str:
    try:
        validate(body)
    except InvalidRequest as exc:
        return exc.message
    return "accepted"


def rate(validate: Callable[[Any], object], body: Any) -> float:
    """Validations per second over one round."""
    count, batch = 0, 2000
    start = time.perf_counter()
    deadline = start + ROUND_SECONDS
    while True:
        for _ in range(batch):
            try:
                validate(body)
            except InvalidRequest:
                pass
        count += batch
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def from_bytes(validate: Callable[[Any], object]) -> Callable[[bytes], object]:
    """What ``POST /v1/jobs`` does with a body: decode it (``read_json``), then validate it."""
    return lambda raw: validate(orjson.loads(raw))


def measure() -> dict[str, tuple[float, float]]:
    """(old, new) requests/s per case, of the validator alone and with the JSON decoding of the HTTP
    path; the rounds alternate, so both see the same machine load."""
    figures: dict[str, tuple[float, float]] = {}
    for name, body in CASES.items():
        old_says, new_says = outcome(baseline_from_json, body), outcome(JobRequest.from_json, body)
        assert old_says == new_says, f"{name}: the validators disagree ({old_says!r} / {new_says!r})"
        runs: list[tuple[str, Callable[[Any], object], Callable[[Any], object], Any]] = [
            (name, baseline_from_json, JobRequest.from_json, body),
            (
                f"{name}, from bytes",
                from_bytes(baseline_from_json),
                from_bytes(JobRequest.from_json),
                orjson.dumps(body),
            ),
        ]
        for label, old_validate, new_validate, data in runs:
            old: list[float] = []
            new: list[float] = []
            for _ in range(ROUNDS):
                old.append(rate(old_validate, data))
                new.append(rate(new_validate, data))
            figures[label] = (max(old), max(new))
    return figures


def main() -> None:
    figures = measure()
    width = max(len(name) for name in figures)
    print("validation: job requests validated per second, old (hand-written) vs new (msgspec)")
    for name, (old, new) in figures.items():
        print(f"  {name:<{width}}  old {old:>11,.0f}/s  new {new:>11,.0f}/s  new/old {new / old:.2f}")
    ratios = [new / old for old, new in figures.values()]
    print(f"  slowest case new/old {min(ratios):.2f}")


if __name__ == "__main__":
    main()
