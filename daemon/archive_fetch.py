"""One attempt at downloading an artifact into a partial file: streamed (memory stays flat
whatever the size), through the same address guard as deliveries, capped in size, resumed with
``Range`` from what an earlier attempt (or a worker that died) left, and hashed with SHA-256 as the
bytes arrive (the bytes already on disk are hashed first when resuming). The partial file is held
open and locked (``flock``) by its attempt from start to end: a second attempt on the same host
finds it locked and leaves it alone."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import aiohttp
from yarl import URL

from daemon.url_guard import UrlGuard, UrlRefused

CHUNK = 1024 * 1024
# The partial file is flushed to disk every this many bytes, in a thread while the download goes on.
FLUSH_BYTES = 8 * CHUNK
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


class _Absorber:
    """Writes and hashes the pieces of a body in a thread (both release the GIL) while the next
    ones arrive, one batch at a time and in order: the pieces that arrive while the thread is busy
    wait as the next batch, which starts the moment the thread is free (nothing is held back when
    the body pauses). The written bytes are flushed to disk in another thread as they accumulate,
    so that the flush the archive makes before publishing a copy finds little left to write."""

    def __init__(self, handle: BinaryIO, digest: hashlib._Hash) -> None:
        self.loop = asyncio.get_running_loop()
        self.handle, self.digest = handle, digest
        self.waiting: list[bytes] = []
        self.waiting_bytes = 0
        self.writing: asyncio.Future[int] | None = None
        self.flushing: asyncio.Future[None] | None = None
        self.unflushed = 0

    def add(self, piece: bytes) -> None:
        self.waiting.append(piece)
        self.waiting_bytes += len(piece)
        self._start()

    def _start(self) -> None:
        if not self.waiting or (self.writing is not None and not self.writing.done()):
            return
        batch, self.waiting, self.waiting_bytes = self.waiting, [], 0
        self.writing = self.loop.run_in_executor(None, _absorb, self.handle, self.digest, batch)
        self.writing.add_done_callback(self._written)

    def _written(self, done: asyncio.Future[int]) -> None:
        if done.cancelled() or done.exception() is not None:
            return  # raised by drain()
        self.unflushed += done.result()
        if self.unflushed >= FLUSH_BYTES and (self.flushing is None or self.flushing.done()):
            self.unflushed = 0
            self.flushing = self.loop.run_in_executor(None, _flush, self.handle)
        self._start()

    async def room(self) -> None:
        """Wait while a full batch is already waiting (memory stays bounded)."""
        while self.waiting_bytes >= CHUNK and self.writing is not None:
            await self.writing
            self._start()

    async def drain(self) -> None:
        """Wait until every piece is written and every flush ended; raises what they raised."""
        while (writing := self.writing) is not None:
            await writing
            if self.writing is writing and not self.waiting:
                break
            self._start()
        if self.flushing is not None:
            await self.flushing

    async def settle(self) -> None:
        """Wait for the threads without raising: the body ended badly, its error is what counts."""
        for pending in (self.writing, self.flushing):
            if pending is not None:
                await asyncio.gather(pending, return_exceptions=True)


def _absorb(handle: BinaryIO, digest: hashlib._Hash, batch: list[bytes]) -> int:
    written = 0
    for piece in batch:
        handle.write(piece)
        digest.update(piece)
        written += len(piece)
    return written


def _flush(handle: BinaryIO) -> None:
    handle.flush()
    os.fdatasync(handle.fileno())


async def _stream(
    resp: aiohttp.ClientResponse, handle: BinaryIO, digest: hashlib._Hash, size: int, max_bytes: int
) -> int:
    """Append the body to ``handle`` and ``digest`` (see _Absorber); the size reached."""
    absorber = _Absorber(handle, digest)
    try:
        async for piece in resp.content.iter_any():
            size += len(piece)
            if size > max_bytes:
                raise FetchError("too_large", f"the artifact is larger than the cap of {max_bytes} bytes")
            absorber.add(piece)
            await absorber.room()
        await absorber.drain()
    finally:
        await absorber.settle()
    return size


@dataclass(slots=True)
class Partial:
    """A partial file, open and locked by one attempt, with the digest of what it holds."""

    path: Path
    handle: BinaryIO
    digest: hashlib._Hash
    size: int

    def close(self) -> None:
        self.handle.close()  # releases the lock


def open_partial(path: Path) -> Partial | None:
    """Open (or create) and lock the partial file, hashing what an earlier attempt left in it;
    None when another attempt holds it. Blocking: run it in a thread."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+b")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    digest = hashlib.sha256()
    size = 0
    while chunk := handle.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return Partial(path, handle, digest, size)


async def fetch(
    session: aiohttp.ClientSession,
    guard: UrlGuard,
    url: str,
    partial: Partial,
    *,
    max_bytes: int,
    read_timeout: float,
    keep_type: bool = True,
) -> Fetched:
    """Download ``url`` into ``partial`` (appending to what is there); raises FetchError.
    ``keep_type``: keep the response's Content-Type beside the partial file, for a later attempt
    that finds the copy already complete (not needed when the caller knows the type)."""
    offset = partial.size
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
                return await _receive(resp, partial, max_bytes, keep_type)
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
    resp: aiohttp.ClientResponse, partial: Partial, max_bytes: int, keep_type: bool
) -> Fetched:
    part, offset = partial.path, partial.size
    if resp.status == 416 and offset:
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        if total.isdigit() and int(total) == offset:  # the earlier attempt had it all
            return Fetched(partial.digest.hexdigest(), offset, _stored_type(part), offset)
        discard(part)
        raise FetchError("transient", "the partial copy no longer matches; starting over")
    start = _start_of(resp, part, offset)
    mime = resp.headers.get("Content-Type", "").split(";")[0].strip()
    digest = partial.digest if start else hashlib.sha256()
    length = resp.content_length
    if length is not None and start + length > max_bytes:
        discard(part)
        raise FetchError("too_large", f"the artifact has {start + length} bytes, over the cap of {max_bytes}")
    handle = partial.handle
    try:
        if mime and keep_type:
            await asyncio.to_thread(_type_file(part).write_text, mime)
        handle.seek(start)
        if start != offset:
            handle.truncate()
        size = await _stream(resp, handle, digest, start, max_bytes)
        handle.flush()  # the backend reads the file by its path
    except FetchError:
        discard(part)
        raise
    except OSError as exc:
        raise FetchError("storage", f"cannot write the partial copy: {exc.strerror or exc}") from None
    if length is not None and size != start + length:
        raise FetchError("transient", f"the download ended after {size} of {start + length} bytes")
    return Fetched(digest.hexdigest(), size, mime, offset if start else 0)
