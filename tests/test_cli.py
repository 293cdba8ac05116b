"""The ``genrelay`` command: help on every command, clear configuration errors, submit and status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon.cli import build_parser, main
from tests.conftest import write_accounts

COMMANDS = [
    "run",
    "web",
    "worker",
    "emulator",
    "demo",
    "submit",
    "status",
    "cancel",
    "accounts",
    "deliveries",
    "import-assets",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: genrelay {command}")


def test_top_level_help_lists_every_command() -> None:
    text = build_parser().format_help()
    for command in COMMANDS:
        assert command in text


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_missing_accounts_file_stops_web_with_a_message_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    done = run_cli("web", env={"GENRELAY_ACCOUNTS": str(missing), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert str(missing) in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_variable_is_named(tmp_path: Path) -> None:
    accounts = write_accounts(tmp_path / "accounts.toml", "http://127.0.0.1:9", {"a1": 1})
    env = {"GENRELAY_ACCOUNTS": str(accounts), "LTX_KEY_A1": "k", "GENRELAY_POLL_INTERVAL": "soon"}
    done = run_cli("worker", env=env)
    assert done.returncode == 2
    assert "GENRELAY_POLL_INTERVAL" in done.stderr


def test_submit_rejects_params_that_are_not_json(tmp_path: Path, redis_url: str) -> None:
    env = {"GENRELAY_REDIS_URL": redis_url, "GENRELAY_ACCOUNTS": str(tmp_path / "none.toml")}
    done = run_cli("submit", "ltx", "text-to-video", "{prompt", env=env)
    assert done.returncode == 2
    assert "params is not valid JSON" in done.stderr


def test_status_of_an_unknown_job_says_so(tmp_path: Path, redis_url: str) -> None:
    env = {"GENRELAY_REDIS_URL": redis_url, "GENRELAY_ACCOUNTS": str(tmp_path / "none.toml")}
    done = run_cli("status", "ltx-" + "0" * 32, env=env)
    assert done.returncode == 1
    assert "no job" in done.stderr


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("genrelay 0.")


def test_emulator_help_names_all_three_providers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["emulator", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for provider in ("LTX Video API", "useapi.net LTX Studio", "vydra.ai", "--vydra-account"):
        assert provider in text
    assert "vydra" in build_parser().format_help()


@pytest.mark.parametrize("command", [["accounts"], ["deliveries"], ["deliveries", "list"]])
def test_every_table_command_has_json(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    assert "--json" in capsys.readouterr().out
