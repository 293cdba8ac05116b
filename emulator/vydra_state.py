"""What the vydra.ai emulator remembers: accounts per API key (plan, credits, request window),
jobs, assets, and the webhooks jobs will get (docs/providers.md §3; assets §3.3).

A job's status is a pure function of its start, duration and fate on the emulator clock (as in the
other contracts), so reads, listings and webhooks agree. Choices where the documents are silent [I]:

* the request limits are sliding windows over the requests accepted (a refused request is not
  counted, so a client that waits recovers): ``vydra_rate_window_seconds`` for the minute, 60 and
  1440 times it for the hour and the day; they are the organisation's, shared by its keys (vydra:
  limits are per organisation), each key's plan limits applied to them;
* the concurrent-jobs cap counts jobs submitted and not yet ended or cancelled;
* credits are charged at submit and refunded when the job fails or is cancelled;
* cancel (``DELETE /jobs/{id}``) ends a running job at once as ``cancelled``, frees its slot,
  voids its pending webhooks; the job stays readable until its retention ends;
* a job reads 404 ``retention_seconds`` after it ends; its asset stays (assets are permanent);
* ``submissions_by_ref`` counts accepted submissions by the ``ref`` query parameter of their
  ``webhookUrl``.
"""

from __future__ import annotations

import bisect
import heapq
import math
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiohttp import web

from emulator.config import VYDRA_PLANS, EmulatorConfig
from emulator.ltx import failure_message
from emulator.ltx_state import EmulatorState, iso_utc
from emulator.webhooks import Delivery, WebhookDispatcher

DEFAULT_CREDITS = 100_000
PENDING_FRACTION = 0.1
# The hour and the day, in minutes: their windows scale with the minute's.
HOUR_MINUTES = 60
DAY_MINUTES = 1440
PROGRESS_FRACTIONS = (0.0, 0.5)
STALE_FRACTION = 0.5  # the reorder knob replays the job as it was half way, after the end

# Workflow -> (kind of output, required input fields, model -> credits, default model).
WORKFLOWS: dict[str, tuple[str, tuple[str, ...], dict[str, int], str]] = {
    "generate_video": (
        "video",
        ("prompt",),
        {"veo3": 175, "kling-3.1": 300, "seedance": 150, "seedance-2": 250, "grok-imagine": 150},
        "veo3",
    ),
    "generate_image": ("image", ("prompt",), {"gemini-image": 5, "grok-imagine": 8}, "gemini-image"),
    "generate_asmr": ("video", ("theme",), {"default": 175}, "default"),
    # [I] prices of these two are not published
    "lipsync_video": ("video", ("video_url", "audio_url"), {"default": 100}, "default"),
    "house-timelapse": ("video", ("image_url",), {"default": 50}, "default"),
}
EXTENSIONS = {"video": "mp4", "image": "png", "audio": "mp3"}


@dataclass(slots=True)
class VydraJob:
    id: str
    key: str
    workflow: str
    model: str
    kind: str
    inputs: dict[str, Any]
    credits: int
    start: float  # emulator clock
    duration: float
    error_type: str | None
    wall_start: float
    webhook_url: str | None
    ref: str | None
    cancelled_at: float | None = None

    @property
    def end(self) -> float:
        return self.start + self.duration if self.cancelled_at is None else self.cancelled_at

    def status_at(self, now: float) -> str:
        if self.cancelled_at is not None and now >= self.cancelled_at:
            return "cancelled"
        # Compared with the end itself (not elapsed vs duration), so the instant of the end reads
        # as ended whatever the float rounding.
        if now < self.start + self.duration * PENDING_FRACTION and now < self.start + self.duration:
            return "pending"
        if now < self.start + self.duration:
            return "running"
        return "completed" if self.error_type is None else "failed"

    def progress_at(self, now: float) -> int:
        status = self.status_at(now)
        if status == "completed":
            return 100
        if status in ("failed", "cancelled") or self.duration <= 0:
            return 0
        return max(0, min(99, int(100 * (now - self.start) / self.duration + 1e-6)))

    def wall_at(self, now: float) -> float:
        return self.wall_start + (now - self.start)

    def output(self, public_base: str) -> dict[str, str]:
        base = f"{public_base.rstrip('/')}/vydra/{self.id}"
        url = f"{base}.{EXTENSIONS[self.kind]}"
        out = {"url": url, f"{self.kind}Url": url}
        if self.kind == "video":
            out["thumbnailUrl"] = f"{base}-thumbnail.jpg"
        return out


@dataclass(slots=True)
class RequestWindows:
    """An organisation's accepted requests: of the last minute, and of the last day."""

    minute: deque[float] = field(default_factory=deque)
    day: deque[float] = field(default_factory=deque)
    max_in_minute: int = 0
    max_in_hour: int = 0


@dataclass(slots=True)
class VydraAccount:
    key: str
    plan: str
    rpm: int
    rph: int
    rpd: int
    concurrent: int
    credits: int
    organization: str
    windows: RequestWindows = field(default_factory=RequestWindows)
    peak: int = 0
    submitted: int = 0
    rejected_rate: int = 0
    rejected_rate_hour: int = 0
    rejected_rate_day: int = 0
    rejected_concurrent: int = 0
    polls: int = 0
    requests: int = 0
    max_requests_in_window: int = 0
    cancelled: int = 0
    live: dict[str, VydraJob] = field(default_factory=dict)  # submitted, not yet ended
    unsettled: dict[str, VydraJob] = field(default_factory=dict)  # charged; refund if it fails
    assets: list[dict[str, Any]] = field(default_factory=list)  # oldest first

    def executing(self, now: float) -> int:
        for job_id in [job_id for job_id, job in self.live.items() if job.end <= now]:
            del self.live[job_id]
        return len(self.live)

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "rpm": self.rpm,
            "concurrent": self.concurrent,
            "executing": self.executing(now),
            "peak": self.peak,
            "submitted": self.submitted,
            "organization": self.organization,
            "rejected_429": self.rejected_rate + self.rejected_concurrent,
            "rejected_429_rate": self.rejected_rate,
            "rejected_429_rate_hour": self.rejected_rate_hour,
            "rejected_429_rate_day": self.rejected_rate_day,
            "rejected_429_concurrent": self.rejected_concurrent,
            "polls": self.polls,
            "requests": self.requests,
            "max_requests_in_window": self.max_requests_in_window,
            "cancelled": self.cancelled,
            "credits_remaining": self.credits,
        }


def ref_of(url: str | None) -> str | None:
    """The ``ref`` query parameter of a webhook URL, if any."""
    if not url:
        return None
    values = parse_qs(urlsplit(url).query).get("ref")
    return values[0] if values else None


class VydraState:
    """Accounts, jobs, assets and webhooks of the vydra.ai contract; knobs, clock and random
    source come from the shared ``EmulatorState`` on every use."""

    def __init__(self, emulator: EmulatorState) -> None:
        self.emulator = emulator
        self.webhooks = WebhookDispatcher(emulator.clock, lambda: emulator.config, emulator.rng)
        self.accounts: dict[str, VydraAccount] = {}
        self.jobs: dict[str, VydraJob] = {}  # submit order
        self.submissions_by_ref: Counter[str] = Counter()
        self._expiry: list[tuple[float, str]] = []
        self._load_accounts()

    @property
    def config(self) -> EmulatorConfig:
        return self.emulator.config

    def now(self) -> float:
        return self.emulator.clock()

    def register(self, key: str, spec: dict[str, Any]) -> VydraAccount:
        """Add an account or change its plan, limits or credits."""
        account = self.accounts.get(key)
        fresh = self._joined(_account(key, spec))
        if account is None:
            self.accounts[key] = fresh
            return fresh
        for name in ("plan", "rpm", "rph", "rpd", "concurrent", "organization", "windows"):
            setattr(account, name, getattr(fresh, name))
        if "credits" in spec:
            account.credits = fresh.credits
        return account

    def minute_s(self) -> float:
        return self.config.vydra_rate_window_seconds

    def _windows_of(self, account: VydraAccount) -> RequestWindows:
        """The organisation's windows, trimmed to now."""
        now = self.now()
        windows = account.windows
        while windows.minute and windows.minute[0] <= now - self.minute_s():
            windows.minute.popleft()
        while windows.day and windows.day[0] <= now - DAY_MINUTES * self.minute_s():
            windows.day.popleft()
        return windows

    def _used_in_hour(self, windows: RequestWindows) -> int:
        since = self.now() - HOUR_MINUTES * self.minute_s()
        return len(windows.day) - bisect.bisect_right(windows.day, since)

    def admit(self, account: VydraAccount) -> tuple[bool, int, float, str]:
        """Count one request against the organisation's sliding windows: (accepted, used in the
        minute, the minute's reset at wall seconds, the window that refused it or ""). A refused
        request is not counted."""
        now = self.now()
        windows = self._windows_of(account)
        refused = ""
        if len(windows.minute) >= account.rpm:
            refused, account.rejected_rate = "minute", account.rejected_rate + 1
        elif self._used_in_hour(windows) >= account.rph:
            refused, account.rejected_rate_hour = "hour", account.rejected_rate_hour + 1
        elif len(windows.day) >= account.rpd:
            refused, account.rejected_rate_day = "day", account.rejected_rate_day + 1
        if not refused:
            windows.minute.append(now)
            windows.day.append(now)
            account.requests += 1
            account.max_requests_in_window = max(account.max_requests_in_window, len(windows.minute))
            windows.max_in_minute = max(windows.max_in_minute, len(windows.minute))
            windows.max_in_hour = max(windows.max_in_hour, self._used_in_hour(windows))
        oldest = windows.minute[0] if windows.minute else now
        reset_wall = time.time() + (oldest + self.minute_s() - now)
        used = len(windows.minute) + (1 if refused == "minute" else 0)
        return not refused, used, reset_wall, refused

    def retry_after(self, account: VydraAccount, refused: str = "minute") -> int:
        """Whole seconds until the window that refused has room again (at least 1)."""
        now = self.now()
        windows = self._windows_of(account)
        if refused == "minute":
            first, span = (windows.minute[0] if windows.minute else None), self.minute_s()
        elif refused == "hour":
            span = HOUR_MINUTES * self.minute_s()
            used = self._used_in_hour(windows)
            first = windows.day[len(windows.day) - used] if used else None
        else:
            first, span = (windows.day[0] if windows.day else None), DAY_MINUTES * self.minute_s()
        if first is None:
            return 1
        return max(1, math.ceil(first + span - now))

    def usage(self, account: VydraAccount) -> dict[str, Any]:
        windows = self._windows_of(account)
        return {
            "minute": {"used": len(windows.minute), "limit": account.rpm},
            "hour": {"used": self._used_in_hour(windows), "limit": account.rph},
            "day": {"used": len(windows.day), "limit": account.rpd},
        }

    def submit(
        self, account: VydraAccount, workflow: str, model: str, inputs: dict[str, Any], webhook: str | None
    ) -> VydraJob:
        """A new job: the caller checked the concurrency cap and the credits."""
        now = self.now()
        kind, _, prices, _ = WORKFLOWS[workflow]
        text = str(inputs.get("prompt") or inputs.get("theme") or "")
        duration, error_type = self.emulator.plan(text)
        rng = self.emulator.rng
        job = VydraJob(
            id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            key=account.key,
            workflow=workflow,
            model=model,
            kind=kind,
            inputs=dict(inputs),
            credits=prices[model],
            start=now,
            duration=duration,
            error_type=error_type,
            wall_start=time.time(),
            webhook_url=webhook,
            ref=ref_of(webhook),
        )
        executing = account.executing(now)
        account.credits -= job.credits
        self.jobs[job.id] = job
        account.live[job.id] = job
        account.unsettled[job.id] = job
        heapq.heappush(self._expiry, (job.end, job.id))
        account.submitted += 1
        account.peak = max(account.peak, executing + 1)
        if job.ref is not None:
            self.submissions_by_ref[job.ref] += 1
        return job

    def settle(self, account: VydraAccount) -> None:
        """Refund the jobs that failed and file the assets of the ones that completed."""
        now = self.now()
        for job in [job for job in account.unsettled.values() if job.end <= now]:
            del account.unsettled[job.id]
            status = job.status_at(now)
            if status in ("failed", "cancelled"):
                account.credits += job.credits
            elif status == "completed":
                account.assets.append(self._asset(job))

    def lookup(self, account: VydraAccount, job_id: str) -> VydraJob | None:
        self.settle(account)
        self._drop_expired()
        job = self.jobs.get(job_id)
        return job if job is not None and job.key == account.key else None

    def cancel(self, account: VydraAccount, job: VydraJob) -> bool:
        """End a running job as cancelled; False when it had already ended."""
        now = self.now()
        if job.end <= now:
            return False
        job.cancelled_at = now
        account.live.pop(job.id, None)
        account.unsettled.pop(job.id, None)
        account.credits += job.credits
        account.cancelled += 1
        self.webhooks.cancel(job.id)
        heapq.heappush(self._expiry, (job.end, job.id))
        return True

    def list_jobs(self, account: VydraAccount, status: str | None) -> list[VydraJob]:
        self.settle(account)
        self._drop_expired()
        now = self.now()
        found = [
            job
            for job in self.jobs.values()
            if job.key == account.key and (status is None or job.status_at(now) == status)
        ]
        return found[::-1]

    def list_assets(self, account: VydraAccount, workflow: str | None) -> list[dict[str, Any]]:
        self.settle(account)
        found = [a for a in account.assets if workflow is None or a["workflow"] == workflow]
        return found[::-1]

    def find_asset(self, account: VydraAccount, asset_id: str) -> dict[str, Any] | None:
        self.settle(account)
        return next((a for a in account.assets if a["id"] == asset_id), None)

    def webhook_plan(self, job: VydraJob, body_at: Any) -> list[Delivery]:
        """The webhooks a new job will get, as the knobs stand at submit time; ``body_at(job, t)``
        renders the job as of emulator time ``t``."""
        if job.webhook_url is None:
            return []
        config = self.config
        planned = []
        if config.webhook_progress and job.duration > 0:
            for fraction in PROGRESS_FRACTIONS:
                at = job.start + fraction * job.duration
                planned.append(self._delivery(job, at, body_at(job, at), "progress"))
        planned.append(self._delivery(job, job.end, body_at(job, job.end), "terminal"))
        if config.webhook_reorder:
            stale = body_at(job, job.start + STALE_FRACTION * job.duration)
            planned.append(self._delivery(job, job.end, stale, "stale"))
        return planned

    def snapshot(self, job: VydraJob, body: dict[str, Any]) -> Delivery:
        return self._delivery(job, job.start, body, "progress")

    def reset(self) -> None:
        self.jobs.clear()
        self._expiry.clear()
        self.submissions_by_ref.clear()
        self.webhooks.reset()
        self._load_accounts()

    def stats(self) -> dict[str, Any]:
        now = self.now()
        for account in self.accounts.values():
            self.settle(account)
        return {
            "vydra": {
                "accounts": {key: account.to_json(now) for key, account in self.accounts.items()},
                # Per organisation: the most requests it had accepted in any minute, in any hour.
                "organizations": {
                    name: {"max_requests_in_minute": w.max_in_minute, "max_requests_in_hour": w.max_in_hour}
                    for name, w in self.organizations.items()
                },
                "submissions_by_ref": dict(self.submissions_by_ref),
                "callbacks": self.webhooks.stats(),
            }
        }

    def _asset(self, job: VydraJob) -> dict[str, Any]:
        output = job.output(self.config.public_base)
        metadata: dict[str, Any] = {
            k: job.inputs[k] for k in ("prompt", "duration", "aspect_ratio") if k in job.inputs
        }
        metadata["model"] = job.model
        asset: dict[str, Any] = {
            "id": f"ast_{job.id.replace('-', '')[:12]}",
            "type": job.kind,
            "workflow": job.workflow,
            "url": output["url"],
        }
        if "thumbnailUrl" in output:
            asset["thumbnailUrl"] = output["thumbnailUrl"]
        asset.update(metadata=metadata, jobId=job.id, createdAt=iso_utc(job.wall_at(job.end)))
        return asset

    def _delivery(self, job: VydraJob, at: float, body: dict[str, Any], kind: str) -> Delivery:
        assert job.webhook_url is not None
        return Delivery(job.id, job.webhook_url, job.ref, body, at, kind)

    def _drop_expired(self) -> None:
        now, expiry, retention = self.now(), self._expiry, self.config.retention_seconds
        while expiry and expiry[0][0] + retention <= now:
            _, job_id = heapq.heappop(expiry)
            job = self.jobs.get(job_id)
            if job is not None and job.end + retention <= now:
                account = self.accounts.get(job.key)
                if account is not None:
                    self.settle(account)
                del self.jobs[job_id]

    def _load_accounts(self) -> None:
        self.organizations: dict[str, RequestWindows] = {}
        self.accounts = {
            key: self._joined(_account(key, dict(spec))) for key, spec in self.config.vydra_accounts.items()
        }

    def _joined(self, account: VydraAccount) -> VydraAccount:
        """The account, counting its requests in its organisation's windows."""
        account.windows = self.organizations.setdefault(account.organization, RequestWindows())
        return account


def organization_of(key: str) -> str:
    """The organisation a key belongs to unless configured: one per user id of the key."""
    return f"org_{key.removeprefix('vydra_live_user_').split('_')[0]}"


def _account(key: str, spec: dict[str, Any]) -> VydraAccount:
    plan = str(spec.get("plan", "free"))
    limits = VYDRA_PLANS[plan]
    return VydraAccount(
        key=key,
        plan=plan,
        rpm=int(spec.get("rpm", limits["rpm"])),
        rph=int(spec.get("rph", limits["rph"])),
        rpd=int(spec.get("rpd", limits["rpd"])),
        concurrent=int(spec.get("concurrent", limits["concurrent"])),
        credits=int(spec.get("credits", DEFAULT_CREDITS)),
        organization=str(spec.get("organization") or organization_of(key)),
    )


def describe_failure(job: VydraJob) -> str:
    return failure_message(job.error_type)


VYDRA_KEY = web.AppKey("emulator_vydra", VydraState)
