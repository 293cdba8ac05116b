from __future__ import annotations

import dataclasses
import re
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
    # LTX: the share of submits answered 429 rate_limit_error (emulator/ltx.py)
    "ltx_rate_limit_rate",
    # useapi.net callback faults (emulator/webhooks.py): drop, duplicate and delay act on the next
    # callback sent; the others shape the callbacks of jobs submitted from then on.
    "webhook_drop_rate",
    "webhook_duplicate_rate",
    "webhook_reorder",
    "webhook_delay_seconds",
    "webhook_before_submit_response",
    "webhook_progress",
    "completed_without_artifact_reads",
    # useapi.net Kling, MiniMax, PixVerse, Runway (emulator/useapi_services.py)
    "useapi_opaque_ids",
    # vydra.ai (emulator/vydra.py)
    "vydra_rate_window_seconds",
    "vydra_status_shape",
    "vydra_list_webhook_url",
    # result files (emulator/artifacts.py)
    "public_base",
    "artifact_bytes",
    "artifact_urls_expired",
    "artifact_stall_after",
)

# vydra's plans (docs/providers.md §3.5): requests per minute / hour / day and concurrent jobs.
VYDRA_PLANS: dict[str, dict[str, int]] = {
    "free": {"rpm": 10, "rph": 100, "rpd": 500, "concurrent": 2},
    "starter": {"rpm": 30, "rph": 500, "rpd": 5000, "concurrent": 5},
    "creator": {"rpm": 60, "rph": 1500, "rpd": 20000, "concurrent": 10},
    # "custom" in the table; [I] a generous stand-in
    "enterprise": {"rpm": 600, "rph": 20000, "rpd": 200000, "concurrent": 50},
}
VYDRA_ACCOUNT_FIELDS = frozenset({"plan", "rpm", "rph", "rpd", "concurrent", "credits", "organization"})
VYDRA_STATUS_SHAPES = frozenset({"documented", "models"})
VYDRA_KEY_PATTERN = re.compile(r"^vydra_live_user_[A-Za-z0-9]+_[A-Za-z0-9]+$")

USEAPI_SERVICES = frozenset({"kling", "minimax", "pixverse", "runwayml"})

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
    # LTX: this share of submits is answered 429 ``rate_limit_error`` (a request-rate limit,
    # https://docs.ltx.video/rate-limits), drawn from the seeded generator.
    ltx_rate_limit_rate: float = 0.0
    public_base: str = DEFAULT_PUBLIC_BASE
    seed: int | None = None
    # useapi.net (LTX Studio): API token -> {account email: maxJobs}; one token is one subscription.
    useapi_accounts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    # useapi.net Kling, MiniMax, PixVerse and Runway: service -> API token -> {account: maxJobs}
    # (the account is the email, or the MiniMax account id).
    useapi_services: Mapping[str, Mapping[str, Mapping[str, int]]] = field(default_factory=dict)
    # Ids of new MiniMax / PixVerse / Runway jobs leave the account out (the documented ones embed it).
    useapi_opaque_ids: bool = False
    # Callback faults: each callback is dropped / sent twice with these probabilities.
    webhook_drop_rate: float = 0.0
    webhook_duplicate_rate: float = 0.0
    # A stale progress callback follows the terminal one.
    webhook_reorder: bool = False
    # Every callback leaves this many emulator-clock seconds after the event it reports.
    webhook_delay_seconds: float = 0.0
    # The first callback is POSTed before the create request gets its answer (the delay knob does
    # not hold this one back).
    webhook_before_submit_response: bool = False
    # Progress callbacks too, not only the terminal one (LTX Studio documents "completion" only).
    webhook_progress: bool = False
    # Off by default so no callback ever leaves the machine; not a live knob on purpose.
    webhook_allow_remote: bool = False
    # A completed job reads as completed without its artifact this many times (and in its first
    # completion callback): useapi warns that status and artifact can be out of sync
    # (docs/providers.md §1.4).
    completed_without_artifact_reads: int = 0
    # vydra.ai: API key -> {plan (free|starter|creator|enterprise, default free), rpm, rph, rpd,
    # concurrent (override the plan's), credits (default 100000), organization (the id of the
    # organisation the key belongs to, default one per user id: keys of one organisation share
    # its request windows)}.
    vydra_accounts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # The sliding window of vydra's request limit: the plan's rpm counts per this many seconds
    # (60 as documented; tests use a short window); the hour and day windows scale with it (60 and
    # 1440 of it).
    vydra_rate_window_seconds: float = 60.0
    # How a vydra job status reads: "documented" (``id``, ``output{url, videoUrl|imageUrl}``,
    # ``error`` text) or "models" (the /models route's ``jobId``, ``videoUrl``, ``error{message,
    # detail}``); also the webhook body.
    vydra_status_shape: str = "documented"
    # [I] GET /api/v1/jobs entries carry the job's ``webhookUrl`` (so a client can read its ref back).
    vydra_list_webhook_url: bool = False
    # Result files (emulator/artifacts.py): the size of every file, every URL answering 403 as an
    # expired signed URL, a download that stops sending after this many bytes (0: never).
    artifact_bytes: int = 65536
    artifact_urls_expired: bool = False
    artifact_stall_after: int = 0

    def __post_init__(self) -> None:
        for key, max_jobs in self.keys.items():
            if not key:
                raise ValueError("API keys must be non-empty")
            _check_int("max_jobs", max_jobs, 0)
        _check_useapi_accounts(self.useapi_accounts)
        for service, tokens in self.useapi_services.items():
            if service not in USEAPI_SERVICES:
                raise ValueError(f"useapi service must be one of {', '.join(sorted(USEAPI_SERVICES))}")
            _check_useapi_accounts(tokens)
        _check_bool("useapi_opaque_ids", self.useapi_opaque_ids)
        _check_int("default_max_jobs", self.default_max_jobs, 0)
        _check_number("job_seconds", self.job_seconds, 0.0, None)
        _check_number("job_seconds_jitter", self.job_seconds_jitter, 0.0, 1.0)
        _check_number("failure_rate", self.failure_rate, 0.0, 1.0)
        _check_number("retention_seconds", self.retention_seconds, 0.0, None)
        _check_int("retry_after_seconds", self.retry_after_seconds, 0)
        _check_number("ltx_rate_limit_rate", self.ltx_rate_limit_rate, 0.0, 1.0)
        _check_number("webhook_drop_rate", self.webhook_drop_rate, 0.0, 1.0)
        _check_number("webhook_duplicate_rate", self.webhook_duplicate_rate, 0.0, 1.0)
        _check_number("webhook_delay_seconds", self.webhook_delay_seconds, 0.0, None)
        for name in ("webhook_reorder", "webhook_before_submit_response", "webhook_progress"):
            _check_bool(name, getattr(self, name))
        _check_bool("webhook_allow_remote", self.webhook_allow_remote)
        _check_int("completed_without_artifact_reads", self.completed_without_artifact_reads, 0)
        _check_vydra_accounts(self.vydra_accounts)
        _check_number("vydra_rate_window_seconds", self.vydra_rate_window_seconds, 0.001, None)
        if self.vydra_status_shape not in VYDRA_STATUS_SHAPES:
            raise ValueError(f"vydra_status_shape must be one of {', '.join(sorted(VYDRA_STATUS_SHAPES))}")
        _check_bool("vydra_list_webhook_url", self.vydra_list_webhook_url)
        _check_int("artifact_bytes", self.artifact_bytes, 1)
        _check_bool("artifact_urls_expired", self.artifact_urls_expired)
        _check_int("artifact_stall_after", self.artifact_stall_after, 0)

    def with_knobs(self, updates: Mapping[str, Any]) -> EmulatorConfig:
        """A copy with some live knobs changed; raises ValueError on unknown or invalid values."""
        unknown = sorted(set(updates) - set(LIVE_KNOBS))
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **dict(updates))

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["keys"] = dict(self.keys)
        data["useapi_accounts"] = {token: dict(emails) for token, emails in self.useapi_accounts.items()}
        data["useapi_services"] = {
            service: {token: dict(names) for token, names in tokens.items()}
            for service, tokens in self.useapi_services.items()
        }
        data["vydra_accounts"] = {key: dict(account) for key, account in self.vydra_accounts.items()}
        return data


def check_vydra_account(key: str, account: Mapping[str, Any]) -> None:
    """A vydra key in vydra's format with known fields; raises ValueError naming the problem."""
    if not VYDRA_KEY_PATTERN.match(key):
        raise ValueError(f"vydra API keys look like vydra_live_user_<id>_<random>, not {key!r}")
    unknown = sorted(set(account) - VYDRA_ACCOUNT_FIELDS)
    if unknown:
        raise ValueError(f"unknown vydra account field(s): {', '.join(unknown)}")
    plan = account.get("plan", "free")
    if plan not in VYDRA_PLANS:
        raise ValueError(f"vydra plan must be one of {', '.join(VYDRA_PLANS)}")
    for name, minimum in (("rpm", 1), ("rph", 1), ("rpd", 1), ("concurrent", 0), ("credits", 0)):
        if name in account:
            _check_int(name, account[name], minimum)
    organization = account.get("organization")
    if organization is not None and (not isinstance(organization, str) or not organization):
        raise ValueError("organization must be a non-empty string")


def _check_vydra_accounts(accounts: Mapping[str, Mapping[str, Any]]) -> None:
    for key, account in accounts.items():
        check_vydra_account(key, account)


def _check_useapi_accounts(accounts: Mapping[str, Mapping[str, int]]) -> None:
    """Tokens and emails non-empty, maxJobs >= 0, and each email under one token only: the
    emulator's per-account stats are keyed by email."""
    seen: set[str] = set()
    for token, emails in accounts.items():
        if not token:
            raise ValueError("useapi tokens must be non-empty")
        for email, max_jobs in emails.items():
            if not email:
                raise ValueError("useapi account emails must be non-empty")
            if email in seen:
                raise ValueError(f"useapi account {email} is configured under more than one token")
            seen.add(email)
            _check_int("maxJobs", max_jobs, 0)


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a boolean")


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
