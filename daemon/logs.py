"""Structured logging with secret redaction.

Both structlog loggers and stdlib ``logging`` (arq, ``aiohttp.access``, ``aiohttp.server``) go through the
same processors, so every line gets a level, an ISO UTC timestamp and :class:`SecretRedactor` before it is
rendered. Everything is written to **stderr**, one line per event: JSON lines, or a human-readable console
format when stderr is a terminal.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Any

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["REDACTED", "SecretRedactor", "configure_logging"]

REDACTED = "***"
# Shorter values would turn ordinary words and numbers into "***" all over the logs.
MIN_SECRET_LENGTH = 4

_LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_FORMATS = ("auto", "json", "console")

# A suffix match also catches x_api_key, accessToken, Set-Cookie, Proxy-Authorization, client_secret...
# Masking a harmless field by mistake costs little; missing a credential costs a rotation.
_SENSITIVE_KEY_RE = re.compile(r"(?:authorization|api[_-]?key|token|secret|password|cookie)$", re.IGNORECASE)
# The last path segment of a callback URL is the capability that authorises the provider's webhook.
_CALLBACK_RE = re.compile(r"(/callbacks/[^/\s?#]+/)[^/\s?#\"'&]+")
_BEARER_RE = re.compile(r"(\bBearer\s+)[^\s\"',;]+", re.IGNORECASE)
_PRIMITIVES = (int, float, bool, type(None))


class SecretRedactor:
    """A structlog processor that removes credentials from an event before it is rendered.

    It masks, recursively through dicts, lists and tuples:

    * every occurrence of a known secret value (at least 4 characters) inside any string;
    * the whole value of a key whose name looks sensitive (``authorization``, ``api_key``, ``token``...);
    * the token of a callback path: ``/callbacks/<provider>/<token>`` becomes ``/callbacks/<provider>/***``;
    * ``Bearer <credential>`` becomes ``Bearer ***``.

    Args:
        secrets: Values that must never be logged, e.g. ``Settings.secrets()``.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = {value for value in secrets if len(value) >= MIN_SECRET_LENGTH}
        # Longest first so a secret that contains another one is masked whole, not in pieces.
        ordered = sorted(values, key=lambda value: (-len(value), value))
        self._secrets_re = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        """Return ``event_dict`` with every secret masked."""
        for key, value in event_dict.items():
            # Underscore keys are structlog internals (e.g. the stdlib LogRecord) that later processors need.
            if not key.startswith("_"):
                event_dict[key] = self._value(key, value)
        return event_dict

    def redact(self, text: str) -> str:
        """Return ``text`` with secret values, callback tokens and bearer credentials masked."""
        if self._secrets_re is not None:
            text = self._secrets_re.sub(REDACTED, text)
        if "/callbacks/" in text:
            text = _CALLBACK_RE.sub(rf"\g<1>{REDACTED}", text)
        return _BEARER_RE.sub(rf"\g<1>{REDACTED}", text)

    def _value(self, key: object, value: Any) -> Any:
        if value is not None and isinstance(key, str) and _SENSITIVE_KEY_RE.search(key):
            return REDACTED
        return self._scrub(value)

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, _PRIMITIVES):
            return value
        if isinstance(value, dict):
            return {key: self._value(key, item) for key, item in value.items()}
        if isinstance(value, list):
            return [self._scrub(item) for item in value]
        if isinstance(value, tuple):
            return tuple(self._scrub(item) for item in value)
        # Other objects (URLs, exceptions, paths) are rendered through str()/repr() later; replace one
        # only when its text would leak something, so harmless objects keep their usual rendering.
        text = str(value)
        redacted = self.redact(text)
        return value if redacted == text else redacted


def configure_logging(*, level: str = "info", fmt: str = "auto", secrets: Iterable[str] = ()) -> None:
    """Configure structlog and the stdlib root logger; call once at start.

    Output goes to stderr. The root logger's handlers are replaced, so libraries that log through
    ``logging`` share the same format, level and redaction.

    Args:
        level: Lowest level written: ``debug``, ``info``, ``warning`` or ``error``.
        fmt: ``json`` for JSON lines, ``console`` for human-readable lines, ``auto`` for console when stderr
            is a terminal and JSON otherwise.
        secrets: Values to mask wherever they appear, e.g. ``Settings.secrets()``.

    Raises:
        ValueError: ``level`` or ``fmt`` is not one of the values above.
    """
    if level not in _LEVELS:
        raise ValueError(f"unknown log level {level!r} (expected one of {', '.join(_LEVELS)})")
    if fmt not in _FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (expected one of {', '.join(_FORMATS)})")
    stream = sys.stderr
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    shared = _shared_processors(SecretRedactor(secrets))
    _configure_structlog(shared, console=console, level=_LEVELS[level])
    _configure_stdlib(shared, console=console, level=_LEVELS[level])


def _shared_processors(redactor: SecretRedactor) -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Tracebacks are turned into text before redaction, because exception messages and local URLs
        # are a common way for a key or a callback token to reach the logs.
        structlog.processors.format_exc_info,
        redactor,
    ]


def _configure_structlog(shared: list[Processor], *, console: bool, level: int) -> None:
    renderer: Processor
    factory: Any
    if console:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        factory = structlog.WriteLoggerFactory(file=sys.stderr)
    else:
        # orjson returns bytes, so the lines go straight to the binary buffer under stderr.
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory = structlog.BytesLoggerFactory(file=sys.stderr.buffer)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def _configure_stdlib(shared: list[Processor], *, console: bool, level: int) -> None:
    renderer: Processor
    if console:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        # Handlers write text, so the JSON bytes are decoded here rather than written raw.
        renderer = structlog.processors.JSONRenderer(serializer=_dumps_text)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def _dumps_text(obj: Any, **kwargs: Any) -> str:
    return orjson.dumps(obj, **kwargs).decode()
