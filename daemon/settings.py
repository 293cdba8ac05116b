"""Configuration of the daemon, read once at start.

Two sources feed :class:`Settings`:

* environment variables prefixed ``GENRELAY_`` (unknown ones are ignored, blank ones mean "use the default");
* the accounts file (TOML, one ``[[account]]`` table per provider account). API keys never live in that
  file: each account names the environment variable that holds its key.

Every problem raises :class:`~daemon.errors.SettingsError` with a message that names the variable, or the
file, line and key, so an operator can fix it without reading code. Secret values (API keys, API tokens,
the signing secret) never appear in a ``repr`` or in an error message.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from daemon.errors import SettingsError

__all__ = [
    "DEFAULT_BASE_URLS",
    "SUPPORTED_PROVIDERS",
    "Account",
    "Settings",
]

SUPPORTED_PROVIDERS: frozenset[str] = frozenset({"ltx", "ltxstudio", "vydra"})
DEFAULT_BASE_URLS: dict[str, str] = {
    "ltx": "https://api.ltx.video",
    "ltxstudio": "https://api.useapi.net",
    "vydra": "https://www.vydra.ai",
}

ENV_PREFIX = "GENRELAY_"
DEFAULT_ACCOUNTS_PATH = "./accounts.toml"
DEFAULT_DATA_DIR = "./var"
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")
LOG_FORMATS: tuple[str, ...] = ("auto", "json", "console")
MAX_ACCOUNT_JOBS = 1000

_ENV_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]*")
_REDIS_SCHEMES = ("redis", "rediss", "unix")
# Optional request budget (vydra): requests allowed per window, and the window's length.
_BUDGET_KEYS: tuple[str, ...] = ("requests_per_minute", "rate_window_seconds")
_ACCOUNT_KEYS: tuple[str, ...] = ("provider", "name", "max_jobs", "api_key_env", "base_url", *_BUDGET_KEYS)
_REQUIRED_ACCOUNT_KEYS: tuple[str, ...] = ("provider", "name", "max_jobs", "api_key_env")

_N = TypeVar("_N", int, float)


@dataclass(frozen=True, slots=True)
class Account:
    """One provider account the scheduler may submit jobs to.

    Attributes:
        provider: Provider id, one of :data:`SUPPORTED_PROVIDERS`.
        name: Account name, unique per provider.
        max_jobs: How many jobs may run on this account at once.
        api_key_env: Name of the environment variable that holds the API key.
        base_url: Provider API root, without a trailing slash.
        api_key: The API key itself; kept out of ``repr`` so it cannot leak into logs.
        requests_per_minute: The provider's request limit for this account (vydra: the plan's
            rpm), when the accounts file sets it; None: learnt from the provider.
        rate_window_seconds: The window ``requests_per_minute`` counts over (60 unless set).
    """

    provider: str
    name: str
    max_jobs: int
    api_key_env: str
    base_url: str
    api_key: str = field(repr=False)
    requests_per_minute: int | None = None
    rate_window_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the daemon is configured with, validated once at start.

    Build it with :meth:`from_env`; see ``deploy/env.example`` for every variable and its default.
    """

    redis_url: str | None
    data_dir: Path
    accounts_path: Path
    accounts: tuple[Account, ...]
    public_url: str | None
    api_tokens: tuple[str, ...] = field(repr=False)
    secret: str | None = field(repr=False)
    secret_previous: str | None = field(repr=False)
    host: str
    port: int
    body_timeout: float
    poll_interval: float
    poll_batch: int
    poll_concurrency: int
    submit_max_tries: int
    poll_max_errors: int
    retry_base: float
    retry_max: float
    lease_ttl: float
    lease_ttl_by_provider: Mapping[str, float]
    sweep_interval: float
    capacity_sync_interval: float
    reconcile_grace: float
    job_retention: float
    asset_retention: float
    worker_concurrency: int
    queue_poll_delay: float
    job_timeout: float
    shutdown_grace: float
    health_interval: float
    worker_name: str
    callback_confirm: bool
    worker_metrics_port: int | None
    safety_poll_interval: float
    delivery_secret: str | None = field(repr=False)
    delivery_max_tries: int
    delivery_timeout: float
    delivery_allow_private: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    log_level: str
    log_format: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, require_accounts: bool = True) -> Settings:
        """Read and validate the settings.

        Args:
            env: Variables to read; ``None`` means ``os.environ``. API keys named by ``api_key_env`` are
                looked up in the same mapping.
            require_accounts: When false, a missing accounts file yields no accounts instead of an error
                (for commands that never talk to a provider). A file that exists is always validated.

        Returns:
            The validated settings.

        Raises:
            SettingsError: A variable or the accounts file is missing or malformed.
        """
        reader = _EnvReader(os.environ if env is None else env)
        accounts_text = reader.text("ACCOUNTS") or DEFAULT_ACCOUNTS_PATH
        retry_base = reader.number("RETRY_BASE", 1.0)
        retry_max = reader.number("RETRY_MAX", 60.0)
        if retry_max < retry_base:
            raise SettingsError(
                f"GENRELAY_RETRY_MAX ({retry_max:g}) must be >= GENRELAY_RETRY_BASE ({retry_base:g})"
            )
        return cls(
            redis_url=_redis_url(reader),
            data_dir=Path(reader.text("DATA_DIR") or DEFAULT_DATA_DIR),
            accounts_path=Path(accounts_text),
            accounts=_load_accounts(accounts_text, reader.env, required=require_accounts),
            public_url=_public_url(reader),
            api_tokens=_api_tokens(reader),
            secret=reader.text("SECRET"),
            # The secret before a rotation: callback tokens it signed stay valid until their jobs end.
            secret_previous=reader.text("SECRET_PREVIOUS"),
            host=reader.text("HOST") or "127.0.0.1",
            port=reader.integer("PORT", 8080, low=0, high=65535),  # 0: any free port (tests)
            # aiohttp has no deadline on reading a request body: a client that trickles it (slowloris)
            # would hold a handler forever. Past this many seconds it gets 408.
            body_timeout=reader.number("BODY_TIMEOUT", 10.0),
            poll_interval=reader.number("POLL_INTERVAL", 5.0),
            poll_batch=reader.integer("POLL_BATCH", 200, low=1),
            poll_concurrency=reader.integer("POLL_CONCURRENCY", 32, low=1),
            submit_max_tries=reader.integer("SUBMIT_MAX_TRIES", 8, low=1),
            poll_max_errors=reader.integer("POLL_MAX_ERRORS", 30, low=1),
            retry_base=retry_base,
            retry_max=retry_max,
            lease_ttl=reader.number("LEASE_TTL", 1800.0),
            # GENRELAY_LEASE_TTL_<PROVIDER>: the longest plausible job differs per provider.
            lease_ttl_by_provider={
                p: reader.number(f"LEASE_TTL_{p.upper()}", 0.0)
                for p in sorted(DEFAULT_BASE_URLS)
                if reader.text(f"LEASE_TTL_{p.upper()}")
            },
            sweep_interval=reader.number("SWEEP_INTERVAL", 30.0),
            # How often each provider's listing of running jobs is read and reconciled with the slots.
            capacity_sync_interval=reader.number("CAPACITY_SYNC_INTERVAL", 30.0),
            # A job missing from that listing counts as gone only when the listing was read this long
            # after its submit (the provider may not list a just-accepted job yet).
            reconcile_grace=reader.number("RECONCILE_GRACE", 5.0),
            job_retention=reader.number("JOB_RETENTION", 604800.0),
            # Asset records (GET /v1/assets) outlive the job records: 30 days from their creation.
            asset_retention=reader.number("ASSET_RETENTION", 2592000.0),
            worker_concurrency=reader.integer("WORKER_CONCURRENCY", 50, low=1),
            # How often an idle worker looks at the queue: a freed slot waits half this on average before
            # its next submission starts (bench/dispatch.py); one cheap ZRANGEBYSCORE per look.
            queue_poll_delay=reader.number("QUEUE_POLL_DELAY", 0.01),
            job_timeout=reader.number("JOB_TIMEOUT", 60.0),
            # On SIGTERM a worker takes no new task and lets running ones finish for this long; more
            # than a provider request's 30 s timeout, so a submission is never cut off mid-call.
            shutdown_grace=reader.number("SHUTDOWN_GRACE", 35.0),
            # A worker writes its health record this often, from its main loop; it lives one second
            # longer, so `genrelay worker --check` fails soon after no worker's loop is turning.
            health_interval=reader.number("HEALTH_INTERVAL", 10.0),
            # Whose health record `genrelay worker --check` reads: each worker keeps its own, so one
            # stalled worker shows unhealthy even while others run. The host name is unique per pod
            # or container; several workers on one host need a name each (the systemd unit sets one).
            worker_name=reader.text("WORKER_NAME") or socket.gethostname(),
            # A callback is a hint: before a job ends on one, read its status from the provider.
            callback_confirm=reader.flag("CALLBACK_CONFIRM", True),
            # The worker's own /metrics port: unset = off, 0 = any free port.
            worker_metrics_port=(
                reader.integer("WORKER_METRICS_PORT", 0, low=0, high=65535)
                if reader.text("WORKER_METRICS_PORT")
                else None
            ),
            # Jobs that get callbacks are still polled this often (doubling up to 16x), in case one is lost.
            safety_poll_interval=reader.number("SAFETY_POLL_INTERVAL", 60.0),
            # Telling the app (POST to its replyUrl): signing secret, attempts before a dead letter, and
            # seconds per attempt (redirects included). Unset secret: derived from GENRELAY_SECRET.
            delivery_secret=_delivery_secret(reader),
            delivery_max_tries=reader.integer("DELIVERY_MAX_TRIES", 8, low=1),
            delivery_timeout=reader.number("DELIVERY_TIMEOUT", 10.0),
            delivery_allow_private=_delivery_allow_private(reader),
            log_level=reader.choice("LOG_LEVEL", "info", LOG_LEVELS),
            log_format=reader.choice("LOG_FORMAT", "auto", LOG_FORMATS),
        )

    def lease_ttl_for(self, provider: str) -> float:
        """Seconds a job of ``provider`` may go without a sign of life before it fails as timed out."""
        return self.lease_ttl_by_provider.get(provider, self.lease_ttl)

    def accounts_for(self, provider: str) -> tuple[Account, ...]:
        """Return the accounts of ``provider`` in file order (empty when it has none)."""
        return tuple(account for account in self.accounts if account.provider == provider)

    def account(self, provider: str, name: str) -> Account | None:
        """Return the account ``name`` of ``provider``, or ``None`` when there is no such account."""
        for candidate in self.accounts:
            if candidate.provider == provider and candidate.name == name:
                return candidate
        return None

    def providers(self) -> tuple[str, ...]:
        """Return the distinct providers that have at least one account, sorted."""
        return tuple(sorted({account.provider for account in self.accounts}))

    def secrets(self) -> tuple[str, ...]:
        """Return every secret value (API keys, API tokens, the secret) for log redaction.

        Empty values are skipped and duplicates removed, first occurrence kept.
        """
        values = [account.api_key for account in self.accounts]
        values.extend(self.api_tokens)
        values.extend(value for value in (self.secret, self.secret_previous, self.delivery_secret) if value)
        password = urlsplit(self.redis_url).password if self.redis_url else None
        if password:
            # Logs may show the password as written in the URL or percent-decoded, as redis-py uses it.
            values.extend((password, unquote(password)))
        return tuple(dict.fromkeys(value for value in values if value))

    def __repr__(self) -> str:
        # Written by hand only to mask a password inside redis_url; fields marked repr=False stay hidden.
        shown = []
        for item in fields(self):
            if item.repr:
                value = getattr(self, item.name)
                if item.name == "redis_url" and value is not None:
                    value = _mask_url_password(value)
                shown.append(f"{item.name}={value!r}")
        return f"Settings({', '.join(shown)})"


# --- environment variables ------------------------------------------------------------------------------


class _EnvReader:
    """Typed access to ``GENRELAY_*`` variables; errors name the full variable and its value.

    Only non-secret variables go through the casting helpers, so quoting the value is safe.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, suffix: str) -> str | None:
        """Return the stripped value, or ``None`` when unset or blank (``VAR=`` in an env file)."""
        value = self.env.get(ENV_PREFIX + suffix, "").strip()
        return value or None

    def integer(self, suffix: str, default: int, *, low: int, high: int | None = None) -> int:
        """Return an integer in ``[low, high]``, or ``default`` when unset."""
        value = self._cast(suffix, default, int, "not a valid integer")
        return _check_range(ENV_PREFIX + suffix, value, low, high)

    def number(self, suffix: str, default: float) -> float:
        """Return a finite float > 0, or ``default`` when unset."""
        value = self._cast(suffix, default, float, "not a valid number")
        if not math.isfinite(value):
            raise SettingsError(f"{ENV_PREFIX}{suffix} has value {value!r}: not a finite number")
        if value <= 0:
            raise SettingsError(f"{ENV_PREFIX}{suffix} has value {value:g}: must be > 0")
        return value

    def flag(self, suffix: str, default: bool) -> bool:
        """Return a boolean written as 1/0, true/false, yes/no or on/off; ``default`` when unset."""
        raw = self.text(suffix)
        if raw is None:
            return default
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{ENV_PREFIX}{suffix} has value {raw!r}: must be 1 or 0 (true or false)")

    def choice(self, suffix: str, default: str, choices: tuple[str, ...]) -> str:
        """Return one of ``choices`` (case-insensitive), or ``default`` when unset."""
        raw = self.text(suffix)
        if raw is None:
            return default
        if raw.lower() not in choices:
            raise SettingsError(
                f"{ENV_PREFIX}{suffix} has value {raw!r}: must be one of {', '.join(choices)}"
            )
        return raw.lower()

    def _cast(self, suffix: str, default: _N, kind: Callable[[str], _N], problem: str) -> _N:
        raw = self.text(suffix)
        if raw is None:
            return default
        try:
            return kind(raw)
        except ValueError:
            raise SettingsError(f"{ENV_PREFIX}{suffix} has value {raw!r}: {problem}") from None


def _check_range(name: str, value: int, low: int, high: int | None) -> int:
    if high is not None and not low <= value <= high:
        raise SettingsError(f"{name} has value {value}: must be between {low} and {high}")
    if value < low:
        raise SettingsError(f"{name} has value {value}: must be >= {low}")
    return value


def _redis_url(reader: _EnvReader) -> str | None:
    raw = reader.text("REDIS_URL")
    if raw is None:
        return None
    # Only the scheme is checked: redis-py owns the rest of the syntax, and echoing the URL could
    # expose a password written into it.
    if urlsplit(raw).scheme.lower() not in _REDIS_SCHEMES:
        raise SettingsError(
            f"GENRELAY_REDIS_URL must start with one of {', '.join(s + '://' for s in _REDIS_SCHEMES)}"
        )
    return raw


def _mask_url_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _public_url(reader: _EnvReader) -> str | None:
    raw = reader.text("PUBLIC_URL")
    if raw is None:
        return None
    problem = _http_url_problem(raw)
    if problem is None and (urlsplit(raw).query or urlsplit(raw).fragment):
        problem = "must not have a query or fragment (callback paths are appended to it)"
    if problem is not None:
        raise SettingsError(f"GENRELAY_PUBLIC_URL has value {raw!r}: {problem}")
    return raw.rstrip("/")


def _delivery_secret(reader: _EnvReader) -> str | None:
    """A Standard Webhooks secret: ``whsec_`` and base64 of 24 to 64 random bytes. The value is never
    quoted in the error: it is a secret."""
    raw = reader.text("DELIVERY_SECRET")
    if raw is None:
        return None
    try:
        key = base64.b64decode(raw.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not raw.startswith("whsec_") or not 24 <= len(key) <= 64:
        raise SettingsError(
            "GENRELAY_DELIVERY_SECRET must be 'whsec_' followed by base64 of 24 to 64 bytes "
            '(make one with: echo "whsec_$(openssl rand -base64 32)")'
        )
    return raw


def _delivery_allow_private(reader: _EnvReader) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Networks an app's replyUrl may point into although they are not public: ``1`` for all of them
    (tests, trusted networks), or a comma-separated list such as ``10.8.0.0/16,fd00::/8``."""
    raw = reader.text("DELIVERY_ALLOW_PRIVATE")
    if raw is None or raw.lower() in ("0", "false", "no", "off"):
        return ()
    if raw.lower() in ("1", "true", "yes", "on"):
        return (ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv6Network("::/0"))
    networks = []
    for item in (part.strip() for part in raw.split(",")):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise SettingsError(
                f"GENRELAY_DELIVERY_ALLOW_PRIVATE has value {raw!r}: {item!r} is not a network; "
                "use 1, 0 or networks like 10.8.0.0/16,fd00::/8"
            ) from None
    return tuple(networks)


def _api_tokens(reader: _EnvReader) -> tuple[str, ...]:
    raw = reader.text("API_TOKENS") or ""
    tokens = (token.strip() for token in raw.split(","))
    return tuple(dict.fromkeys(token for token in tokens if token))


def _http_url_problem(value: str) -> str | None:
    """Return why ``value`` is not an absolute http(s) URL, or ``None`` when it is one."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return "not a valid URL"
    if parts.scheme.lower() not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must include a host"
    return None


# --- accounts file --------------------------------------------------------------------------------------


def _load_accounts(path_text: str, env: Mapping[str, str], *, required: bool) -> tuple[Account, ...]:
    path = Path(path_text)
    if not path.exists():
        if required:
            raise SettingsError(
                f"accounts file {path_text} not found "
                "(set GENRELAY_ACCOUNTS or copy deploy/accounts.example.toml)"
            )
        return ()
    text = _read_text(path, path_text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line L, column C)" and never quotes the offending text.
        raise SettingsError(f"accounts file {path_text} is not valid TOML: {exc}") from None
    return _AccountsParser(path_text, text, env).parse(data)


def _read_text(path: Path, path_text: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise SettingsError(f"accounts file {path_text} is a directory, not a TOML file") from None
    except UnicodeDecodeError:
        raise SettingsError(f"accounts file {path_text} is not UTF-8 text") from None
    except OSError as exc:
        raise SettingsError(f"accounts file {path_text} cannot be read: {exc.strerror}") from None


class _AccountsParser:
    """Validates the decoded TOML and turns each ``[[account]]`` table into an :class:`Account`."""

    def __init__(self, path_text: str, text: str, env: Mapping[str, str]) -> None:
        self.path_text = path_text
        self.lines = _LineFinder(text)
        self.env = env
        # Kept so error messages can name an account by its name and provider.
        self.tables: list[dict[str, Any]] = []

    def parse(self, data: dict[str, Any]) -> tuple[Account, ...]:
        for key in data:
            if key != "account":
                raise self._error(
                    self.lines.top_level(key),
                    f"unknown top-level key {key!r} (accounts are written as [[account]] tables)",
                )
        tables = data.get("account")
        if tables is None or tables == []:
            raise self._error(None, "no [[account]] entries; define at least one account")
        if not isinstance(tables, list) or not all(isinstance(table, dict) for table in tables):
            raise self._error(
                self.lines.top_level("account"), "'account' must be written as [[account]] tables"
            )
        self.tables = tables
        accounts: list[Account] = []
        for index, table in enumerate(tables):
            account = self._account(index, table)
            self._check_unique(index, account, accounts)
            accounts.append(account)
        return tuple(accounts)

    def _account(self, index: int, table: dict[str, Any]) -> Account:
        self._check_keys(index, table)
        provider = self._string(index, table, "provider")
        if provider not in SUPPORTED_PROVIDERS:
            supported = ", ".join(sorted(SUPPORTED_PROVIDERS))
            raise self._key_error(
                index, "provider", f"provider {provider!r} is not supported (supported: {supported})"
            )
        name = self._string(index, table, "name")
        max_jobs = table["max_jobs"]
        # bool is a subclass of int; "max_jobs = true" is a typo, not 1.
        if (
            isinstance(max_jobs, bool)
            or not isinstance(max_jobs, int)
            or not 1 <= max_jobs <= MAX_ACCOUNT_JOBS
        ):
            raise self._key_error(
                index, "max_jobs", f"key 'max_jobs' must be an integer between 1 and {MAX_ACCOUNT_JOBS}"
            )
        api_key_env = self._string(index, table, "api_key_env")
        if not _ENV_NAME_RE.fullmatch(api_key_env):
            # The value is not quoted: a common mistake is pasting the key itself here.
            raise self._key_error(
                index,
                "api_key_env",
                "key 'api_key_env' must name an environment variable (A-Z, 0-9 and _, e.g. LTXV_API_KEY), "
                "not hold the API key itself",
            )
        return Account(
            provider=provider,
            name=name,
            max_jobs=max_jobs,
            api_key_env=api_key_env,
            base_url=self._base_url(index, table, provider),
            api_key=self._api_key(index, table, api_key_env),
            requests_per_minute=self._optional_number(index, table, "requests_per_minute", integer=True),
            rate_window_seconds=self._optional_number(index, table, "rate_window_seconds", integer=False),
        )

    def _optional_number(self, index: int, table: dict[str, Any], key: str, *, integer: bool) -> Any:
        """A positive number (an integer when ``integer``), or None when the key is absent."""
        if key not in table:
            return None
        value = table[key]
        kinds = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
            kind = "a positive integer" if integer else "a positive number"
            raise self._key_error(index, key, f"key {key!r} must be {kind}")
        return value if integer else float(value)

    def _check_keys(self, index: int, table: dict[str, Any]) -> None:
        if "api_key" in table:
            raise self._key_error(
                index,
                "api_key",
                "API keys must not be written in the accounts file; put the key in an environment variable "
                "and name that variable with api_key_env",
            )
        for key in table:
            if key not in _ACCOUNT_KEYS:
                raise self._key_error(
                    index, key, f"unknown key {key!r} (allowed: {', '.join(_ACCOUNT_KEYS)})"
                )
        for key in _REQUIRED_ACCOUNT_KEYS:
            if key not in table:
                raise self._key_error(index, key, f"missing required key {key!r}")

    def _string(self, index: int, table: dict[str, Any], key: str) -> str:
        value = table[key]
        if not isinstance(value, str) or not value.strip():
            raise self._key_error(index, key, f"key {key!r} must be a non-empty string")
        return value.strip()

    def _base_url(self, index: int, table: dict[str, Any], provider: str) -> str:
        if "base_url" not in table:
            return DEFAULT_BASE_URLS[provider]
        value = self._string(index, table, "base_url")
        problem = _http_url_problem(value)
        if problem is not None:
            raise self._key_error(index, "base_url", f"key 'base_url' {problem}")
        return value.rstrip("/")

    def _api_key(self, index: int, table: dict[str, Any], api_key_env: str) -> str:
        api_key = self.env.get(api_key_env, "").strip()
        if not api_key:
            raise self._key_error(
                index, "api_key_env", f"api_key_env {api_key_env} is not set in the environment"
            )
        return api_key

    def _check_unique(self, index: int, account: Account, seen: list[Account]) -> None:
        for position, other in enumerate(seen):
            if other.provider == account.provider and other.name == account.name:
                first = self.lines.key(position, "name") or self.lines.header(position)
                where = f" (first defined on line {first})" if first else ""
                raise self._key_error(
                    index, "name", f"name {account.name!r} is already used by another account{where}"
                )

    def _key_error(self, index: int, key: str, problem: str) -> SettingsError:
        line = self.lines.key(index, key) or self.lines.header(index)
        return self._error(line, f"{self._describe(index)}: {problem}")

    def _describe(self, index: int) -> str:
        """Name an account for messages: by name and provider when both are usable, else by position."""
        table = self.tables[index] if index < len(self.tables) else {}
        name, provider = table.get("name"), table.get("provider")
        if isinstance(name, str) and name.strip() and isinstance(provider, str) and provider.strip():
            return f"account {name.strip()!r} ({provider.strip()})"
        return f"account #{index + 1}"

    def _error(self, line: int | None, problem: str) -> SettingsError:
        where = f"{self.path_text} line {line}" if line else self.path_text
        return SettingsError(f"{where}: {problem}")


class _LineFinder:
    """Finds the line numbers tomllib does not report.

    A deliberately small scanner: it knows ``[[account]]`` headers, other table headers (which end an
    account block), ``key =`` lines and multi-line strings (whose contents must not be mistaken for
    headers or keys). The file has already been parsed, so it only has to be right for valid TOML.
    """

    _HEADER_RE = re.compile(r"\s*\[\[\s*account\s*\]\]\s*(#.*)?$")
    _TABLE_RE = re.compile(r"\s*\[")
    _KEY_RE = re.compile(r"""\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*[=.]""")

    def __init__(self, text: str) -> None:
        self._headers: list[int] = []
        self._keys: list[dict[str, int]] = []
        self._top: dict[str, int] = {}
        self._scan(text.splitlines())

    def header(self, index: int) -> int | None:
        """Return the line of the ``index``-th ``[[account]]`` header (0-based index, 1-based line)."""
        return self._headers[index] if index < len(self._headers) else None

    def key(self, index: int, key: str) -> int | None:
        """Return the line of ``key =`` inside the ``index``-th account block."""
        return self._keys[index].get(key) if index < len(self._keys) else None

    def top_level(self, key: str) -> int | None:
        """Return the line where a top-level key or table named ``key`` first appears."""
        return self._top.get(key)

    def _scan(self, lines: list[str]) -> None:
        block: dict[str, int] | None = None
        in_string: str | None = None
        for number, line in enumerate(lines, start=1):
            if in_string is not None:
                in_string = _multiline_state(line, in_string)
                continue
            if self._HEADER_RE.match(line):
                block = {}
                self._headers.append(number)
                self._keys.append(block)
                self._top.setdefault("account", number)
            elif self._TABLE_RE.match(line):
                block = None
                self._record_table(line, number)
            elif match := self._KEY_RE.match(line):
                key = next(group for group in match.groups() if group is not None)
                target = self._top if block is None else block
                target.setdefault(key, number)
            in_string = _multiline_state(line, None)

    def _record_table(self, line: str, number: int) -> None:
        name = line.strip().strip("[]").split(".")[0].strip().strip("\"'")
        self._top.setdefault(name, number)


def _multiline_state(line: str, open_quote: str | None) -> str | None:
    """Track whether a ``\"\"\"`` or ``'''`` string is still open after ``line``."""
    position = 0
    while True:
        if open_quote is None:
            starts = [(line.find(q, position), q) for q in ('"""', "'''") if line.find(q, position) >= 0]
            if not starts:
                return None
            start, open_quote = min(starts)
            position = start + 3
        else:
            end = line.find(open_quote, position)
            if end < 0:
                return open_quote
            open_quote, position = None, end + 3
