"""Tests for daemon.settings: defaults, casts, the accounts file and secret hygiene."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from daemon.accounts_file import DEFAULT_BASE_URLS, Account, _LineFinder
from daemon.errors import SettingsError
from daemon.settings import Settings

API_KEY = "ltxv-key-0123456789abcdef"

MINIMAL = """\
[[account]]
provider = "ltx"
name = "studio-main"
max_jobs = 2
api_key_env = "LTXV_API_KEY"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "accounts.toml"
    path.write_text(text, encoding="utf-8")
    return path


def make_env(path: Path, **extra: str) -> dict[str, str]:
    env = {"GENRELAY_ACCOUNTS": str(path), "LTXV_API_KEY": API_KEY}
    env.update(extra)
    return env


def load_error(tmp_path: Path, text: str, **extra: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as info:
        Settings.from_env(make_env(path, **extra))
    return str(info.value)


def test_defaults_with_minimal_accounts_file(tmp_path: Path) -> None:
    """With only an accounts file, every setting takes its documented default."""
    path = write(tmp_path, MINIMAL)
    settings = Settings.from_env(make_env(path))
    assert settings.redis_url is None
    assert settings.data_dir == Path("./var")
    assert settings.accounts_path == path
    assert settings.public_url is None
    assert settings.api_tokens == ()
    assert settings.secret is None
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.poll_interval == 5.0
    assert settings.poll_batch == 200
    assert settings.poll_concurrency == 32
    assert settings.submit_max_tries == 8
    assert settings.poll_max_errors == 30
    assert (settings.retry_base, settings.retry_max) == (1.0, 60.0)
    assert settings.lease_ttl == 1800.0
    assert settings.sweep_interval == 30.0
    assert settings.job_retention == 604800.0
    assert settings.worker_concurrency == 50
    assert settings.queue_poll_delay == 0.01
    assert settings.queue_poll_max_delay == 0.05
    assert settings.job_timeout == 60.0
    assert (settings.log_level, settings.log_format) == ("info", "auto")
    assert settings.accounts == (
        Account(
            provider="ltx",
            name="studio-main",
            max_jobs=2,
            api_key_env="LTXV_API_KEY",
            base_url=DEFAULT_BASE_URLS["ltx"],
            api_key=API_KEY,
        ),
    )


def test_overrides_are_parsed(tmp_path: Path) -> None:
    """Every variable set in the environment is cast and used; blanks mean the default and unknown
    GENRELAY_ variables are ignored."""
    env = make_env(
        write(tmp_path, MINIMAL),
        GENRELAY_REDIS_URL="redis://localhost:6379/1",
        GENRELAY_DATA_DIR=str(tmp_path / "data"),
        GENRELAY_PUBLIC_URL="https://relay.example.com/base/",
        GENRELAY_API_TOKENS=" tok-one , ,tok-two,",
        GENRELAY_SECRET="hmac-secret-value",
        GENRELAY_PORT="9000",
        GENRELAY_POLL_INTERVAL="2.5",
        GENRELAY_LOG_LEVEL="DEBUG",
        GENRELAY_LOG_FORMAT="json",
        GENRELAY_SOMETHING_UNKNOWN="ignored",
        GENRELAY_HOST="",  # blank means default
    )
    settings = Settings.from_env(env)
    assert settings.redis_url == "redis://localhost:6379/1"
    assert settings.data_dir == tmp_path / "data"
    assert settings.public_url == "https://relay.example.com/base"
    assert settings.api_tokens == ("tok-one", "tok-two")
    assert settings.secret == "hmac-secret-value"
    assert settings.port == 9000
    assert settings.poll_interval == 2.5
    assert (settings.log_level, settings.log_format) == ("debug", "json")
    assert settings.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("GENRELAY_PORT", "abc", "GENRELAY_PORT has value 'abc': not a valid integer"),
        ("GENRELAY_PORT", "-1", "GENRELAY_PORT has value -1: must be between 0 and 65535"),
        ("GENRELAY_PORT", "70000", "GENRELAY_PORT has value 70000: must be between 0 and 65535"),
        ("GENRELAY_POLL_BATCH", "1.5", "GENRELAY_POLL_BATCH has value '1.5': not a valid integer"),
        ("GENRELAY_POLL_BATCH", "0", "GENRELAY_POLL_BATCH has value 0: must be >= 1"),
        ("GENRELAY_POLL_CONCURRENCY", "-1", "GENRELAY_POLL_CONCURRENCY has value -1: must be >= 1"),
        ("GENRELAY_SUBMIT_MAX_TRIES", "x", "GENRELAY_SUBMIT_MAX_TRIES has value 'x': not a valid integer"),
        ("GENRELAY_POLL_MAX_ERRORS", "0", "GENRELAY_POLL_MAX_ERRORS has value 0: must be >= 1"),
        ("GENRELAY_WORKER_CONCURRENCY", "lots", "GENRELAY_WORKER_CONCURRENCY has value 'lots'"),
        ("GENRELAY_POLL_INTERVAL", "fast", "GENRELAY_POLL_INTERVAL has value 'fast': not a valid number"),
        ("GENRELAY_POLL_INTERVAL", "0", "GENRELAY_POLL_INTERVAL has value 0: must be > 0"),
        ("GENRELAY_RETRY_BASE", "-1", "GENRELAY_RETRY_BASE has value -1: must be > 0"),
        ("GENRELAY_LEASE_TTL", "nan", "GENRELAY_LEASE_TTL has value nan: not a finite number"),
        ("GENRELAY_SWEEP_INTERVAL", "inf", "GENRELAY_SWEEP_INTERVAL has value inf: not a finite number"),
        ("GENRELAY_JOB_RETENTION", "week", "GENRELAY_JOB_RETENTION has value 'week': not a valid number"),
        ("GENRELAY_QUEUE_POLL_DELAY", "0", "GENRELAY_QUEUE_POLL_DELAY has value 0: must be > 0"),
        ("GENRELAY_JOB_TIMEOUT", "1m", "GENRELAY_JOB_TIMEOUT has value '1m': not a valid number"),
        (
            "GENRELAY_LOG_LEVEL",
            "verbose",
            "GENRELAY_LOG_LEVEL has value 'verbose': must be one of debug, info, warning, error",
        ),
        (
            "GENRELAY_LOG_FORMAT",
            "xml",
            "GENRELAY_LOG_FORMAT has value 'xml': must be one of auto, json, console",
        ),
        ("GENRELAY_PUBLIC_URL", "relay.example.com", "GENRELAY_PUBLIC_URL has value 'relay.example.com'"),
        ("GENRELAY_PUBLIC_URL", "https://h/x?y=1", "must not have a query or fragment"),
        ("GENRELAY_REDIS_URL", "localhost:6379", "GENRELAY_REDIS_URL must start with one of redis://"),
    ],
)
def test_bad_values_name_the_variable(tmp_path: Path, name: str, value: str, expected: str) -> None:
    message = load_error(tmp_path, MINIMAL, **{name: value})
    assert expected in message


def test_retry_max_below_base_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, MINIMAL, GENRELAY_RETRY_BASE="10", GENRELAY_RETRY_MAX="5")
    assert "GENRELAY_RETRY_MAX (5) must be >= GENRELAY_RETRY_BASE (10)" in message


def test_missing_accounts_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError) as info:
        Settings.from_env({})
    assert str(info.value) == (
        "accounts file ./accounts.toml not found (set GENRELAY_ACCOUNTS or copy deploy/accounts.example.toml)"
    )


def test_missing_accounts_file_allowed_when_not_required(tmp_path: Path) -> None:
    env = {"GENRELAY_ACCOUNTS": str(tmp_path / "absent.toml")}
    settings = Settings.from_env(env, require_accounts=False)
    assert settings.accounts == ()
    assert settings.providers() == ()
    assert settings.secrets() == ()


def test_malformed_file_errors_even_when_not_required(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("max_jobs = 2", "max_jobs = 0"))
    with pytest.raises(SettingsError, match="line 4: .*max_jobs"):
        Settings.from_env(make_env(path), require_accounts=False)


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    message = load_error(tmp_path, MINIMAL + 'base_url "https://x"\n')
    assert str(tmp_path / "accounts.toml") in message
    assert "not valid TOML" in message
    assert "line 6" in message


def test_empty_file_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, "# nothing yet\n")
    assert "no [[account]] entries" in message


def test_unknown_top_level_key_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, MINIMAL + "\n[[accounts]]\nprovider = 'ltx'\n")
    assert re.search(r"accounts\.toml line 7: unknown top-level key 'accounts'", message)


SECOND = """\
# a comment line

[[account]]
provider = "ltx"
name = "studio-main"
max_jobs = 2
api_key_env = "LTXV_API_KEY"

[[account]]
provider = "ltx"
name = "backup"
max_jobs = 1
api_key_env = "LTXV_BACKUP_KEY"
"""


@pytest.mark.parametrize(
    ("old", "new", "line", "expected"),
    [
        ("max_jobs = 1\n", "", 9, "account 'backup' (ltx): missing required key 'max_jobs'"),
        (
            'provider = "ltx"\nname = "backup"',
            'name = "backup"',
            9,
            "account #2: missing required key 'provider'",
        ),
        ("max_jobs = 1", 'max_jobs = "1"', 12, "key 'max_jobs' must be an integer between 1 and 1000"),
        ("max_jobs = 1", "max_jobs = true", 12, "key 'max_jobs' must be an integer"),
        ("max_jobs = 1", "max_jobs = 1001", 12, "key 'max_jobs' must be an integer"),
        ('name = "backup"', "name = 7", 11, "key 'name' must be a non-empty string"),
        (
            '"ltx"\nname = "backup"',
            '"runway"\nname = "backup"',
            10,
            "provider 'runway' is not supported "
            "(supported: kling, ltx, ltxstudio, minimax, pixverse, runwayml, vydra)",
        ),
        (
            'name = "backup"',
            'name = "studio-main"',
            11,
            "name 'studio-main' is already used by another account (first defined on line 5)",
        ),
        (
            '"LTXV_BACKUP_KEY"',
            '"UNSET_KEY"',
            13,
            "account 'backup' (ltx): api_key_env UNSET_KEY is not set in the environment",
        ),
        ('"LTXV_BACKUP_KEY"', '"ltxv-lower"', 13, "key 'api_key_env' must name an environment variable"),
        ("max_jobs = 1", 'max_jobs = 1\ncolour = "red"', 13, "unknown key 'colour' (allowed: provider, name"),
        (
            "max_jobs = 1",
            'max_jobs = 1\nbase_url = "ftp://x"',
            13,
            "key 'base_url' must be an http:// or https:// URL",
        ),
    ],
)
def test_account_errors_name_file_line_and_key(
    tmp_path: Path, old: str, new: str, line: int, expected: str
) -> None:
    assert old in SECOND.split("[[account]]")[2]
    head, _, tail = SECOND.rpartition("[[account]]")
    text = head + "[[account]]" + tail.replace(old, new)
    message = load_error(tmp_path, text, LTXV_BACKUP_KEY="backup-key-value")
    assert message.startswith(f"{tmp_path / 'accounts.toml'} line {line}: "), message
    assert expected in message


def test_unset_api_key_message_matches_spec(tmp_path: Path) -> None:
    """An account whose key variable is unset or blank stops the start with a message naming the file,
    line, account and variable."""
    path = write(tmp_path, MINIMAL)
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"GENRELAY_ACCOUNTS": str(path), "LTXV_API_KEY": "  "})
    assert str(info.value) == (
        f"{path} line 5: account 'studio-main' (ltx): api_key_env LTXV_API_KEY is not set in the environment"
    )


def test_inline_api_key_is_refused_without_echoing_it(tmp_path: Path) -> None:
    message = load_error(tmp_path, MINIMAL + 'api_key = "sk-inline-secret"\n')
    assert "line 6" in message
    assert "must not be written in the accounts file" in message
    assert "api_key_env" in message
    assert "sk-inline-secret" not in message


def test_key_pasted_into_api_key_env_is_not_echoed(tmp_path: Path) -> None:
    message = load_error(tmp_path, MINIMAL.replace('"LTXV_API_KEY"', '"sk-pasted-secret-123"'))
    assert "line 5" in message
    assert "sk-pasted-secret-123" not in message


def test_base_url_override_and_trailing_slash(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + 'base_url = "http://127.0.0.1:9999/"\n')
    settings = Settings.from_env(make_env(path))
    assert settings.accounts[0].base_url == "http://127.0.0.1:9999"


def test_line_finder_ignores_multiline_strings() -> None:
    text = 'note = """\n[[account]]\nname = "fake"\n"""\n' + MINIMAL
    finder = _LineFinder(text)
    assert finder.top_level("note") == 1
    assert finder.header(0) == 5
    assert finder.key(0, "name") == 7
    assert finder.header(1) is None


def test_lookup_helpers(tmp_path: Path) -> None:
    """Accounts are found by provider and name, and ``secrets()`` lists every secret value to redact."""
    path = write(tmp_path, SECOND)
    settings = Settings.from_env(
        make_env(
            path,
            LTXV_BACKUP_KEY="backup-key-value",
            GENRELAY_API_TOKENS="tok-a,tok-b",
            GENRELAY_SECRET="s3cret",
        )
    )
    assert [a.name for a in settings.accounts_for("ltx")] == ["studio-main", "backup"]
    assert settings.accounts_for("vydra") == ()
    backup = settings.account("ltx", "backup")
    assert backup is not None and backup.max_jobs == 1
    assert settings.account("ltx", "nope") is None
    assert settings.providers() == ("ltx",)
    assert settings.secrets() == (API_KEY, "backup-key-value", "tok-a", "tok-b", "s3cret")


def test_repr_hides_secrets(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    env = make_env(
        path,
        GENRELAY_API_TOKENS="api-token-xyz",
        GENRELAY_SECRET="hmac-abc",
        GENRELAY_REDIS_URL="redis://user:redis%2Fpw@db.internal:6379/0",
    )
    settings = Settings.from_env(env)
    text = repr(settings)
    assert "redis_url='redis://user:***@db.internal:6379/0'" in text
    assert "redis/pw" in settings.secrets() and "redis%2Fpw" in settings.secrets()
    for secret in (API_KEY, "api-token-xyz", "hmac-abc", "redis%2Fpw"):
        assert secret not in text
        assert secret not in repr(settings.accounts[0])
    assert "studio-main" in text


def test_lease_ttl_can_be_set_per_provider(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    settings = Settings.from_env(make_env(path, GENRELAY_LEASE_TTL="600", GENRELAY_LEASE_TTL_LTX="90"))
    assert settings.lease_ttl_for("ltx") == 90.0
    assert settings.lease_ttl_for("vydra") == 600.0
    with pytest.raises(SettingsError, match="GENRELAY_LEASE_TTL_LTX"):
        Settings.from_env(make_env(path, GENRELAY_LEASE_TTL_LTX="-1"))
