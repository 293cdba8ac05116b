"""The HTTP API's shapes, defined once: the job request an app sends and every answer genrelay gives.

These msgspec structs are the single source of two things:

* the validation of a job request (``POST /v1/jobs``, ``Client.submit`` and the ``accept_job`` task):
  :meth:`JobRequest.from_json` decodes a JSON body into :class:`JobRequest`, and every refusal is an
  ``InvalidRequest`` (400) whose message names the bad field;
* the OpenAPI components served at ``/openapi.json`` (:func:`schema_components`); the route table in
  ``daemon/web/openapi.py`` refers to them by name.

A struct's docstring and its fields' ``Meta(description=...)`` are the documentation readers see, so
they are written for API users. Two request checks cannot be said in JSON Schema and stay in Python
after decoding: the size of ``params`` as JSON and the ``replyUrl`` guard (``daemon.url_guard``).
``tests/test_api_models.py`` proves that the schema and the validator agree.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import orjson
from msgspec import UNSET, Meta, Struct, UnsetType

from daemon.assets import ASSET_TYPES, MAX_WORKFLOW_LENGTH
from daemon.errors import InvalidRequest
from daemon.jobs import DEFAULT_PRIORITY, MAX_PARAMS_BYTES, MAX_REF_LENGTH, State
from daemon.url_guard import url_problem

__all__ = ["COMPONENTS", "JobRequest", "schema_components"]

# --- field types ----------------------------------------------------------------------------------------

NonEmpty = Annotated[str, Meta(min_length=1)]
BoundedText = Annotated[str, Meta(min_length=1, max_length=MAX_REF_LENGTH)]
Priority = Annotated[int, Meta(ge=0, le=9, description="higher runs first")]
Count = Annotated[int, Meta(ge=0)]
Millis = Annotated[int, Meta(description="Unix time in milliseconds")]
# The scheme is checked here (so the schema says it) and again, with host and credentials, by url_problem.
REPLY_URL_PATTERN = "^[Hh][Tt][Tt][Pp][Ss]?://"
ReplyUrl = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_REF_LENGTH,
        pattern=REPLY_URL_PATTERN,
        description="where to POST the finished job: an http(s) URL to a public host, without credentials",
        examples=["https://app.example.com/genrelay/done"],
    ),
]


class ApiStruct(Struct, rename="camel", kw_only=True):
    """Base of the answers: camelCase names on the wire, snake_case in Python."""


# --- the request ----------------------------------------------------------------------------------------


class JobRequest(Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    """A request to run one generation (the body of POST /v1/jobs)."""

    provider: Annotated[str, Meta(min_length=1, description="a provider with accounts")]
    operation: Annotated[str, Meta(min_length=1, description="e.g. text-to-video")]
    params: Annotated[
        dict[str, Any],
        Meta(description=f"the provider's parameters, at most {MAX_PARAMS_BYTES} bytes as JSON"),
    ] = {}
    account: Annotated[BoundedText, Meta(description="pin the job to this account")] | None = None
    reply_url: ReplyUrl | None = None
    reply_ref: Annotated[BoundedText, Meta(description="echoed back with the job")] | None = None
    priority: Priority = DEFAULT_PRIORITY
    request_id: (
        Annotated[BoundedText, Meta(description="idempotency key: the same id is the same job")] | None
    ) = None
    notify_progress: Annotated[
        bool, Meta(description="also POST each progress change to replyUrl, not only the end")
    ] = False
    archive: (
        Annotated[
            Literal["before-notify", "after-notify"],
            Meta(
                description="before-notify: tell replyUrl once the artifact is archived",
                examples=["before-notify"],
            ),
        ]
        | None
    ) = None

    @classmethod
    def from_json(cls, body: Any) -> JobRequest:
        """Check types and bounds of a decoded JSON body; provider and account are checked later
        (``JobStore.check``), against the configuration."""
        if type(body) is dict and not _FIELD_NAMES.issuperset(body):  # all of them named, and quickly
            raise InvalidRequest(unknown_fields(body))
        problem: str | None = None
        try:
            request = msgspec.convert(body, cls)
        except msgspec.ValidationError as exc:
            problem = str(exc)
        if problem is not None:  # raised outside the handler: no chained context, half the cost
            raise InvalidRequest(refusal(body, problem))
        if len(orjson.dumps(request.params)) > MAX_PARAMS_BYTES:
            raise InvalidRequest(f"'params' is larger than {MAX_PARAMS_BYTES} bytes")
        if request.reply_url is not None:
            problem = url_problem(request.reply_url)
            if problem is not None:
                raise InvalidRequest(f"'replyUrl' cannot be used: {problem}")
        return request


_OPTIONAL_TEXT = f"must be a non-empty string of at most {MAX_REF_LENGTH} characters"
# What each field must be, in the words of a refusal; tests/test_api_models.py checks every field has one.
FIELD_RULES: dict[str, str] = {
    "provider": "is required and must be a non-empty string",
    "operation": "is required and must be a non-empty string",
    "params": "must be a JSON object",
    "account": _OPTIONAL_TEXT,
    "replyUrl": _OPTIONAL_TEXT + ", an http:// or https:// URL",
    "replyRef": _OPTIONAL_TEXT,
    "priority": "must be an integer from 0 to 9 (higher runs first)",
    "requestId": _OPTIONAL_TEXT,
    "notifyProgress": "must be true or false",
    "archive": "must be 'before-notify' or 'after-notify'",
}
_FIELD_NAMES = frozenset(field.encode_name for field in msgspec.structs.fields(JobRequest))
_REFUSALS = {name: f"'{name}' {rule}" for name, rule in FIELD_RULES.items()}
_MISSING = "Object missing required field `"


def unknown_fields(body: dict[Any, Any]) -> str:
    return f"unknown field(s): {', '.join(sorted(str(name) for name in body if name not in _FIELD_NAMES))}"


def refusal(body: Any, problem: str) -> str:
    """The 400 message for a body msgspec refused with ``problem``: which field, and what it must be.

    msgspec ends a message about a field with `` - at `$.name` `` (or names a missing one), so string
    operations find the field; a refusal is as cheap as an acceptance."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    if problem.startswith("Object contains unknown field"):
        return unknown_fields(body)
    if problem.startswith(_MISSING):
        field = problem[len(_MISSING) :].partition("`")[0]
    else:
        field = problem.rpartition(" - at `$.")[2][:-1]
    if field == "replyUrl" and "regex" in problem:
        reason = url_problem(body["replyUrl"]) or "only http:// and https:// URLs are allowed"
        return f"'replyUrl' cannot be used: {reason}"
    return _REFUSALS.get(field) or f"invalid request: {problem}"


# --- the answers ----------------------------------------------------------------------------------------


class Error(ApiStruct):
    """Every 4xx and 5xx answer has this shape (that of the provider APIs)."""

    error: Annotated[str, Meta(description="what is wrong, and what to change")]
    code: Annotated[int, Meta(ge=400, le=599, description="the HTTP status")]


class NotReady(Error):
    """The readiness probe's refusal: the error, and what is missing."""

    missing: list[str]


class JobCreated(ApiStruct):
    """The answer to POST /v1/jobs."""

    job_id: str
    created: Annotated[bool, Meta(description="false when requestId named an existing job")]


Artifact = Annotated[dict[str, Any], Meta(description="assetUrl, kind, expirationDateString")]


class JobStatus(ApiStruct):
    """Where the job is, in the shape of the providers' status model."""

    type: State
    progress: Annotated[int, Meta(ge=0, le=100)]
    message: str | UnsetType = UNSET
    artifact: Artifact | UnsetType = UNSET


ENDED_BY = (
    "what ended the job: callback (a webhook, confirmed by a status read), safety_poll (the slow poll "
    "of a job whose webhook never came), poll, submit, cancel, sweep (lease expired), slots or api"
)


class Job(ApiStruct):
    """One job: its status in the provider's shape, plus genrelay's own fields."""

    job_id: Annotated[str, Meta(description="`<provider>-<32 hex digits>`")]
    status: JobStatus
    provider: str
    operation: str
    params: dict[str, Any]
    account: str | None
    provider_job_id: str | None
    reply_ref: str | None
    reply_url: str | None
    priority: Priority
    error_type: str | None
    ended_by: Annotated[str, Meta(description=ENDED_BY)] | None
    cancel_note: (
        Annotated[str, Meta(description="after a cancel: what the provider did (or why it was not asked)")]
        | None
    )
    submit_tries: Count
    created_at: Millis | None
    submitted_at: Millis | None
    started_at: Millis | None
    finished_at: Millis | None
    updated_at: Millis | None


class CancelOutcome(ApiStruct):
    """What the cancel did at the provider."""

    at_provider: Annotated[
        Literal["requested", "not submitted"],
        Meta(description="requested: the provider is being asked to stop it (see cancelNote)"),
    ]


class CanceledJob(Job):
    """The answer to DELETE /v1/jobs/{jobId}: the canceled job, and what happened at the provider."""

    cancel: CancelOutcome


class PageMeta(ApiStruct):
    """Where a page sits in the whole listing."""

    total_items: Count
    item_count: Count
    items_per_page: Count
    total_pages: Count
    current_page: Count


class JobPage(ApiStruct):
    """One page of jobs, newest first."""

    items: list[Job]
    meta: PageMeta


class Thumbnail(ApiStruct):
    """One thumbnail of an asset."""

    asset_url: str
    expiration_date_string: str | UnsetType = UNSET


Expiry = Annotated[
    str,
    Meta(pattern="^[0-9]+$", description="when assetUrl stops working, epoch ms; absent when it does not"),
]


class ArchiveCopy(ApiStruct, kw_only=True):
    """Where genrelay's own copy of an asset stands."""

    state: Literal["pending", "archived", "failed", "expired"]
    sha256: str | None = None
    bytes: int | None = None
    mime_type: str | None = None
    url: Annotated[str, Meta(description="GET it for our copy")] | None = None
    message: str | None = None
    retry_at: Millis | None = None


class Asset(ApiStruct, kw_only=True):
    """One finished artifact, recorded once whether it came from a job or an import."""

    id: Annotated[str, Meta(description="genrelay's own stable id, `<provider>-asset-<32 hex>`")]
    provider: str
    account: str | None = None
    workflow: (
        Annotated[str, Meta(max_length=MAX_WORKFLOW_LENGTH, description="the job's operation / the workflow")]
        | None
    ) = None
    type: Annotated[str, Meta(extra_json_schema={"enum": list(ASSET_TYPES)})]
    asset_url: str
    mime_type: str | None = None
    thumbnails: Annotated[dict[str, Thumbnail], Meta(description="name -> {assetUrl, expirationDateString?}")]
    expiration_date_string: Expiry | UnsetType = UNSET
    job_id: Annotated[str, Meta(description="our job, when known")] | None = None
    provider_job_id: str | None = None
    provider_asset_id: str | None = None
    created_at: Millis | None
    source: Literal["job", "import"] | None = None
    archive: Annotated[
        ArchiveCopy, Meta(description="our copy of the artifact (GET /v1/assets/{id}/content serves it)")
    ]


class AssetPage(ApiStruct):
    """One page of assets, newest first."""

    items: list[Asset]
    meta: PageMeta


class ExecutingJob(ApiStruct):
    """A job holding a slot."""

    job_id: str
    provider: str
    email: Annotated[str, Meta(description="the account name")]
    started: Annotated[str, Meta(description="ISO 8601, UTC")]
    elapsed: Annotated[str, Meta(description="HH:MM:SS")]
    reply_url: str | None = None
    reply_ref: str | None = None


Foreign = Annotated[int, Meta(ge=0, description="slots the provider's listing showed taken by jobs not ours")]


class AccountCapacity(ApiStruct):
    """The slots of one account."""

    provider: str
    email: Annotated[str, Meta(description="the account name")]
    max_jobs: Count
    effective_max_jobs: Count  # maxJobs less the slots concurrency 429s showed in use elsewhere
    executing: Count
    available: Count
    enabled: bool
    disabled_reason: str | None = None
    cooldown_until: Millis | None = None
    waiting: Annotated[int, Meta(ge=0, description="jobs of the provider waiting")] | UnsetType = UNSET
    foreign: Foreign | UnsetType = UNSET
    last_sync: (
        Annotated[int, Meta(description="when the provider's listing was last reconciled (ms)")] | None
    ) = None
    provider_max_jobs: Annotated[int, Meta(description="maxJobs as the provider reports it")] | None = None
    request_budget: dict[str, dict[str, int]] | UnsetType = UNSET  # window -> {limit, used}


class Capacity(ApiStruct):
    """The capacity mirror, in the shape of the provider's GET scheduler/available."""

    executing: list[ExecutingJob]
    available: list[AccountCapacity]


class CallbackReceived(ApiStruct):
    """The answer to a provider's webhook."""

    received: bool
    outcome: Annotated[str, Meta(description="what the update did to the job; gone: no job")]


class Status(ApiStruct):
    """A probe's answer."""

    status: str


# --- the OpenAPI components -----------------------------------------------------------------------------

COMPONENTS: tuple[type[Struct], ...] = (
    Error,
    NotReady,
    JobRequest,
    JobCreated,
    Job,
    CanceledJob,
    JobPage,
    Asset,
    AssetPage,
    Capacity,
    CallbackReceived,
    Status,
)
REF_TEMPLATE = "#/components/schemas/{name}"
JOB_REQUEST_EXAMPLE: dict[str, Any] = {
    "provider": "ltx",
    "operation": "text-to-video",
    "params": {
        "prompt": "a lighthouse at dawn",
        "model": "ltx-2-3-fast",
        "duration": 4,
        "resolution": "1920x1080",
    },
}


def schema_components() -> dict[str, dict[str, Any]]:
    """``components.schemas`` of the OpenAPI document: every struct above and what they refer to."""
    _, schemas = msgspec.json.schema_components(COMPONENTS, ref_template=REF_TEMPLATE)
    schemas["JobRequest"]["examples"] = [JOB_REQUEST_EXAMPLE]
    return schemas
