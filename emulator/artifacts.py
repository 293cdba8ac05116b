"""The providers' result files: every artifact URL the emulator hands out serves bytes.

The content is deterministic per file name (the job id is in it) and generated on the fly, so a
test can ask for a 200 MB artifact without anything stored: 64 KiB blocks, each the name's SHAKE-256
stream with the block number in its first 8 bytes. Knobs (``POST /_emulator/config``):
``artifact_bytes`` (size of every file), ``artifact_urls_expired`` (every URL answers 403 as an
expired signed URL does), ``artifact_stall_after`` (a download stops sending after this many bytes
and holds the connection until the knob is cleared: an interrupted transfer). ``Range`` requests
(``bytes=N-`` and ``bytes=N-M``) get 206. Every request is logged for ``GET /_emulator/artifacts``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from functools import lru_cache
from typing import Any

from aiohttp import web

from emulator.ltx_state import STATE_KEY

BLOCK = 64 * 1024
MIME_BY_EXTENSION = {
    "mp4": "video/mp4",
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "zip": "application/zip",
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
}
LOG_KEY: web.AppKey[list[dict[str, Any]]] = web.AppKey("artifact_log", list)
MAX_LOG = 10_000
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@lru_cache(maxsize=64)
def _base(name: str) -> bytes:
    return hashlib.shake_256(name.encode()).digest(BLOCK)


def content(name: str, start: int, end: int) -> bytes:
    """Bytes ``start`` to ``end`` (exclusive) of the file ``name``."""
    base = _base(name)
    out = bytearray()
    block = start // BLOCK
    while block * BLOCK < end:
        data = block.to_bytes(8, "big") + base[8:]
        lo = max(start - block * BLOCK, 0)
        hi = min(end - block * BLOCK, BLOCK)
        out += data[lo:hi]
        block += 1
    return bytes(out)


def sha256_of(name: str, size: int) -> str:
    """The SHA-256 of the whole file ``name`` of ``size`` bytes (what an archived copy must have)."""
    digest = hashlib.sha256()
    for offset in range(0, size, 16 * BLOCK):
        digest.update(content(name, offset, min(size, offset + 16 * BLOCK)))
    return digest.hexdigest()


def routes() -> list[web.RouteDef]:
    return [
        web.get("/files/{name}", serve),
        web.get("/ltxstudio/{name}", serve),
        web.get("/vydra/{name}", serve),
        web.get("/_emulator/artifacts", artifact_log),
    ]


async def artifact_log(request: web.Request) -> web.Response:
    return web.json_response({"requests": request.app[LOG_KEY]})


async def serve(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    name = request.match_info["name"]
    size = state.config.artifact_bytes
    entry: dict[str, Any] = {"path": request.path, "range": request.headers.get("Range"), "t": time.time()}
    if len(request.app[LOG_KEY]) < MAX_LOG:
        request.app[LOG_KEY].append(entry)
    if state.config.artifact_urls_expired:
        entry["status"] = 403
        return web.Response(status=403, text="Request has expired", content_type="text/plain")
    start, end = 0, size
    match = _RANGE.match(request.headers.get("Range", ""))
    if match:
        start = int(match.group(1))
        end = min(size, int(match.group(2)) + 1) if match.group(2) else size
        if start >= size or end <= start:
            entry["status"] = 416
            return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
    response = web.StreamResponse(status=206 if match else 200)
    response.content_type = MIME_BY_EXTENSION.get(name.rpartition(".")[2], "application/octet-stream")
    response.content_length = end - start
    response.headers["Accept-Ranges"] = "bytes"
    if match:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    entry["status"] = response.status
    await response.prepare(request)
    offset = start
    while offset < end:
        stall = state.config.artifact_stall_after
        if stall and offset >= stall:
            entry["stalled_at"] = offset
            while state.config.artifact_stall_after:  # noqa: ASYNC110 (a knob: the config is replaced whole)
                await asyncio.sleep(0.05)
            continue
        limit = min(end, offset + 4 * BLOCK, stall if stall > offset else end)
        await response.write(content(name, offset, limit))
        offset = limit
    await response.write_eof()
    entry["done"] = time.time()
    return response
