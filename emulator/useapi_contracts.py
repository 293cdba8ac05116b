"""The public contracts of four useapi.net services, as the emulator serves them: Kling
(``/v1/kling``), MiniMax (``/v1/minimax``), PixVerse (``/v2/pixverse``) and Runway
(``/v1/runwayml``). Written from useapi's documentation (see ``docs/useapi-services.md`` for each
fact and its URL), not from genrelay's adapter, so a test fails when the adapter reads them wrong.

A job's state is a pure function of the emulator clock: queued for the first quarter of its run,
then running, then its end. Choices where the pages are silent are marked [I]:

* [I] Kling's non-final ``status_name`` values are ``submitted`` (5) and ``processing`` (10); a
  failed task reads ``failed`` (50); only 99/``succeed`` is shown on the vendor's pages;
* [I] PixVerse's failed and moderated videos read ``video_status`` 8 ``FAILED`` and 7
  ``MODERATED``, both final (the published table shows 1, 5 and 10 only);
* [I] MiniMax image generations are read at ``images/{imageId}`` with the video model;
* [I] ``DELETE scheduler/{id}`` answers 204 (as TemPolor's page shows) and the job stays readable:
  the generation goes on, only the tracking (slot, callbacks) ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from emulator.ltx_state import iso_utc
from emulator.ltxstudio_models import elapsed_mm_ss

QUEUED_FRACTION = 0.25
# Kling calls back with progress at these fractions of a run, then with the result.
PROGRESS_FRACTIONS = (QUEUED_FRACTION, 0.6)


@dataclass(slots=True)
class ServiceJob:
    service: str
    job_id: str
    number: int  # Kling's task id is this number; the others' ids end with it
    token: str
    account: str
    kind: str  # "video" | "image"
    start: float  # emulator clock
    duration: float
    fate: str | None  # None completes; "failed", "moderated" or "removed" (MiniMax: 404 when done)
    wall_start: float
    reply_url: str | None
    reply_ref: str | None
    throttled: bool = False  # Runway: THROTTLED instead of PENDING while queued
    tracked: bool = True  # False once DELETE scheduler/{id} stopped the tracking

    @property
    def end(self) -> float:
        return self.start + self.duration

    def phase(self, now: float) -> str:
        if now >= self.end:
            return "done"
        if self.duration > 0 and now < self.start + QUEUED_FRACTION * self.duration:
            return "queued"
        return "running"

    def fraction(self, now: float) -> float:
        if self.duration <= 0:
            return 1.0
        return max(0.0, min(1.0, (now - self.start) / self.duration))

    def media_url(self, base: str) -> str:
        ext = "mp4" if self.kind == "video" else "png"
        return f"{base.rstrip('/')}/{self.service}/{self.number}.{ext}"


@dataclass(frozen=True, slots=True)
class Contract:
    service: str
    prefix: str
    creates: dict[str, str]  # create path -> kind
    account_field: str
    account_required_if_many: bool
    max_jobs_limit: int
    create_answer: Callable[[ServiceJob], dict[str, Any]]
    status: Callable[[ServiceJob, float, str], dict[str, Any] | None]  # None: answer 404
    executing_entry: Callable[[ServiceJob, float], dict[str, Any]]
    available_field: str | None  # None: no scheduler/available
    progress_callbacks: bool
    moderation_status: int  # how a create with a moderated prompt is refused
    moderation_message: str
    counts_kind: frozenset[str] = field(default_factory=lambda: frozenset({"video", "image"}))
    not_found_code: bool = True  # Kling's DELETE 404 body has no "code"


def _reply(job: ServiceJob, body: dict[str, Any]) -> dict[str, Any]:
    if job.reply_url is not None:
        body["replyUrl"] = job.reply_url
    if job.reply_ref is not None:
        body["replyRef"] = job.reply_ref
    return body


def _running_entry(job: ServiceJob, now: float, ids: dict[str, Any]) -> dict[str, Any]:
    entry = {**ids, "started": iso_utc(job.wall_start), "elapsed": elapsed_mm_ss(now - job.start)}
    return _reply(job, entry)


# --- Kling: https://useapi.net/docs/api-kling-v1/get-kling-tasks-task_id ---------------------------


def _kling_state(job: ServiceJob, now: float) -> tuple[int, str, bool]:
    phase = job.phase(now)
    if phase == "queued":
        return 5, "submitted", False
    if phase == "running":
        return 10, "processing", False
    return (99, "succeed", True) if job.fate is None else (50, "failed", True)


def kling_status(job: ServiceJob, now: float, base: str) -> dict[str, Any]:
    number, name, final = _kling_state(job, now)
    created = int(job.wall_start * 1000)
    task = {
        "id": job.number,
        "userId": 12345,
        "type": "m2v_txt2video" if job.kind == "video" else "mmu_txt2img",
        "status": number,
        "status_name": name,
        "status_final": final,
        "createTime": created,
        "updateTime": created + int(1000 * min(now, job.end) - 1000 * job.start),
    }
    eta = max(0, int(job.end - now))
    body: dict[str, Any] = {
        "status": number,
        "status_name": name,
        "status_final": final,
        "etaTime": eta,
        "queuingEtaTime": eta if name == "submitted" else 0,
        "message": "success" if job.fate is None else "",
        "task": task,
        "works": [],
    }
    if name == "succeed":
        work = {"workId": job.number + 1, "taskId": job.number, "status": 99, "status_name": name}
        work.update(status_final=True, contentType=job.kind)
        work["resource"] = {"resource": job.media_url(base), "height": 1268, "width": 724, "duration": 5041}
        body["works"] = [work]
    elif name == "failed":
        body["error"] = "Kling task failed"
        body["message"] = "generation failed"
    return _reply(job, body)


KLING = Contract(
    service="kling",
    prefix="/v1/kling",
    creates={
        **dict.fromkeys(
            [
                "videos/text2video",
                "videos/image2video-frames",
                "videos/image2video-elements",
                "videos/image2video-effects",
                "videos/extend",
                "videos/lipsync",
                "videos/omni",
                "videos/motion-create",
                "avatars/video",
            ],
            "video",
        ),
        **dict.fromkeys(
            [
                "images/kolors",
                "images/kolors-elements",
                "images/virtual-try-on",
                "images/upscale",
                "images/omni",
            ],
            "image",
        ),
    },
    account_field="email",
    account_required_if_many=True,
    max_jobs_limit=50,
    create_answer=lambda job: {"task": {"id": job.number, "status": 5, "status_name": "submitted"}},
    status=kling_status,
    executing_entry=lambda job, now: {
        **_running_entry(job, now, {"id": job.number}),
        "email": job.account,
    },
    available_field="email",
    progress_callbacks=True,
    # The vendor script: Kling answers 500 for moderation as well as for real faults.
    moderation_status=500,
    moderation_message="Content moderation failed: the prompt contains sensitive content",
    not_found_code=False,
)


# --- MiniMax: https://useapi.net/docs/api-minimax-v1/get-minimax-videos-videoId ---------------------


def minimax_status(job: ServiceJob, now: float, base: str) -> dict[str, Any] | None:
    phase = job.phase(now)
    if phase == "done" and job.fate == "removed":
        return None  # "most often means that the video was moderated and removed"
    if phase == "queued":
        number, label = (0, "pending") if job.fraction(now) < QUEUED_FRACTION / 2 else (11, "queued")
    elif phase == "running":
        number, label = (1, "processing") if job.fraction(now) < 0.6 else (12, "processing")
    elif job.fate is None:
        number, label = 2, "completed"
    elif job.fate == "moderated":
        number, label = 7, "moderated"
    else:
        number, label = 3, "failed"
    key = "videoId" if job.kind == "video" else "imageId"
    body: dict[str, Any] = {
        "id": str(job.number),
        "desc": "prompt",
        "status": number,
        "statusLabel": label,
        "statusFinal": phase == "done",
        "percent": 100 if phase == "done" else int(100 * job.fraction(now)),
        key: job.job_id,
    }
    if number == 2:
        url = job.media_url(base)
        body.update(coverURL=f"{url}.jpg", videoURL=f"{url}?watermark=1", downloadURL=url)
    elif phase != "done":
        body["message"] = f"{label} {body['percent']}%"
    else:
        body["message"] = label
    return _reply(job, body)


MINIMAX = Contract(
    service="minimax",
    prefix="/v1/minimax",
    creates={"videos/create": "video", "videos/agent-create": "video", "images/create": "image"},
    account_field="account",
    account_required_if_many=False,
    max_jobs_limit=10,
    create_answer=lambda job: {("videoId" if job.kind == "video" else "imageId"): job.job_id},
    status=minimax_status,
    executing_entry=lambda job, now: _running_entry(
        job, now, {("videoId" if job.kind == "video" else "imageId"): job.job_id}
    ),
    available_field="account",
    progress_callbacks=False,
    moderation_status=422,
    moderation_message="MODERATED prompt",
    # "The available capacity ... includes only videos".
    counts_kind=frozenset({"video"}),
)


# --- PixVerse: https://useapi.net/docs/api-pixverse-v2/get-pixverse-videos-video_id ------------------


def pixverse_status(job: ServiceJob, now: float, base: str) -> dict[str, Any] | None:
    if job.phase(now) != "done":
        return None  # "still processing will result in a 404"
    if job.fate is None:
        number, name = 1, "COMPLETED"
    elif job.fate == "moderated":
        number, name = 7, "MODERATED"
    else:
        number, name = 8, "FAILED"
    key = "video_id" if job.kind == "video" else "image_id"
    body: dict[str, Any] = {
        key: job.job_id,
        "video_status": number,
        "video_status_name": name,
        "video_status_final": True,
        "queue_data": {"queue_time": 0, "queue_count": 0},
    }
    if number == 1:
        body["url"] = job.media_url(base)
        body["first_frame"] = f"{body['url']}.jpg"
    else:
        body["error"] = f"video {name.lower()}"
    return _reply(job, body)


PIXVERSE = Contract(
    service="pixverse",
    prefix="/v2/pixverse",
    creates={
        **dict.fromkeys(
            [
                "videos/create",
                "videos/create-frames",
                "videos/create-transition",
                "videos/create-fusion",
                "videos/extend",
            ],
            "video",
        ),
        "images/create": "image",
    },
    account_field="email",
    account_required_if_many=False,
    max_jobs_limit=8,
    create_answer=lambda job: {("video_id" if job.kind == "video" else "image_id"): job.job_id},
    status=pixverse_status,
    executing_entry=lambda job, now: _running_entry(job, now, {"id": job.job_id, "type": job.kind}),
    available_field="email",
    progress_callbacks=False,
    moderation_status=422,
    moderation_message="Moderated prompt",
)


# --- Runway: https://useapi.net/docs/api-runwayml-v1/get-runwayml-tasks-taskId ----------------------


def runway_status(job: ServiceJob, now: float, base: str) -> dict[str, Any]:
    phase = job.phase(now)
    if phase == "queued":
        status = "THROTTLED" if job.throttled else "PENDING"
    elif phase == "running":
        status = "RUNNING"
    else:
        status = "SUCCEEDED" if job.fate is None else "FAILED"
    body: dict[str, Any] = {
        "taskId": job.job_id,
        "id": f"{job.number:08x}-0000-4000-8000-000000000000",
        "name": "genrelay emulator",
        "taskType": "gen4" if job.kind == "video" else "text_to_image",
        "status": status,
        "error": None,
        "progressText": None,
        "progressRatio": f"{job.fraction(now):.2f}" if phase != "queued" else "0",
        "estimatedTimeToStartSeconds": 0,
        "artifacts": [],
    }
    if status == "SUCCEEDED":
        body["artifacts"] = [{"assetId": str(job.number), "url": job.media_url(base), "previewUrls": []}]
    elif status == "FAILED":
        body["error"] = "moderated" if job.fate == "moderated" else "Runway task failed"
    return _reply(job, body)


RUNWAY = Contract(
    service="runwayml",
    prefix="/v1/runwayml",
    creates={
        "videos/create": "video",
        "gen4_5/create": "video",
        "gen4/create": "video",
        "images/create": "image",
    },
    account_field="email",
    account_required_if_many=False,
    max_jobs_limit=10,
    create_answer=lambda job: {"taskId": job.job_id, "status": "PENDING"},
    status=runway_status,
    executing_entry=lambda job, now: _reply(job, {"taskId": job.job_id}),
    available_field=None,  # GET scheduler/ only
    progress_callbacks=False,
    moderation_status=422,
    moderation_message="MODERATED prompt",
)

CONTRACTS: dict[str, Contract] = {c.service: c for c in (KLING, MINIMAX, PIXVERSE, RUNWAY)}


def new_id(contract: Contract, uid: str, account: str, kind: str, number: int, *, opaque: bool) -> str:
    """The service's id: Kling a number; the others ``user:<uid>-<service>:<account>-<kind>:<n>``
    (with ``opaque``, the knob useapi_opaque_ids, the account is left out)."""
    if contract.service == "kling":
        return str(number)
    kind = "task" if contract.service == "runwayml" else kind
    owner = "" if opaque else f":{account}"
    return f"user:{uid}-{contract.service}{owner}-{kind}:{number}"
