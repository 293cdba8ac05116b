"""What differs between the useapi.net services genrelay speaks: one frozen entry per service.

Each fact below is written up with its public useapi.net source in ``docs/useapi-services.md``;
the adapter (``daemon/providers/useapi.py``) reads nothing else. Adding a service is one entry here
plus its emulator contract. Field names are the vendor's, verbatim: they differ in every service
(https://useapi.net/llms-full.txt warns not to carry conventions from one useapi API to another).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LTX_STUDIO_OPERATIONS = frozenset(
    {"videos/ltx-create", "videos/veo-create", "images/create", "images/edit", "images/upscale"}
)
# 401 bad token, 402 no subscription, 412 out of credits, 596 account on hold: the account, not the job.
STOP_ACCOUNT_STATUSES = frozenset({401, 402, 412, 596})
# Why an account was stopped, by status, for the record (docs/useapi-services.md "Errors").
ACCOUNT_ERRORS = {401: "unauthorized", 402: "no_subscription", 412: "no_credits", 596: "account_on_hold"}

# What a 404 on a status read means, per service.
LOST = "lost"  # the job is gone (deleted, expired): it ends as lost
MODERATED = "moderated"  # the result was moderated and removed: the job fails as moderated
PENDING = "pending"  # the result is not ready yet: the job stays active until its deadline


@dataclass(frozen=True, slots=True)
class UseapiService:
    """One useapi.net service: paths, field names and meanings that differ from the others."""

    name: str  # the provider name, as useapi names the service in its paths
    base_path: str  # e.g. "/v1/kling"
    operations: frozenset[str]  # the submit paths under base_path
    account_field: str  # the request field naming the useapi account
    create_id_paths: tuple[tuple[str, ...], ...]  # where the create answer holds the id, in order
    status_path: str  # "tasks/{id}" etc.; {id} is URL-encoded
    state_field: str  # the status model's state
    success: frozenset[str]  # state values (as text) that mean completed
    failure: frozenset[str] = frozenset()  # state values that end the job as failed
    moderated: frozenset[str] = frozenset()  # state values that end it as moderated
    not_final: frozenset[str] = frozenset()  # values never terminal, whatever the final flag says
    final_field: str | None = None  # the boolean "this state is terminal", where there is one
    label_field: str | None = None  # a readable state name beside a numeric state
    status_account_query: bool = False  # the status read names the account in its query
    progress_field: str | None = None
    progress_scale: float = 100.0  # the progress value that means done (1 for a ratio)
    # Without a progress field: the progress a state stands for (Kling documents no percentage).
    state_progress: tuple[tuple[str, int], ...] = ()
    result_url_paths: tuple[tuple[str | int, ...], ...] = ()
    error_fields: tuple[str, ...] = ("error",)
    http404: str = LOST
    # With ``http404 == PENDING``: how long after the submit a 404 still means "processing".
    pending_404_s: float = 0.0
    progress_callbacks: bool = False  # callbacks report progress too, not only the end
    # ``scheduler/available``: None when the service has no capacity listing.
    listing_path: str | None = "scheduler/available"
    exec_id_fields: tuple[str, ...] = ("id",)
    exec_account_field: str | None = None  # None: executing[] entries name no account
    uncounted_id_fields: tuple[str, ...] = ()  # entries by these ids take no capacity (MiniMax images)
    avail_account_field: str | None = None
    # Where the id itself embeds the account, e.g. "user:1-minimax:123456-video:9" -> "123456".
    id_account: re.Pattern[str] | None = None
    max_jobs_limit: int | None = None  # the request's maxJobs range ends here
    no_reply_operations: frozenset[str] = frozenset()  # take no replyUrl/replyRef/maxJobs
    moderation_500: re.Pattern[str] | None = None  # a 500 whose error text says moderation
    uncertain_submit_statuses: frozenset[int] = frozenset()  # may have accepted the job anyway
    moderation_statuses: frozenset[int] = frozenset({422})

    def url(self, base_url: str, path: str) -> str:
        return f"{base_url}{self.base_path}/{path}"


def _embedded(service: str) -> re.Pattern[str]:
    """``user:<uid>-<service>:<account>-<kind>:<n>``: the account sits between the service and the
    last ``-<kind>:`` (an email may itself hold dashes)."""
    return re.compile(
        rf"^user:[^-]*-{service}:(?P<account>.+)-(?:video|image|task|music|speech|audio):[^:]*$"
    )


LTX_STUDIO = UseapiService(
    name="ltxstudio",
    base_path="/v1/ltxstudio",
    operations=LTX_STUDIO_OPERATIONS,
    account_field="email",
    create_id_paths=(("jobId",),),
    status_path="assets/{id}",
    state_field="status",  # a nested {type, progress, ...}: its own parser (useapi.parse_status)
    success=frozenset({"completed"}),
    failure=frozenset({"failed"}),
    exec_id_fields=("jobId",),
    exec_account_field="email",
    avail_account_field="email",
)

KLING = UseapiService(
    name="kling",
    base_path="/v1/kling",
    # videos/omni, videos/motion-create and images/omni take no replyUrl/maxJobs (Postman): left
    # out, so every job can be matched by its replyRef.
    operations=frozenset(
        {
            "videos/text2video",
            "videos/image2video-frames",
            "videos/image2video-elements",
            "videos/image2video-effects",
            "videos/extend",
            "videos/lipsync",
            "avatars/video",
            "images/kolors",
            "images/kolors-elements",
            "images/virtual-try-on",
            "images/upscale",
        }
    ),
    account_field="email",
    create_id_paths=(("task", "id"), ("id",)),
    status_path="tasks/{id}",
    status_account_query=True,
    state_field="status_name",
    final_field="status_final",
    success=frozenset({"succeed"}),
    not_final=frozenset({"submitted", "processing"}),
    state_progress=(("submitted", 0), ("processing", 50)),
    result_url_paths=(("works", 0, "resource", "resource"),),
    error_fields=("error", "message"),
    http404=LOST,
    progress_callbacks=True,
    exec_id_fields=("id",),
    exec_account_field="email",
    avail_account_field="email",
    max_jobs_limit=50,
    moderation_500=re.compile(r"moderat|sensitive|violat|content polic|risk|inappropriate|safety", re.I),
)

MINIMAX = UseapiService(
    name="minimax",
    base_path="/v1/minimax",
    operations=frozenset({"videos/create", "videos/agent-create", "images/create"}),
    account_field="account",
    create_id_paths=(("videoId",), ("imageId",), ("data", "id")),
    status_path="videos/{id}",
    state_field="status",
    label_field="statusLabel",
    final_field="statusFinal",
    success=frozenset({"2"}),
    failure=frozenset({"3"}),
    moderated=frozenset({"5", "7", "14"}),
    not_final=frozenset({"0", "1", "11", "12"}),
    progress_field="percent",
    result_url_paths=(("downloadURL",), ("videoURL",)),
    error_fields=("message", "error"),
    http404=MODERATED,
    exec_id_fields=("videoId", "imageId"),
    uncounted_id_fields=("imageId",),
    avail_account_field="account",
    id_account=_embedded("minimax"),
    max_jobs_limit=10,
    uncertain_submit_statuses=frozenset({502, 504}),
)

PIXVERSE = UseapiService(
    name="pixverse",
    base_path="/v2/pixverse",
    operations=frozenset(
        {
            "videos/create",
            "videos/create-frames",
            "videos/create-transition",
            "videos/extend",
            "images/create",
        }
    ),
    account_field="email",
    create_id_paths=(("video_id",), ("image_id",)),
    status_path="videos/{id}",
    state_field="video_status_name",
    final_field="video_status_final",
    success=frozenset({"COMPLETED"}),
    moderated=frozenset({"MODERATED"}),
    # The status table marks QUEUED final (sic); a queued video has not ended.
    not_final=frozenset({"QUEUED", "GENERATING"}),
    result_url_paths=(("url",),),
    http404=PENDING,
    pending_404_s=3600.0,  # [I] no number is published; a video that long is given up
    exec_id_fields=("id", "video_id"),
    avail_account_field="email",
    id_account=_embedded("pixverse"),
    max_jobs_limit=8,
)

RUNWAY = UseapiService(
    name="runwayml",
    base_path="/v1/runwayml",
    operations=frozenset({"videos/create", "gen4_5/create", "gen4/create", "images/create"}),
    account_field="email",
    create_id_paths=(("taskId",),),
    status_path="tasks/{id}",
    state_field="status",
    success=frozenset({"SUCCEEDED"}),
    failure=frozenset({"FAILED"}),
    not_final=frozenset({"PENDING", "RUNNING", "THROTTLED"}),
    progress_field="progressRatio",
    progress_scale=1.0,
    result_url_paths=(("artifacts", 0, "url"),),
    http404=LOST,
    listing_path=None,  # no scheduler/available: slots are counted from maxJobs alone
    exec_id_fields=("taskId",),
    id_account=_embedded("runwayml"),
    max_jobs_limit=10,
)

SERVICES: dict[str, UseapiService] = {s.name: s for s in (LTX_STUDIO, KLING, MINIMAX, PIXVERSE, RUNWAY)}
