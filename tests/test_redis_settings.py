"""The GENRELAY_REDIS_* settings compose the one URL every process connects with; passwords never
show in a repr, and every form is checked at start with a message naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.errors import SettingsError
from daemon.redis_connection import parse_target
from daemon.settings import Settings


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env(
        {"GENRELAY_ACCOUNTS": str(tmp_path / "none.toml"), **env}, require_accounts=False
    )


def test_sentinels_compose_a_sentinel_url(tmp_path: Path) -> None:
    built = settings(
        tmp_path,
        GENRELAY_REDIS_SENTINELS="10.0.0.1:26379, 10.0.0.2:26380",
        GENRELAY_REDIS_SENTINEL_MASTER="jobs",
        GENRELAY_REDIS_SENTINEL_PASSWORD="s3ntinel:pw",
        GENRELAY_REDIS_USERNAME="genrelay",
        GENRELAY_REDIS_PASSWORD="p@ss:w/rd",
    )
    assert built.redis_url is not None and built.redis_sentinels == ("10.0.0.1:26379", "10.0.0.2:26380")
    target = parse_target(built.redis_url)
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert target.master == "jobs"
    assert target.options["username"] == "genrelay" and target.options["password"] == "p@ss:w/rd"
    assert target.sentinel_options["password"] == "s3ntinel:pw"
    assert "p@ss:w/rd" not in repr(built) and "s3ntinel" not in repr(built)
    assert {"p@ss:w/rd", "s3ntinel:pw"} <= set(built.secrets())
    # `genrelay run` hands the composed URL to its children next to the same variables.
    again = settings(tmp_path, GENRELAY_REDIS_URL=built.redis_url, GENRELAY_REDIS_SENTINELS="10.0.0.1:26379")
    assert again.redis_url is not None and parse_target(again.redis_url).sentinels == (("10.0.0.1", 26379),)


def test_a_percent_encoded_password_is_decoded_and_tls_files_are_added(tmp_path: Path) -> None:
    built = settings(
        tmp_path,
        GENRELAY_REDIS_URL="rediss://genrelay:p%40ss%3Aw%2Frd@redis.internal:6380/2",
        GENRELAY_REDIS_TLS_CA="/etc/ca.crt",
        GENRELAY_REDIS_TLS_CERT_REQS="none",
    )
    assert built.redis_url is not None
    options = parse_target(built.redis_url).options
    assert options["password"] == "p@ss:w/rd" and options["db"] == 2
    assert options["ssl_ca_certs"] == "/etc/ca.crt" and options["ssl_cert_reqs"] == "none"
    assert "p%40ss" not in repr(built) and "p@ss" not in repr(built)


def test_a_unix_socket_takes_a_password_from_the_settings(tmp_path: Path) -> None:
    built = settings(tmp_path, GENRELAY_REDIS_URL="unix:///run/redis.sock", GENRELAY_REDIS_PASSWORD="pw/1")
    assert built.redis_url is not None
    options = parse_target(built.redis_url).options
    assert options["path"] == "/run/redis.sock" and options["password"] == "pw/1"


def test_a_unix_socket_password_in_the_query_is_used_and_kept_out_of_logs(tmp_path: Path) -> None:
    """The embedded server's URL form (``?db=0&password=...``, as redis-py reads it)."""
    built = settings(tmp_path, GENRELAY_REDIS_URL="unix:///run/redis.sock?db=0&password=s3cret-pw")
    assert built.redis_url is not None
    options = parse_target(built.redis_url).options
    assert options["path"] == "/run/redis.sock" and options["password"] == "s3cret-pw"
    assert "s3cret-pw" not in repr(built)
    assert "s3cret-pw" in built.secrets()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"GENRELAY_REDIS_URL": "localhost:6379"}, "GENRELAY_REDIS_URL must start with one of redis://"),
        (
            {"GENRELAY_REDIS_URL": "redis://h/0?sslca=x"},
            "GENRELAY_REDIS_URL has unknown query option(s) sslca",
        ),
        (
            {"GENRELAY_REDIS_URL": "redis://h/0", "GENRELAY_REDIS_SENTINELS": "h:26379"},
            "GENRELAY_REDIS_URL and GENRELAY_REDIS_SENTINELS are both set",
        ),
        ({"GENRELAY_REDIS_SENTINELS": "h"}, "GENRELAY_REDIS_SENTINELS has value 'h'"),
        (
            {"GENRELAY_REDIS_URL": "rediss://h", "GENRELAY_REDIS_TLS_CERT_REQS": "maybe"},
            "GENRELAY_REDIS_TLS_CERT_REQS has value 'maybe'",
        ),
    ],
)
def test_bad_redis_settings_name_the_variable(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings(tmp_path, **env)
    assert expected in str(caught.value)


def test_a_url_the_settings_add_nothing_to_stays_as_written(tmp_path: Path) -> None:
    for url in (
        "unix:///run/redis.sock",
        "redis://127.0.0.1:6379/0",
        "rediss://:pw@h:6380/0?ssl_cert_reqs=none",
    ):
        assert settings(tmp_path, GENRELAY_REDIS_URL=url).redis_url == url
