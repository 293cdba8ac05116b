"""One attempt at downloading an artifact into a partial file: streamed (memory stays flat
whatever the size), through the same address guard as deliveries, capped in size, resumed with
``Range`` from what an earlier attempt (or a worker that died) left, and hashed with SHA-256 as the
bytes arrive (the bytes already on disk are hashed first when resuming)."""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import aiohttp
from yarl import URL

from daemon.url_guard import UrlGuard, UrlRefused

CHUNK = 1024 * 1024
MAX_REDIRECTS = 3
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# The provider says this URL no longer works (an expired signed URL answers 403).
GONE = frozenset({401, 403, 404, 410})
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class FetchError(Exception):
    """Why an attempt failed; ``kind``: refused | too_large | gone | transient | storage."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class Fetched:
    sha256: str
    size: int
    mime: str
    resumed_from: int


def _absorb(handle: BinaryIO, digest: hashlib._Hash, chunk: bytes) -> None:
    handle.write(chunk)
    digest.update(chunk)


async def _stream(
    resp: aiohttp.ClientResponse, handle: BinaryIO, digest: hashlib._Hash, size: int, max_bytes: int
) -> int:
    """Append the body to ``handle`` and ``digest``; the size reached. Each chunk is written and
    hashed in a thread while the next one arrives (both release the GIL): the copy runs at the
    speed of the slower of the two, not of their sum."""
    loop = asyncio.get_running_loop()
    absorbing: asyncio.Future[None] | None = None
    try:
        async for chunk in resp.content.iter_chunked(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise FetchError("too_large", f"the artifact is larger than the cap of {max_bytes} bytes")
            if absorbing is not None:
                await absorbing
            absorbing = loop.run_in_executor(None, _absorb, handle, digest, chunk)
    finally:
        if absorbing is not None:
            await absorbing
    return size


def _hash_existing(part: Path) -> tuple[hashlib._Hash, int]:
    digest = hashlib.sha256()
    size = 0
    if part.exists():
        with part.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
    return digest, size


async def fetch(
    session: aiohttp.ClientSession,
    guard: UrlGuard,
    url: str,
    part: Path,
    *,
    max_bytes: int,
    read_timeout: float,
) -> Fetched:
    """Download ``url`` into ``part`` (appending to what is there); raises FetchError."""
    part.parent.mkdir(parents=True, exist_ok=True)
    digest, offset = _hash_existing(part)
    timeout = read_timeout
    client_timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)
    target = _checked(guard, url)
    try:
        for _ in range(MAX_REDIRECTS + 1):
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            request = session.get(target, headers=headers, allow_redirects=False, timeout=client_timeout)
            async with request as resp:
                location = resp.headers.get("Location")
                if resp.status in REDIRECTS and location:
                    target = _checked(guard, target.join(URL(location)))
                    continue
                return await _receive(resp, part, digest, offset, max_bytes)
    except UrlRefused as exc:
        raise FetchError("refused", f"refused: {exc.reason}") from None
    except TimeoutError:
        raise FetchError("transient", f"no data within {timeout:g} s") from None
    except aiohttp.ClientConnectorError as exc:
        raise FetchError("transient", f"cannot connect: {exc.os_error.strerror or exc.os_error}") from None
    except aiohttp.ClientError as exc:
        raise FetchError("transient", f"download failed: {type(exc).__name__}") from None
    raise FetchError("transient", f"more than {MAX_REDIRECTS} redirects")


def discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    _type_file(part).unlink(missing_ok=True)


def _type_file(part: Path) -> Path:
    """Where the partial copy's Content-Type is kept: a resumed download that finds the copy
    complete gets a 416, whose own type says nothing about the artifact."""
    return part.with_name(part.name + ".type")


def _stored_type(part: Path) -> str:
    try:
        return _type_file(part).read_text().strip()
    except OSError:
        return ""


def _checked(guard: UrlGuard, url: str | URL) -> URL:
    try:
        return guard.check_url(url)
    except UrlRefused as exc:
        raise FetchError("refused", f"refused: {exc.reason}") from None


def _start_of(resp: aiohttp.ClientResponse, part: Path, offset: int) -> int:
    """Where the body starts in the file: ``offset`` for a matching 206, 0 for a whole 200."""
    if resp.status in GONE:
        raise FetchError("gone", f"the provider refused the URL (HTTP {resp.status})")
    if resp.status not in (200, 206):
        raise FetchError("transient", f"HTTP {resp.status}")
    if resp.status == 200:
        return 0
    match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
    if not match or int(match.group(1)) != offset:
        discard(part)
        raise FetchError("transient", "the provider answered another range; starting over")
    return offset


async def _receive(
    resp: aiohttp.ClientResponse, part: Path, digest: hashlib._Hash, offset: int, max_bytes: int
) -> Fetched:
    if resp.status == 416 and offset:
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        if total.isdigit() and int(total) == offset:  # the earlier attempt had it all
            return Fetched(digest.hexdigest(), offset, _stored_type(part), offset)
        discard(part)
        raise FetchError("transient", "the partial copy no longer matches; starting over")
    start = _start_of(resp, part, offset)
    mime = resp.headers.get("Content-Type", "").split(";")[0].strip()
    if not start:
        digest = hashlib.sha256()
    length = resp.content_length
    if length is not None and start + length > max_bytes:
        discard(part)
        raise FetchError("too_large", f"the artifact has {start + length} bytes, over the cap of {max_bytes}")
    try:
        if mime:
            _type_file(part).write_text(mime)
        with open(part, "r+b" if start else "wb") as handle:  # noqa: ASYNC230 (writes go to a thread)
            handle.seek(start)
            handle.truncate()
            size = await _stream(resp, handle, digest, start, max_bytes)
    except FetchError:
        discard(part)
        raise
    except OSError as exc:
        raise FetchError("storage", f"cannot write the partial copy: {exc.strerror or exc}") from None
    if length is not None and size != start + length:
        raise FetchError("transient", f"the download ended after {size} of {start + length} bytes")
    return Fetched(digest.hexdigest(), size, mime, offset if start else 0)
