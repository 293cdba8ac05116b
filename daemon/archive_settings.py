"""The archive's settings (``GENRELAY_ARCHIVE_*`` and the standard AWS variables), read with the rest of
:class:`~daemon.settings.Settings` and kept apart so the archive's knobs live in one place."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from daemon.errors import SettingsError

NOTIFY_MODES = ("before-notify", "after-notify")
DEFAULT_MAX_BYTES = 2 * 1024**3
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class EnvReader(Protocol):
    env: Mapping[str, str]

    def text(self, suffix: str) -> str | None: ...
    def integer(self, suffix: str, default: int, *, low: int, high: int | None = None) -> int: ...
    def number(self, suffix: str, default: float) -> float: ...
    def flag(self, suffix: str, default: bool) -> bool: ...
    def choice(self, suffix: str, default: str, choices: tuple[str, ...]) -> str: ...


@dataclass(frozen=True, slots=True)
class S3Options:
    """Where an ``s3://`` archive lives; unset values are left to the S3 client's own defaults."""

    bucket: str
    prefix: str
    endpoint: str | None
    region: str | None
    access_key_id: str | None
    secret_access_key: str | None = field(repr=False)
    session_token: str | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class ArchiveSettings:
    url: str  # file:///absolute/dir or s3://bucket/prefix
    directory: Path | None  # the local backend's directory
    s3: S3Options | None
    staging_dir: Path  # partial downloads (always local, resumable after a crash)
    allow_private: tuple[Network, ...]
    max_bytes: int
    timeout: float
    retention: float
    max_tries: int
    claim_ttl: float
    concurrency: int
    notify: str  # a job's default: before-notify | after-notify
    s3_redirect: bool

    @classmethod
    def from_reader(
        cls, reader: EnvReader, data_dir: Path, allow_private: tuple[Network, ...]
    ) -> ArchiveSettings:
        url = reader.text("ARCHIVE_URL") or (data_dir / "archive").resolve().as_uri()
        parts = urlsplit(url)
        directory: Path | None = None
        s3: S3Options | None = None
        if parts.scheme == "file":
            directory = Path(unquote(parts.path))
            if not parts.path.startswith("/"):
                raise SettingsError(f"GENRELAY_ARCHIVE_URL has value {url!r}: file:// needs an absolute path")
        elif parts.scheme == "s3":
            if not parts.netloc:
                raise SettingsError(f"GENRELAY_ARCHIVE_URL has value {url!r}: s3:// needs a bucket")
            env = reader.env
            s3 = S3Options(
                bucket=parts.netloc,
                prefix=parts.path.strip("/"),
                endpoint=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
                region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
                access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
                secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
                session_token=env.get("AWS_SESSION_TOKEN") or None,
            )
        else:
            raise SettingsError(
                f"GENRELAY_ARCHIVE_URL has value {url!r}: use file:///DIR or s3://BUCKET/PREFIX"
            )
        staging = directory / ".partial" if directory is not None else data_dir.resolve() / "archive-partial"
        return cls(
            url=url,
            directory=directory,
            s3=s3,
            staging_dir=staging,
            allow_private=allow_private,
            max_bytes=reader.integer("ARCHIVE_MAX_BYTES", DEFAULT_MAX_BYTES, low=1),
            timeout=reader.number("ARCHIVE_TIMEOUT", 30.0),
            retention=reader.number("ARCHIVE_RETENTION", 2592000.0),
            max_tries=reader.integer("ARCHIVE_MAX_TRIES", 12, low=1),
            claim_ttl=reader.number("ARCHIVE_CLAIM_TTL", 30.0),
            concurrency=reader.integer("ARCHIVE_CONCURRENCY", 16, low=1),
            notify=reader.choice("ARCHIVE_NOTIFY", "after-notify", NOTIFY_MODES),
            s3_redirect=reader.flag("ARCHIVE_S3_REDIRECT", False),
        )

    def secrets(self) -> tuple[str, ...]:
        if self.s3 is None:
            return ()
        return tuple(value for value in (self.s3.secret_access_key, self.s3.session_token) if value)
