"""The shapes of the useapi.net LTX Studio emulator: a job, an account, and the JSON they render
to (docs/providers.md: status model and asset listing item §1.4, scheduler entry §1.5).

A job's status is a pure function of its start, duration and fate on the emulator clock, as in the
LTX Video part, so every read, callback and listing agrees. The signed artifact URL expires
``SIGNED_URL_SECONDS`` after the moment it is handed out ([I]: useapi publishes no number), so every
read returns a fresh one; ``expirationDateString`` is that expiry in epoch milliseconds, a string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from emulator.ltx import failure_message
from emulator.ltx_state import account_stats, iso_utc

MIME_TYPES = {"video": "video/mp4", "image": "image/png"}
SIGNED_URL_SECONDS = 6 * 3600.0  # [I] useapi's example URLs are valid for hours


@dataclass(slots=True)
class StudioJob:
    job_id: str
    uuid: str
    generation_id: str
    token: str
    email: str
    kind: str  # "video" | "image"
    start: float  # emulator clock
    duration: float
    error_type: str | None  # None: completes; else the fate it fails with
    wall_start: float
    reply_url: str | None
    reply_ref: str | None
    artifact_lag: int  # status reads after completion that still miss the artifact

    @property
    def end(self) -> float:
        return self.start + self.duration

    def status_at(self, now: float) -> str:
        if now < self.end:
            return "active"
        return "completed" if self.error_type is None else "failed"

    def progress_at(self, now: float) -> int:
        """0..99 while active, rising linearly with the clock."""
        if self.duration <= 0:
            return 0
        # The epsilon keeps 0.15 / 0.3 from reading as 49 %.
        return max(0, min(99, int(100 * (now - self.start) / self.duration + 1e-6)))

    def wall_at(self, now: float) -> float:
        """Wall-clock seconds at emulator-clock time ``now``, so a fake clock moves dates too."""
        return self.wall_start + (now - self.start)


@dataclass(slots=True)
class StudioAccount:
    token: str
    email: str
    max_jobs: int
    peak: int = 0
    submitted: int = 0
    rejected_429: int = 0
    polls: int = 0
    live: dict[str, StudioJob] = field(default_factory=dict)  # jobs that may still be running

    def executing(self, now: float) -> int:
        for job_id in [job_id for job_id, job in self.live.items() if job.end <= now]:
            del self.live[job_id]
        return len(self.live)

    def to_json(self, now: float) -> dict[str, int]:
        return account_stats(self, now)


def artifact(job: StudioJob, now: float, public_base: str) -> dict[str, Any]:
    mime = MIME_TYPES[job.kind]
    expires_ms = int((job.wall_at(now) + SIGNED_URL_SECONDS) * 1000)
    path = f"ltxstudio/{job.uuid}.{mime.split('/')[1]}"
    return {
        "assetUrl": f"{public_base.rstrip('/')}/{path}?Expires={expires_ms // 1000}",
        "expirationDateString": str(expires_ms),
        "asset": {
            "type": "artifact",
            "fileId": f"asset:{job.uuid}-type:{mime}",
            "mimeType": mime,
            "artifactSubtype": "model-serving",
        },
    }


def status_model(
    job: StudioJob, now: float, public_base: str, *, with_artifact: bool = True
) -> dict[str, Any]:
    """The ``GET assets/{jobId}`` body (also the callback body) as of ``now``."""
    kind = job.status_at(now)
    status: dict[str, Any] = {"type": kind}
    if kind == "active":
        status["progress"] = job.progress_at(now)
    elif kind == "completed":
        status["progress"] = 100
        if with_artifact:
            status["artifact"] = artifact(job, now, public_base)
    else:
        status["message"] = failure_message(job.error_type)
    return with_envelope(job, status)


def with_envelope(job: StudioJob, status: dict[str, Any]) -> dict[str, Any]:
    model: dict[str, Any] = {"status": status, "jobId": job.job_id}
    if job.reply_ref is not None:
        model["replyRef"] = job.reply_ref
    if job.reply_url is not None:
        model["replyUrl"] = job.reply_url
    model["code"] = 200
    return model


def asset_item(job: StudioJob, now: float, public_base: str) -> dict[str, Any]:
    """One entry of the ``GET assets/`` listing (docs/providers.md §1.4)."""
    base = public_base.rstrip("/")
    expires_ms = int((job.wall_at(now) + SIGNED_URL_SECONDS) * 1000)
    thumbnail = {
        "assetUrl": f"{base}/ltxstudio/{job.uuid}-thumbnail-large.webp?Expires={expires_ms // 1000}",
        "expirationDateString": str(expires_ms),
        "asset": {"type": "image", "fileId": f"{job.uuid}-thumbnail-large", "mimeType": "image/webp"},
    }
    return {
        "id": job.uuid,
        "signedAsset": artifact(job, now, public_base),
        "relatedAssets": {"thumbnails": {"large": thumbnail}},
        "jobId": job.job_id,
    }


def elapsed_mm_ss(seconds: float) -> str:
    minutes, secs = divmod(max(0, int(seconds)), 60)
    return f"{minutes:02d}:{secs:02d}"


def scheduler_entry(job: StudioJob, now: float) -> dict[str, Any]:
    """One ``executing`` entry of ``GET scheduler`` (docs/providers.md §1.5); reply fields only when given."""
    entry: dict[str, Any] = {
        "jobId": job.job_id,
        "email": job.email,
        "started": iso_utc(job.wall_start),
        "elapsed": elapsed_mm_ss(now - job.start),
    }
    if job.reply_url is not None:
        entry["replyUrl"] = job.reply_url
    if job.reply_ref is not None:
        entry["replyRef"] = job.reply_ref
    return entry
