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
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from daemon.accounts_file import DEFAULT_BASE_URLS, Account, http_url_problem, load_accounts
from daemon.archive_settings import ArchiveSettings
from daemon.errors import SettingsError
from daemon.redis_settings import mask_url, redis_url_from_env, url_secrets

__all__ = ["Settings"]

ENV_PREFIX = "GENRELAY_"
DEFAULT_ACCOUNTS_PATH = "./accounts.toml"
DEFAULT_DATA_DIR = "./var"
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")
LOG_FORMATS: tuple[str, ...] = ("auto", "json", "console")

_N = TypeVar("_N", int, float)
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the daemon is configured with, validated once at start.

    Build it with :meth:`from_env`; see ``deploy/env.example`` for every variable and its default.
    """

    # The URL every process connects with (daemon/redis_settings.py composes it from GENRELAY_REDIS_*);
    # None: the embedded server.
    redis_url: str | None
    redis_sentinels: tuple[str, ...]
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
    head_timeout: float
    keepalive_timeout: float
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
    capacity_recovery: float
    job_retention: float
    asset_retention: float
    worker_concurrency: int
    queue_poll_delay: float
    queue_poll_max_delay: float
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
    account_probe_interval: float
    breaker_cooldown: float
    alert_url: str | None = field(repr=False)
    alert_secret: str | None = field(repr=False)
    alert_max_tries: int
    log_level: str
    log_format: str
    archive: ArchiveSettings

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, require_accounts: bool = True, require_keys: bool = True
    ) -> Settings:
        """Read and validate the settings.

        Args:
            env: Variables to read; ``None`` means ``os.environ``. API keys named by ``api_key_env`` are
                looked up in the same mapping.
            require_accounts: When false, a missing accounts file yields no accounts instead of an error
                (for commands that never talk to a provider). A file that exists is always validated.
            require_keys: When false, an account whose ``api_key_env`` is unset gets an empty
                ``api_key`` instead of an error: the commands that only read Redis or enqueue (submit,
                status, cancel, accounts, deliveries) need the accounts' names, never their keys.

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
        data_dir = Path(reader.text("DATA_DIR") or DEFAULT_DATA_DIR)
        return cls(
            redis_url=redis_url_from_env(reader),
            redis_sentinels=tuple(
                h.strip() for h in (reader.text("REDIS_SENTINELS") or "").split(",") if h.strip()
            ),
            data_dir=data_dir,
            accounts_path=Path(accounts_text),
            accounts=load_accounts(
                accounts_text, reader.env, required=require_accounts, require_keys=require_keys
            ),
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
            head_timeout=reader.number("HEAD_TIMEOUT", 10.0),
            keepalive_timeout=reader.number("KEEPALIVE_TIMEOUT", 15.0),
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
            # A concurrency 429 lowers an account's effective slot count by one; one slot comes back
            # after each this many seconds without another (docs/slots.md "Learned capacity").
            capacity_recovery=reader.number("CAPACITY_RECOVERY", 120.0),
            job_retention=reader.number("JOB_RETENTION", 604800.0),
            # Asset records (GET /v1/assets) outlive the job records: 30 days from their creation.
            asset_retention=reader.number("ASSET_RETENTION", 2592000.0),
            worker_concurrency=reader.integer("WORKER_CONCURRENCY", 50, low=1),
            # How often an idle worker looks at the queue: a freed slot waits half this on average before
            # its next submission starts (bench/dispatch.py); one cheap ZRANGEBYSCORE per look.
            queue_poll_delay=reader.number("QUEUE_POLL_DELAY", 0.01),
            queue_poll_max_delay=reader.number("QUEUE_POLL_MAX_DELAY", 0.05),
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
            delivery_secret=_webhook_secret(reader, "DELIVERY_SECRET"),
            delivery_max_tries=reader.integer("DELIVERY_MAX_TRIES", 8, low=1),
            delivery_timeout=reader.number("DELIVERY_TIMEOUT", 10.0),
            delivery_allow_private=_allow_private(reader, "DELIVERY_ALLOW_PRIVATE"),
            # Disabled accounts are probed this often with a request that costs no credits, and
            # enabled again once their key works (workers/account_probe.py).
            account_probe_interval=reader.number("ACCOUNT_PROBE_INTERVAL", 300.0),
            # An account whose recent submits mostly failed with 5xx or no answer pauses this long.
            breaker_cooldown=reader.number("BREAKER_COOLDOWN", 60.0),
            # Operator alerts (daemon/alerts.py): where to POST them, signed like deliveries.
            alert_url=_alert_url(reader),
            alert_secret=_webhook_secret(reader, "ALERT_SECRET"),
            alert_max_tries=reader.integer("ALERT_MAX_TRIES", 6, low=1),
            log_level=reader.choice("LOG_LEVEL", "info", LOG_LEVELS),
            log_format=reader.choice("LOG_FORMAT", "auto", LOG_FORMATS),
            archive=ArchiveSettings.from_reader(
                reader, data_dir, _allow_private(reader, "ARCHIVE_ALLOW_PRIVATE")
            ),
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
        values.extend(
            value
            for value in (
                self.secret,
                self.secret_previous,
                self.delivery_secret,
                self.alert_secret,
                self.alert_url,
            )
            if value
        )
        values.extend(self.archive.secrets())
        # Logs may show a Redis password as written in the URL or percent-decoded, as redis-py uses it.
        values.extend(url_secrets(self.redis_url))
        return tuple(dict.fromkeys(value for value in values if value))

    def __repr__(self) -> str:
        # Written by hand only to mask a password inside redis_url; fields marked repr=False stay hidden.
        shown = []
        for item in fields(self):
            if item.repr:
                value = getattr(self, item.name)
                if item.name == "redis_url" and value is not None:
                    value = mask_url(value)
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


def _public_url(reader: _EnvReader) -> str | None:
    raw = reader.text("PUBLIC_URL")
    if raw is None:
        return None
    problem = http_url_problem(raw)
    if problem is None and (urlsplit(raw).query or urlsplit(raw).fragment):
        problem = "must not have a query or fragment (callback paths are appended to it)"
    if problem is not None:
        raise SettingsError(f"GENRELAY_PUBLIC_URL has value {raw!r}: {problem}")
    return raw.rstrip("/")


def _alert_url(reader: _EnvReader) -> str | None:
    """The operator's alert endpoint; it may carry a token in its path or query, so it is treated
    as a secret (never shown in a ``repr`` or a log line) and never quoted in the error."""
    raw = reader.text("ALERT_URL")
    if raw is None:
        return None
    if http_url_problem(raw) is not None:
        raise SettingsError("GENRELAY_ALERT_URL must be an http:// or https:// URL")
    return raw


def _webhook_secret(reader: _EnvReader, suffix: str) -> str | None:
    """A Standard Webhooks secret: ``whsec_`` and base64 of 24 to 64 random bytes. The value is never
    quoted in the error: it is a secret."""
    raw = reader.text(suffix)
    if raw is None:
        return None
    try:
        key = base64.b64decode(raw.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not raw.startswith("whsec_") or not 24 <= len(key) <= 64:
        raise SettingsError(
            f"{ENV_PREFIX}{suffix} must be 'whsec_' followed by base64 of 24 to 64 bytes "
            '(make one with: echo "whsec_$(openssl rand -base64 32)")'
        )
    return raw


def _allow_private(reader: _EnvReader, suffix: str) -> tuple[IPNetwork, ...]:
    """Networks an app's replyUrl (or an artifact URL) may point into although they are not public:
    ``1`` for all of them (tests, trusted networks), or a comma-separated list such as
    ``10.8.0.0/16,fd00::/8``."""
    raw = reader.text(suffix)
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
                f"{ENV_PREFIX}{suffix} has value {raw!r}: {item!r} is not a network; "
                "use 1, 0 or networks like 10.8.0.0/16,fd00::/8"
            ) from None
    return tuple(networks)


def _api_tokens(reader: _EnvReader) -> tuple[str, ...]:
    raw = reader.text("API_TOKENS") or ""
    tokens = (token.strip() for token in raw.split(","))
    return tuple(dict.fromkeys(token for token in tokens if token))
