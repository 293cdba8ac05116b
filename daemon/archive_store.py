"""Where archived objects live, behind one small interface: a local directory (the default) or an
S3-compatible bucket. Objects are named by the SHA-256 of their bytes (``objects/ab/<sha256>``);
a write is never visible half done: the local backend renames a complete, synced file into place,
and S3 shows an object only once its upload (multipart for big files) is complete. The archive's
record in Redis is written after that, so nothing points at an object that is not all there.

S3 goes through obstore (Rust ``object_store`` bindings: async, streaming ranges, multipart
uploads from a file, presigned URLs, a small wheel with no botocore underneath).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from daemon.archive_settings import ArchiveSettings, S3Options

CHUNK = 1024 * 1024
PRESIGN_SECONDS = 300


class StorageError(Exception):
    """The backend refused a write or a read (disk full, permission, bucket error)."""


class ArchiveBackend(Protocol):
    async def put(self, part: Path, sha256: str, mime: str) -> None:
        """Store the complete file ``part`` as the object ``sha256`` (nothing to do when the object
        is there already: the same hash is the same bytes); ``part`` is consumed."""

    def read(self, sha256: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (exclusive) of the object."""

    async def presign(self, sha256: str) -> str | None:
        """A short-lived URL the client may fetch the object from itself, when the backend has one."""

    async def delete(self, sha256: str) -> None: ...


def object_path(sha256: str) -> str:
    return f"objects/{sha256[:2]}/{sha256}"


class LocalBackend:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / object_path(sha256)

    async def put(self, part: Path, sha256: str, mime: str) -> None:
        await asyncio.to_thread(self._put, part, self.path(sha256))

    @staticmethod
    def _put(part: Path, target: Path) -> None:
        try:
            if target.is_file():
                part.unlink(missing_ok=True)
                return
            target.parent.mkdir(parents=True, exist_ok=True)
            with part.open("rb") as handle:
                os.fsync(handle.fileno())
            os.replace(part, target)  # atomic: the object is whole or absent
            directory = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            raise StorageError(f"cannot write the archive directory: {exc.strerror or exc}") from exc

    async def read(self, sha256: str, start: int, end: int) -> AsyncIterator[bytes]:
        with self.path(sha256).open("rb") as handle:
            handle.seek(start)
            left = end - start
            while left > 0:
                chunk = handle.read(min(CHUNK, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk

    async def presign(self, sha256: str) -> str | None:
        return None

    async def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)


class S3Backend:
    def __init__(self, options: S3Options) -> None:
        from obstore.store import S3Store

        config: dict[str, str] = {}
        if options.endpoint:
            config["endpoint"] = options.endpoint
        if options.region:
            config["region"] = options.region
        if options.access_key_id:
            config["access_key_id"] = options.access_key_id
        if options.secret_access_key:
            config["secret_access_key"] = options.secret_access_key
        if options.session_token:
            config["token"] = options.session_token
        allow_http = bool(options.endpoint and options.endpoint.startswith("http://"))
        self.store = S3Store(
            options.bucket,
            prefix=options.prefix or None,
            config=config,  # type: ignore[arg-type]
            client_options={"allow_http": allow_http},
        )

    async def put(self, part: Path, sha256: str, mime: str) -> None:
        import obstore

        if await self._exists(sha256):
            await asyncio.to_thread(part.unlink, missing_ok=True)
            return
        try:
            # Multipart above 8 MiB, two parts in flight: memory stays flat whatever the size.
            await obstore.put_async(
                self.store,
                object_path(sha256),
                part,
                attributes={"Content-Type": mime},
                chunk_size=8 * 1024 * 1024,
                max_concurrency=2,
            )
        except Exception as exc:  # obstore raises its own classes, one per store error
            raise StorageError(f"the bucket refused the object: {type(exc).__name__}: {exc}") from exc
        await asyncio.to_thread(part.unlink, missing_ok=True)

    async def _exists(self, sha256: str) -> bool:
        import obstore

        try:
            await obstore.head_async(self.store, object_path(sha256))
        except FileNotFoundError:
            return False
        except Exception as exc:  # obstore raises its own classes, one per store error
            raise StorageError(f"the bucket cannot be read: {type(exc).__name__}: {exc}") from exc
        return True

    async def read(self, sha256: str, start: int, end: int) -> AsyncIterator[bytes]:
        import obstore

        if end <= start:
            return
        result = await obstore.get_async(self.store, object_path(sha256), options={"range": (start, end)})
        async for chunk in result.stream(min_chunk_size=CHUNK):
            yield bytes(chunk)

    async def presign(self, sha256: str) -> str | None:
        import obstore

        url: str = await obstore.sign_async(
            self.store, "GET", object_path(sha256), timedelta(seconds=PRESIGN_SECONDS)
        )
        return url

    async def delete(self, sha256: str) -> None:
        import obstore

        await obstore.delete_async(self.store, object_path(sha256))


def open_backend(settings: ArchiveSettings) -> ArchiveBackend:
    if settings.s3 is not None:
        return S3Backend(settings.s3)
    assert settings.directory is not None
    return LocalBackend(settings.directory)
