from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Knobs a running emulator lets tests change through POST /_emulator/config.
LIVE_KNOBS: tuple[str, ...] = (
    "job_seconds",
    "job_seconds_jitter",
    "failure_rate",
    "retention_seconds",
    "retry_after_seconds",
)

DEFAULT_PUBLIC_BASE = "https://storage.emulator.invalid"


@dataclass(frozen=True)
class EmulatorConfig:
    keys: Mapping[str, int] = field(default_factory=dict)
    accept_any_key: bool = False
    default_max_jobs: int = 2
    job_seconds: float = 3.0
    job_seconds_jitter: float = 0.0
    failure_rate: float = 0.0
    retention_seconds: float = 86400.0
    retry_after_seconds: int = 1
    public_base: str = DEFAULT_PUBLIC_BASE
    seed: int | None = None

    def __post_init__(self) -> None:
        for key, max_jobs in self.keys.items():
            if not key:
                raise ValueError("API keys must be non-empty")
            _check_int("max_jobs", max_jobs, 0)
        _check_int("default_max_jobs", self.default_max_jobs, 0)
        _check_number("job_seconds", self.job_seconds, 0.0, None)
        _check_number("job_seconds_jitter", self.job_seconds_jitter, 0.0, 1.0)
        _check_number("failure_rate", self.failure_rate, 0.0, 1.0)
        _check_number("retention_seconds", self.retention_seconds, 0.0, None)
        _check_int("retry_after_seconds", self.retry_after_seconds, 0)

    def with_knobs(self, updates: Mapping[str, Any]) -> EmulatorConfig:
        """A copy with some live knobs changed; raises ValueError on unknown or invalid values."""
        unknown = sorted(set(updates) - set(LIVE_KNOBS))
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **dict(updates))

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["keys"] = dict(self.keys)
        return data


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}")


def _check_number(name: str, value: object, minimum: float, maximum: float | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}")
