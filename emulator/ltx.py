from __future__ import annotations

from typing import Any

from aiohttp import web

from emulator.ltx_state import STATE_KEY, EmulatorState, Job
from emulator.responses import ApiError, decode_object, json_response

ENDPOINTS: dict[str, tuple[str, ...]] = {
    "text-to-video": ("prompt", "model", "duration", "resolution"),
    "image-to-video": ("image_uri", "prompt", "model", "duration", "resolution"),
    "audio-to-video": ("audio_uri",),
    "retake": ("video_uri", "start_time", "duration"),
    "extend": ("video_uri", "duration"),
    "video-to-video-hdr": ("video_uri",),
    "video-to-video-reframe": ("video_uri", "model", "resolution"),
}

FIELD_KINDS: dict[str, str] = {
    "prompt": "string",
    "model": "string",
    "resolution": "string",
    "image_uri": "string",
    "audio_uri": "string",
    "video_uri": "string",
    "camera_motion": "string",
    "mode": "string",
    "duration": "number",
    "start_time": "number",
    "fps": "number",
    "generate_audio": "boolean",
}

NOT_FOUND = "job not found or expired"
FAILURE_MESSAGES: dict[str, str] = {
    "content_filtered_error": "The request was rejected by the content filter",
    "api_error": "The generation failed because of an internal error",
    "service_unavailable": "The generation service is temporarily unavailable",
    "overloaded_error": "The generation service is overloaded",
}


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v2/{endpoint}", submit),
        web.get("/v2/{endpoint}/{job_id}", status),
    ]


async def submit(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    key = authenticate(request, state)
    endpoint = known_endpoint(request)
    body = await read_object(request)
    validate(endpoint, body)
    if state.rate_limited(key):
        raise ApiError(
            429,
            "Too many requests for this API key, retry later",
            "rate_limit_error",
            {"Retry-After": str(state.config.retry_after_seconds)},
        )
    prompt = body.get("prompt")
    job = state.submit(key, endpoint, prompt if isinstance(prompt, str) else "")
    if job is None:
        retry_after = str(state.config.retry_after_seconds)
        raise ApiError(
            429,
            f"Too many concurrent jobs for this API key (limit {state.accounts[key].max_jobs})",
            "concurrency_limit_error",
            {"Retry-After": retry_after},
        )
    return json_response({"id": job.id, "created_at": job.created_at}, status=202)


async def status(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    key = authenticate(request, state)
    state.accounts[key].polls += 1
    endpoint = known_endpoint(request)
    job = state.lookup(key, endpoint, request.match_info["job_id"])
    if job is None:
        raise ApiError(404, NOT_FOUND)
    return json_response(status_payload(job, state))


def authenticate(request: web.Request, state: EmulatorState) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key or key in state.revoked or state.account(key) is None:
        raise ApiError(401, "Invalid or missing API key")
    return key


def known_endpoint(request: web.Request) -> str:
    endpoint = request.match_info["endpoint"]
    if endpoint not in ENDPOINTS:
        raise ApiError(404, f"Unknown endpoint: /v2/{endpoint}")
    return endpoint


async def read_object(request: web.Request) -> dict[str, Any]:
    return decode_object(await request.read())


def validate(endpoint: str, body: dict[str, Any]) -> None:
    for name in ENDPOINTS[endpoint]:
        if body.get(name) is None:
            raise ApiError(400, f"Missing required field: {name}")
    if endpoint == "audio-to-video" and body.get("image_uri") is None and body.get("prompt") is None:
        raise ApiError(400, "Missing required field: one of image_uri or prompt")
    for name, value in body.items():
        kind = FIELD_KINDS.get(name)
        if kind is not None and value is not None and not is_kind(value, kind):
            raise ApiError(400, f"Field '{name}' must be a {kind}")
    check_values(body)


def is_kind(value: object, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_values(body: dict[str, Any]) -> None:
    duration = body.get("duration")
    if duration is not None and duration <= 0:
        raise ApiError(400, "Field 'duration' must be greater than 0")
    start_time = body.get("start_time")
    if start_time is not None and start_time < 0:
        raise ApiError(400, "Field 'start_time' must not be negative")
    for name in ("prompt", "model", "resolution", "image_uri", "audio_uri", "video_uri"):
        if body.get(name) == "":
            raise ApiError(400, f"Field '{name}' must not be empty")


def status_payload(job: Job, state: EmulatorState) -> dict[str, Any]:
    current = job.status_at(state.clock())
    payload: dict[str, Any] = {"id": job.id, "status": current, "created_at": job.created_at}
    if current == "completed":
        payload["completed_at"] = job.completed_at
        payload["result"] = result_urls(job, state.config.public_base)
    elif current == "failed":
        payload["completed_at"] = job.completed_at
        payload["error"] = {"type": job.error_type, "message": failure_message(job.error_type)}
    return payload


def failure_message(error_type: str | None) -> str:
    return FAILURE_MESSAGES.get(error_type or "", "The generation failed")


def result_urls(job: Job, public_base: str) -> dict[str, str]:
    base = public_base.rstrip("/")
    if job.endpoint == "video-to-video-hdr":
        return {"exr_frames_url": f"{base}/files/{job.id}.zip"}
    return {"video_url": f"{base}/files/{job.id}.mp4"}
