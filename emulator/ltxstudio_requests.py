"""Create-request validation for the useapi.net LTX Studio endpoints (docs/providers.md §1.3).

Fields and enums are the ones the create pages list; unknown fields are ignored, as useapi's
pages describe optional fields only. Bodies may be JSON or form data (useapi accepts
``multipart/form-data`` on create endpoints), so numbers and booleans may arrive as strings.
Choices where the pages are silent ([I]):

* a too long ``prompt`` (> 2000), ``replyUrl`` or ``replyRef`` (> 1024) is ``413``, the family's
  status for "too long" (§1.6); every other invalid field is ``400``;
* ``videos/veo-create`` needs ``startAssetId`` for veo2 (documented) and ``prompt`` for veo3 and
  veo3-fast (a text-to-video model needs a text); ``resolution`` is refused on veo2;
* ``replyUrl`` must be an absolute http(s) URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from yarl import URL

from emulator.responses import ApiError

PROMPT_LIMIT = 2000
REPLY_LIMIT = 1024
ASPECT_RATIOS = frozenset({"16:9", "9:16", "1:1"})
IMAGE_MODELS = frozenset({"flux", "flux-premium", "nano-banana"})
SCENE_FIELDS = frozenset({"shotType", "shotAngle", "location", "weather", "lighting"})
REFERENCE_FIELDS = frozenset({"referenceAssetId", "referenceAssetId2", "referenceAssetId3"})
SEED = (0, None)
COMMON_INTS: Mapping[str, tuple[int, int | None]] = {"pollForResult": (1, 20), "maxJobs": (1, 100)}
COMMON_STRINGS = frozenset({"email", "replyUrl", "replyRef"})


@dataclass(frozen=True, slots=True)
class Rules:
    """What one create endpoint accepts."""

    kind: str  # "video" | "image": the ``-type:`` suffix of its jobIds
    required: tuple[str, ...] = ()
    enums: Mapping[str, frozenset[str]] = field(default_factory=dict)
    ints: Mapping[str, tuple[int, int | None]] = field(default_factory=dict)
    bools: frozenset[str] = frozenset()
    strings: frozenset[str] = frozenset()


ENDPOINTS: dict[str, Rules] = {
    "videos/ltx-create": Rules(
        "video",
        required=("prompt",),
        enums={
            "model": frozenset({"ltxv", "ltxv-turbo"}),
            "duration": frozenset({"3", "5", "7", "9", "15", "30"}),
            "aspectRatio": ASPECT_RATIOS,
            "intensity": frozenset({"low", "medium", "high"}),
        },
        ints={"seed": SEED},
        bools=frozenset({"audioSFX"}),
        strings=frozenset({"prompt", "startAssetId", "endAssetId"}),
    ),
    "videos/veo-create": Rules(
        "video",
        enums={
            "model": frozenset({"veo2", "veo3", "veo3-fast"}),
            "aspectRatio": ASPECT_RATIOS,
            "resolution": frozenset({"720p", "1080p"}),
        },
        ints={"seed": SEED, "duration": (5, 8)},
        bools=frozenset({"audioSFX"}),
        strings=frozenset({"prompt", "startAssetId"}),
    ),
    "images/create": Rules(
        "image",
        required=("prompt",),
        enums={"model": IMAGE_MODELS},
        ints={"seed": SEED, "reference_strength": (0, 100)},
        strings=frozenset({"prompt", "aspectRatio", "style"}) | REFERENCE_FIELDS | SCENE_FIELDS,
    ),
    "images/edit": Rules(
        "image",
        required=("prompt", "referenceAssetId"),
        enums={"model": IMAGE_MODELS},
        ints={"seed": SEED},
        strings=frozenset({"prompt", "aspectRatio"}) | REFERENCE_FIELDS | SCENE_FIELDS,
    ),
    "images/upscale": Rules("image", required=("jobId",), strings=frozenset({"jobId"})),
}
ALIASES = {"images/flux-create": "images/create", "images/flux-edit": "images/edit"}


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """A valid create request, reduced to what the emulator acts on."""

    endpoint: str
    kind: str
    prompt: str
    email: str | None
    poll_for_result: int | None
    max_jobs: int | None
    reply_url: str | None
    reply_ref: str | None
    source_job_id: str | None  # images/upscale: the image job to upscale


def parse_create(name: str, body: Mapping[str, Any]) -> CreateRequest:
    """Validate ``body`` for endpoint ``name`` (aliases allowed); raises ApiError 400 or 413."""
    endpoint = ALIASES.get(name, name)
    rules = ENDPOINTS[endpoint]
    values = {key: value for key, value in body.items() if value is not None}
    for required in rules.required:
        if values.get(required) in (None, ""):
            raise ApiError(400, f"Parameter {required} is required")
    for key in rules.strings | COMMON_STRINGS:
        if key in values and not isinstance(values[key], str):
            raise ApiError(400, f"Parameter {key} must be a string")
    for key, allowed in rules.enums.items():
        if key in values:
            values[key] = _enum(key, values[key], allowed)
    for key, bounds in {**COMMON_INTS, **rules.ints}.items():
        if key in values:
            values[key] = _integer(key, values[key], bounds)
    for key in rules.bools:
        if key in values:
            values[key] = _boolean(key, values[key])
    _check_lengths(values)
    if endpoint == "videos/veo-create":
        _check_veo(values)
    return CreateRequest(
        endpoint=endpoint,
        kind=rules.kind,
        prompt=values.get("prompt", ""),
        email=values.get("email") or None,
        poll_for_result=values.get("pollForResult"),
        max_jobs=values.get("maxJobs"),
        reply_url=values.get("replyUrl") or None,
        reply_ref=values.get("replyRef") or None,
        source_job_id=values.get("jobId"),
    )


def _enum(key: str, value: object, allowed: frozenset[str]) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or text not in allowed:
        raise ApiError(400, f"Parameter {key} must be one of: {', '.join(sorted(allowed))}")
    return text


def _integer(key: str, value: object, bounds: tuple[int, int | None]) -> int:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value)
    low, high = bounds
    if number is None or number < low or (high is not None and number > high):
        span = f"{low}…{high}" if high is not None else f">= {low}"
        raise ApiError(400, f"Parameter {key} must be an integer {span}")
    return number


def _boolean(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ApiError(400, f"Parameter {key} must be true or false")


def _check_lengths(values: Mapping[str, Any]) -> None:
    prompt = values.get("prompt", "")
    if len(prompt) > PROMPT_LIMIT:
        raise ApiError(413, f"Parameter prompt is too long ({len(prompt)} > {PROMPT_LIMIT} characters)")
    for key in ("replyUrl", "replyRef"):
        text = values.get(key, "")
        if len(text) > REPLY_LIMIT:
            raise ApiError(413, f"Parameter {key} is too long ({len(text)} > {REPLY_LIMIT} characters)")
    reply_url = values.get("replyUrl")
    if reply_url:
        try:
            parsed = URL(reply_url)
        except ValueError:
            parsed = URL()
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ApiError(400, "Parameter replyUrl must be an absolute http(s) URL")


def _check_veo(values: Mapping[str, Any]) -> None:
    model = values.get("model", "veo2")
    duration = values.get("duration")
    if model == "veo2":
        if not values.get("startAssetId"):
            raise ApiError(400, "Parameter startAssetId is required for model veo2")
        if "resolution" in values:
            raise ApiError(400, "Parameter resolution is supported by veo3 and veo3-fast only")
    else:
        if not values.get("prompt"):
            raise ApiError(400, f"Parameter prompt is required for model {model}")
        if duration is not None and duration != 8:
            raise ApiError(400, f"Parameter duration must be 8 for model {model}")
