"""``genrelay demo``'s cast: the demo accounts, the work it submits, the accounts file and the
provider emulator it starts (all three providers on one port, as a real process)."""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.processes import Child, child_env


@dataclass(frozen=True)
class DemoAccount:
    provider: str
    name: str
    max_jobs: int
    key: str  # the API key (useapi: the token shared by its accounts)


USEAPI_TOKEN = "user:1000-demo-useapi-token"
VYDRA_PLAN = "starter"  # 30 requests per window, 5 concurrent jobs
# vydra counts requests per minute; the demo's emulator runs that clock six times faster, as it
# runs jobs in seconds, and genrelay's request budget is told so in the accounts file.
VYDRA_WINDOW_S = 10
VYDRA_REQUESTS = 30
ACCOUNTS = (
    DemoAccount("ltx", "studio-a", 3, "demo-key-studio-a"),
    DemoAccount("ltx", "studio-b", 2, "demo-key-studio-b"),
    DemoAccount("ltxstudio", "maker-1@example.com", 2, USEAPI_TOKEN),
    DemoAccount("ltxstudio", "maker-2@example.com", 2, USEAPI_TOKEN),
    DemoAccount("vydra", "vydra-main", 3, "vydra_live_user_1000_demokey"),
    # useapi.net Kling (an email) and MiniMax (an account id), under the same useapi token.
    DemoAccount("kling", "kling-1@example.com", 2, USEAPI_TOKEN),
    DemoAccount("minimax", "400001", 2, USEAPI_TOKEN),
)
PROVIDERS = ("ltx", "ltxstudio", "vydra", "kling", "minimax")
# The useapi.net services the emulator serves besides LTX Studio (--useapi-service-account).
USEAPI_SERVICES = ("kling", "minimax")
OPERATIONS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "ltx": [
        ("text-to-video", {"model": "ltx-2-3-fast", "duration": 4, "resolution": "1920x1080"}),
        (
            "image-to-video",
            {
                "model": "ltx-2-3-pro",
                "duration": 6,
                "resolution": "1920x1080",
                "image_uri": "https://example.com/still.png",
            },
        ),
        ("video-to-video-hdr", {"video_uri": "https://example.com/clip.mp4"}),
    ],
    "ltxstudio": [
        ("videos/ltx-create", {"model": "ltxv-turbo", "duration": "5"}),
        ("images/create", {"model": "flux"}),
    ],
    "vydra": [
        ("generate_video", {"model": "veo3", "aspect_ratio": "16:9"}),
        ("generate_image", {"model": "gemini-image"}),
    ],
    "kling": [("videos/text2video", {"duration": "5"}), ("images/kolors", {})],
    "minimax": [("videos/create", {}), ("images/create", {})],
}
PROMPTS = ["a lighthouse at dawn", "a red fox in snow", "city lights from a train", "waves on black sand"]
WEBHOOK_DROP_RATE = 0.2  # so some jobs show the safety poll at work


def key_env(account: DemoAccount) -> str:
    """The environment variable the accounts file names for the account's key."""
    if account.provider == "ltxstudio" or account.provider in USEAPI_SERVICES:
        return "DEMO_USEAPI_TOKEN"
    return "DEMO_KEY_" + account.name.upper().replace("-", "_")


def write_accounts(workdir: Path, emulator_url: str) -> Path:
    path = workdir / "accounts.toml"
    tables = []
    for account in ACCOUNTS:
        extra = ""
        if account.provider == "vydra":
            extra = f"requests_per_minute = {VYDRA_REQUESTS}\nrate_window_seconds = {VYDRA_WINDOW_S}\n"
        tables.append(
            f'[[account]]\nprovider = "{account.provider}"\nname = "{account.name}"\n'
            f'max_jobs = {account.max_jobs}\napi_key_env = "{key_env(account)}"\n'
            f'base_url = "{emulator_url}"\n{extra}'
        )
    path.write_text("\n".join(tables), encoding="utf-8")
    return path


def start_emulator(failure_rate: float, job_seconds: float) -> tuple[str, Child]:
    account_args = []
    for account in ACCOUNTS:
        if account.provider == "ltx":
            account_args.append(f"--key={account.key}={account.max_jobs}")
        elif account.provider == "ltxstudio":
            account_args.append(f"--useapi-account={account.key}:{account.name}={account.max_jobs}")
        elif account.provider in USEAPI_SERVICES:
            spec = f"{account.provider}/{account.key}:{account.name}={account.max_jobs}"
            account_args.append(f"--useapi-service-account={spec}")
        else:
            account_args.append(f"--vydra-account={account.key}={VYDRA_PLAN}")
    args = [
        "emulator",
        "--port",
        "0",
        "--job-seconds",
        str(job_seconds),
        "--jitter",
        "0.5",
        "--failure-rate",
        str(failure_rate),
        "--webhook-drop-rate",
        str(WEBHOOK_DROP_RATE),
        "--vydra-rate-window-seconds",
        str(VYDRA_WINDOW_S),
        # The same failures every run, so the demo always shows some.
        "--seed",
        "7",
        *account_args,
    ]
    child = Child("emulator", args, child_env({}))
    child.process = subprocess.Popen(
        [sys.executable, "-m", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert child.process.stdout is not None
    line = child.process.stdout.readline().decode().strip()
    if "listening on " not in line:
        child.stop()
        raise RuntimeError(f"the emulator did not start: {line or 'no output'}")
    return line.split("listening on ", 1)[1], child


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def redis_version() -> str:
    from daemon.embedded_redis import embedded_server_binary

    out = subprocess.run(
        [str(embedded_server_binary()), "--version"], capture_output=True, text=True, check=False
    )
    return next((w.split("=")[1] for w in out.stdout.split() if w.startswith("v=")), "?")
