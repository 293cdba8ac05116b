"""The accounts file: one ``[[account]]`` table (TOML) per provider account.

API keys never live in the file: each account names the environment variable that holds its key, read
here. Every problem raises :class:`~daemon.errors.SettingsError` naming the file, line and key.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from daemon.errors import SettingsError

__all__ = [
    "DEFAULT_BASE_URLS",
    "SUPPORTED_PROVIDERS",
    "USEAPI_PROVIDERS",
    "Account",
    "http_url_problem",
    "load_accounts",
]

# useapi.net services, by the name useapi gives them in its paths (docs/useapi-services.md).
USEAPI_PROVIDERS: frozenset[str] = frozenset({"ltxstudio", "kling", "minimax", "pixverse", "runwayml"})
SUPPORTED_PROVIDERS: frozenset[str] = frozenset({"ltx", "vydra"}) | USEAPI_PROVIDERS
DEFAULT_BASE_URLS: dict[str, str] = {
    "ltx": "https://api.ltx.video",
    **dict.fromkeys(sorted(USEAPI_PROVIDERS), "https://api.useapi.net"),
    "vydra": "https://www.vydra.ai",
}

MAX_ACCOUNT_JOBS = 1000

_ENV_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]*")
# Optional request budget (vydra): requests allowed per window, the minute window's length (the hour
# and the day scale with it), and the organisation whose budget the account shares.
_BUDGET_KEYS: tuple[str, ...] = (
    "requests_per_minute",
    "requests_per_hour",
    "requests_per_day",
    "rate_window_seconds",
    "organization",
)
_ACCOUNT_KEYS: tuple[str, ...] = ("provider", "name", "max_jobs", "api_key_env", "base_url", *_BUDGET_KEYS)
_REQUIRED_ACCOUNT_KEYS: tuple[str, ...] = ("provider", "name", "max_jobs", "api_key_env")


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
        requests_per_hour: The same per hour (vydra's rph), when set with requests_per_minute.
        requests_per_day: The same per day (vydra's rpd), when set with requests_per_minute.
        rate_window_seconds: The window ``requests_per_minute`` counts over (60 unless set); the
            hour and the day are 60 and 1440 of it.
        organization: The provider organisation the account belongs to (vydra counts requests
            per organisation), when set; None: asked of the provider.
    """

    provider: str
    name: str
    max_jobs: int
    api_key_env: str
    base_url: str
    api_key: str = field(repr=False)
    requests_per_minute: int | None = None
    requests_per_hour: int | None = None
    requests_per_day: int | None = None
    rate_window_seconds: float | None = None
    organization: str | None = None


def http_url_problem(value: str) -> str | None:
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


def load_accounts(
    path_text: str, env: Mapping[str, str], *, required: bool, require_keys: bool = True
) -> tuple[Account, ...]:
    """The accounts of the file at ``path_text``; with ``require_keys`` false an account whose key
    variable is unset gets an empty ``api_key`` instead of an error (for commands that never call a
    provider)."""
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
    return _AccountsParser(path_text, text, env, require_keys=require_keys).parse(data)


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

    def __init__(self, path_text: str, text: str, env: Mapping[str, str], *, require_keys: bool) -> None:
        self.path_text = path_text
        self.require_keys = require_keys
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
        if any(ord(c) < 32 or ord(c) == 127 for c in name):
            # The slot indexes keep "<account>\n<job>" members (daemon/lua/lib.lua).
            raise self._key_error(
                index, "name", "key 'name' must not contain control characters (newline, tab, ...)"
            )
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
            requests_per_hour=self._optional_number(index, table, "requests_per_hour", integer=True),
            requests_per_day=self._optional_number(index, table, "requests_per_day", integer=True),
            rate_window_seconds=self._optional_number(index, table, "rate_window_seconds", integer=False),
            organization=self._optional_string(index, table, "organization"),
        )

    def _optional_string(self, index: int, table: dict[str, Any], key: str) -> str | None:
        return self._string(index, table, key) if key in table else None

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
        problem = http_url_problem(value)
        if problem is not None:
            raise self._key_error(index, "base_url", f"key 'base_url' {problem}")
        return value.rstrip("/")

    def _api_key(self, index: int, table: dict[str, Any], api_key_env: str) -> str:
        api_key = self.env.get(api_key_env, "").strip()
        if not api_key and self.require_keys:
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
