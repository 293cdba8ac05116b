"""A throwaway genrelay cluster for the load benchmarks and the soak: a restartable Redis with AOF,
``genrelay web`` and ``genrelay worker`` processes, and what the runs measure about them (RSS, CPU).

Kept free of benchmark logic so it can serve other harnesses: start, SIGKILL and restart processes
by pid, restart Redis gracefully on the same port and data dir, and stop everything it started.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from daemon.embedded_redis import EmbeddedRedis
from daemon.processes import Child, child_env

STOP_GRACE_S = 10.0
READY_TIMEOUT_S = 60.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def rss_mb(pid: int) -> float:
    """Resident set size of a live process, in MiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process has used so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class RestartableRedis:
    """An embedded redis-server with AOF on its unix socket, restarted gracefully (SHUTDOWN fsyncs the
    AOF; the new server replays it) on the same socket and data dir, as an operator's restart does."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.server = EmbeddedRedis(data_dir, appendonly=True)
        self.restarts = 0

    def start(self) -> str:
        return self.server.start()

    @property
    def url(self) -> str:
        return self.server.url

    def restart(self, down_s: float = 0.5) -> float:
        """Stop, stay down ``down_s`` seconds, start again; returns the seconds Redis was away."""
        began = time.monotonic()
        self.server.stop()
        time.sleep(down_s)
        self.server = EmbeddedRedis(self.data_dir, appendonly=True)
        self.server.start()
        self.restarts += 1
        return time.monotonic() - began

    def stop(self) -> None:
        self.server.stop()


@dataclass
class Cluster:
    """genrelay processes sharing one environment; every child logs to ``workdir/<name>.log``."""

    workdir: Path
    env: Mapping[str, str]
    children: list[Child] = field(default_factory=list)
    killed: int = 0

    def start(self, command: str, name: str, **extra: str) -> Child:
        env = child_env({**self.env, **extra})
        child = Child(name, ["daemon", command], env, self.workdir / f"{name}.log").start()
        self.children.append(child)
        return child

    def start_web(self, name: str, port: int, **extra: str) -> tuple[Child, str]:
        child = self.start("web", name, GENRELAY_PORT=str(port), **extra)
        return child, f"http://127.0.0.1:{port}"

    def workers(self) -> list[Child]:
        return [c for c in self.children if c.args[1] == "worker" and c.alive()]

    def kill(self, child: Child) -> None:
        """SIGKILL, as a crash or the OOM killer would; the child is forgotten."""
        os.kill(child.pid, signal.SIGKILL)
        assert child.process is not None
        child.process.wait()
        child.stop()  # closes its log
        self.children.remove(child)
        self.killed += 1

    def logs(self) -> list[Path]:
        return sorted(self.workdir.glob("*.log"))

    def stop_all(self) -> None:
        """SIGTERM everything, web first, then SIGKILL whatever outlives the grace period."""
        webs = [c for c in self.children if c.args[1] == "web"]
        for child in webs + [c for c in self.children if c not in webs]:
            if child.alive() and child.process is not None:
                child.process.send_signal(signal.SIGTERM)
        for child in self.children:
            child.stop(STOP_GRACE_S)
        self.children.clear()


async def wait_ready(base_url: str, child: Child, within_s: float = READY_TIMEOUT_S) -> None:
    """Wait until a web process answers ``/readyz`` with 200 (Redis reachable, accounts loaded)."""
    deadline = time.monotonic() + within_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            if not child.alive():
                raise RuntimeError(f"{child.name} exited while starting; see {child.log_path}")
            try:
                async with http.get(f"{base_url}/readyz") as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{child.name} was not ready after {within_s:g} s; see {child.log_path}")
