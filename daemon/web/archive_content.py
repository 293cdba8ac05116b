"""``GET /v1/assets/{id}/content``: our copy of an asset, whatever became of the provider's URL.

``Content-Type`` and ``Content-Length`` from the archive's record, ``ETag`` = the SHA-256 of the
bytes (``If-None-Match`` answers 304), one ``Range`` (``bytes=N-M``, ``N-``, ``-N``) answers 206
with ``Content-Range`` (416 when it lies past the end). With an S3 archive and
``GENRELAY_ARCHIVE_S3_REDIRECT=1`` the answer is a 302 to a presigned URL of the object instead.
Until the copy is complete the route answers 404 (not archived yet, with the archive's state):
a partial object is never served; with ``?fallback=provider`` (the dashboard's links) it redirects
to the provider's URL instead.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from aiohttp import web

from daemon import keys
from daemon.archive_settings import ArchiveSettings
from daemon.archive_state import ArchiveState
from daemon.archive_store import ArchiveBackend, open_backend
from daemon.errors import NotFound
from daemon.web.api import SERVICES

routes = web.RouteTableDef()
BACKEND: web.AppKey[ArchiveBackend] = web.AppKey("archive_backend")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end exclusive) of a single byte range; None: serve it all; ValueError: 416."""
    match = _RANGE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # the last N bytes
        length = int(last)
        if length == 0:
            raise ValueError("empty suffix range")
        return max(0, size - length), size
    start = int(first)
    end = min(size, int(last) + 1) if last else size
    if start >= size or end <= start:
        raise ValueError("range not satisfiable")
    return start, end


def attach_backend(app: web.Application, settings: ArchiveSettings) -> None:
    app[BACKEND] = open_backend(settings)


@routes.get("/v1/assets/{assetId}/content")
async def asset_content(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    asset_id = request.match_info["assetId"]
    if keys.provider_of_asset(asset_id) is None or not await services.client.exists(keys.asset_key(asset_id)):
        raise NotFound(f"no asset {asset_id!r} (unknown, or expired after its retention period)")
    record = await ArchiveState(services.client).get(asset_id)
    if record.get("state") != "archived":
        state = record.get("state") or "pending"
        if request.query.get("fallback") == "provider":  # the dashboard's links, before the copy is done
            url = await services.client.hget(keys.asset_key(asset_id), "url")
            if url and urlsplit(url).scheme in ("http", "https"):
                raise web.HTTPFound(url)
        raise NotFound(f"asset {asset_id!r} has no archived copy (archive state: {state})")
    sha, size, mime = record["sha256"], int(record["bytes"]), record.get("mime") or "application/octet-stream"
    etag = f'"{sha}"'
    backend = request.app[BACKEND]
    if services.settings.archive.s3_redirect:
        url = await backend.presign(sha)
        if url:
            raise web.HTTPFound(url, headers={"ETag": etag})
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, max-age=31536000, immutable",
    }
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    try:
        span = parse_range(request.headers.get("Range", ""), size) if "Range" in request.headers else None
    except ValueError:
        return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    start, end = span or (0, size)
    response = web.StreamResponse(status=206 if span else 200, headers=headers)
    response.content_type = mime
    response.content_length = end - start
    if span:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    await response.prepare(request)
    if request.method != "HEAD":
        async for chunk in backend.read(sha, start, end):
            await response.write(chunk)
    await response.write_eof()
    return response
