"""Jobs: the record genrelay keeps and the update a provider reports.

The transition rules themselves (monotonic, idempotent) live in ``lua/transition.lua`` so that
they run atomically next to the data; this module holds the shapes around them. The request an app
sends, :class:`JobRequest`, is one of the HTTP API's shapes (``daemon/api_models.py``) and is
importable from here too.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from daemon.api_models import JobRequest as JobRequest
from daemon import keys

MAX_REF_LENGTH = 1024  # providers cap replyRef/replyUrl at 1024 characters
MAX_PARAMS_BYTES = 64 * 1024  # a generation request is a prompt and a few URLs, not a payload
DEFAULT_PRIORITY = 5
# Stable namespace so the same app request id always maps to the same job id (idempotent enqueue).
REQUEST_NAMESPACE = uuid.UUID("6f1c3a52-9a59-4b8e-8d7c-3f4b1c2a9e10")


class State(enum.StrEnum):
    QUEUED = "queued"
    SUBMITTING = "submitting"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({State.COMPLETED, State.FAILED, State.CANCELED})


if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        """``JobRequest`` on first use: ``daemon.api_models`` builds on this module, so it cannot be
        imported while this one loads."""
        if name == "JobRequest":
            from daemon.api_models import JobRequest

            return JobRequest
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def new_job_id(provider: str, request_id: str | None = None) -> str:
    """A job id names its provider, so every key of the job shares the provider's hash tag."""
    token = uuid.uuid5(REQUEST_NAMESPACE, f"{provider}:{request_id}") if request_id else uuid.uuid4()
    return f"{provider}-{token.hex}"


@dataclass(frozen=True, slots=True)
class Update:
    """What a provider reported about a job, ready for the transition script."""

    state: State
    progress: int | None = None
    message: str | None = None
    artifact: dict[str, Any] | None = None
    provider_job_id: str | None = None
    error_type: str | None = None
    fields: dict[str, str] | None = None  # further record fields to set with the transition
    confirm: bool = False  # a callback: a terminal state is only a hint to read the status now

    def to_json(self) -> bytes:
        data: dict[str, Any] = {"state": self.state.value}
        if self.progress is not None:
            data["progress"] = self.progress
        if self.message is not None:
            data["message"] = self.message
        if self.artifact is not None:
            data["artifact"] = orjson.dumps(self.artifact).decode()
        if self.provider_job_id is not None:
            data["provider_job_id"] = self.provider_job_id
        if self.error_type is not None:
            data["error_type"] = self.error_type
        if self.fields:
            data["fields"] = self.fields
        if self.confirm:
            data["confirm"] = True
        return orjson.dumps(data)


@dataclass(frozen=True, slots=True)
class Job:
    """A job record as stored in Redis (a hash of strings)."""

    fields: dict[str, str]

    @property
    def id(self) -> str:
        return self.fields["id"]

    @property
    def provider(self) -> str:
        return self.fields["provider"]

    @property
    def state(self) -> State:
        return State(self.fields["state"])

    @property
    def operation(self) -> str:
        return self.fields["operation"]

    @property
    def params(self) -> dict[str, Any]:
        loaded: dict[str, Any] = orjson.loads(self.fields.get("params", "{}"))
        return loaded

    @property
    def account(self) -> str | None:
        return self.fields.get("account") or None

    @property
    def provider_job_id(self) -> str | None:
        return self.fields.get("provider_job_id") or None

    def ms(self, name: str) -> int | None:
        value = self.fields.get(name)
        return int(value) if value else None

    def to_api(self) -> dict[str, Any]:
        """The job in the shape of useapi's status model
        (https://useapi.net/docs/api-ltxstudio-v1/get-ltxstudio-assets-jobId), plus genrelay's own
        fields."""
        f = self.fields
        artifact = orjson.loads(f["artifact"]) if f.get("artifact") else None
        status: dict[str, Any] = {"type": f["state"], "progress": int(f.get("progress") or 0)}
        if f.get("message"):
            status["message"] = f["message"]
        if artifact:
            status["artifact"] = artifact
            if f["state"] == State.COMPLETED:
                # The asset its completion recorded: GET /v1/assets/{assetId} (and /content, our copy).
                asset = artifact.get("asset") if isinstance(artifact.get("asset"), dict) else {}
                provider_asset_id = asset.get("fileId") or asset.get("id")
                artifact["assetId"] = keys.asset_id(
                    self.provider, self.provider_job_id, provider_asset_id, self.id
                )
        return {
            "jobId": self.id,
            "status": status,
            "provider": self.provider,
            "operation": self.operation,
            "params": self.params,
            "account": self.account,
            "providerJobId": self.provider_job_id,
            "replyRef": f.get("reply_ref") or None,
            "replyUrl": f.get("reply_url") or None,
            "priority": int(f.get("priority") or DEFAULT_PRIORITY),
            "errorType": f.get("error_type") or None,
            "endedBy": f.get("ended_by") or None,
            "cancelNote": f.get("cancel_note") or None,
            "submitTries": int(f.get("submit_tries") or 0),
            "createdAt": self.ms("created_ms"),
            "submittedAt": self.ms("submitted_ms"),
            "startedAt": self.ms("started_ms"),
            "finishedAt": self.ms("finished_ms"),
            "updatedAt": self.ms("updated_ms"),
        }
