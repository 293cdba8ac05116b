"""genrelay processes for the fault scenarios (H3): ``python -m daemon <command>`` as real
subprocesses with a given env, their output written to a log file as it arrives (so a SIGKILLed
or SIGSTOPped process still leaves its log) and watched for lines, so tests await a ready line or
a log event instead of sleeping. Tests signal them by pid: SIGKILL, SIGTERM, SIGSTOP, SIGCONT.

``ProcessGroup`` is what the ``daemon_processes`` fixture (tests/conftest.py) yields: calling it
starts a process; at teardown whatever still runs is resumed and killed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO

PROCESS_START_S = 60
PROCESS_STOP_S = 60
WEB_READY = "genrelay web listening on"
WORKER_READY = "worker started"
EMULATOR_READY = "emulator listening on"


class DaemonProcess:
    """One ``python -m daemon <command>`` process, its output drained (the pipe never fills) into
    ``lines`` and ``log_path``, and watched for a line."""

    def __init__(
        self,
        command: str,
        env: Mapping[str, str],
        ready_line: str | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.command = command
        self.env = {**os.environ, **env}
        self.ready_line = ready_line
        self.log_path = log_path
        self.lines: list[str] = []
        self.ready = asyncio.Event()
        self.address: str | None = None
        self._grew = asyncio.Event()
        self._log: IO[str] | None = None

    @property
    def name(self) -> str:
        return self.command.split()[0]

    async def start(self) -> DaemonProcess:
        if self.log_path is not None:
            self._log = self.log_path.open("a", encoding="utf-8")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "daemon",
            *self.command.split(),
            env=self.env,
            # One stream: genrelay logs to stderr, the emulator announces itself on stdout.
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        self.drain = asyncio.create_task(self._drain())
        if self.ready_line is not None:
            try:
                async with asyncio.timeout(PROCESS_START_S):
                    await self.ready.wait()
            except TimeoutError:
                raise AssertionError(
                    f"{self.command} never logged {self.ready_line!r}:\n{self.text()}"
                ) from None
        return self

    async def _drain(self) -> None:
        assert self.process.stdout is not None
        try:
            async for raw in self.process.stdout:
                line = raw.decode(errors="replace")
                self.lines.append(line)
                if self._log is not None:
                    self._log.write(line)
                    self._log.flush()
                if self.ready_line is not None and not self.ready.is_set() and self.ready_line in line:
                    self.address = line.rsplit(" ", 1)[-1].strip()
                    self.ready.set()
                self._grew.set()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
            self._grew.set()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def text(self) -> str:
        return "".join(self.lines)

    async def wait_for_line(self, text: str, *, after: int = 0, within_s: float = 30.0) -> str:
        """The first output line from index ``after`` on that contains ``text`` (waits for it)."""
        async with asyncio.timeout(within_s):
            seen = after
            while True:
                for line in self.lines[seen:]:
                    if text in line:
                        return line
                seen = len(self.lines)
                if self.drain.done():
                    raise AssertionError(f"{self.command} ended without logging {text!r}:\n{self.text()}")
                self._grew.clear()
                await self._grew.wait()

    def send(self, sig: int) -> None:
        """Send ``sig`` by pid (a no-op once the process has exited)."""
        if self.process.returncode is None:
            os.kill(self.process.pid, sig)

    def kill(self) -> None:
        self.send(signal.SIGKILL)

    def pause(self) -> None:
        self.send(signal.SIGSTOP)

    def resume(self) -> None:
        self.send(signal.SIGCONT)

    async def wait(self, within_s: float = PROCESS_STOP_S) -> int:
        """Wait for the exit; the exit code (negative: killed by that signal)."""
        async with asyncio.timeout(within_s):
            code = await self.process.wait()
            await self.drain
        return code

    async def stop(self, sig: int = signal.SIGTERM, within_s: float = PROCESS_STOP_S) -> int:
        """Send ``sig`` (a stopped process is continued so it can act on it) and wait for the exit."""
        self.send(sig)
        if sig not in (signal.SIGKILL, signal.SIGCONT):
            self.resume()
        return await self.wait(within_s)


class ProcessGroup:
    """The processes of one test. ``await group("worker", env)`` starts one; ``restart`` starts a
    fresh one like an old one (as a supervisor would); ``close`` kills what is left. Each process
    logs to ``<log_dir>/<command>-<n>.log``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[DaemonProcess] = []

    async def __call__(
        self, command: str, env: Mapping[str, str], ready_line: str | None = None
    ) -> DaemonProcess:
        n = len(self.started) + 1
        log_path = self.log_dir / f"{command.split()[0]}-{n}.log"
        process = DaemonProcess(command, env, ready_line, log_path)
        self.started.append(process)
        return await process.start()

    async def web(self, env: Mapping[str, str]) -> DaemonProcess:
        """A web process on a free port; ``address`` is its base URL."""
        return await self("web", {**env, "GENRELAY_PORT": "0"}, ready_line=WEB_READY)

    async def worker(self, env: Mapping[str, str]) -> DaemonProcess:
        """A worker process, once it has started its pollers and sweep."""
        return await self("worker", env, ready_line=WORKER_READY)

    async def emulator(self, *args: str) -> DaemonProcess:
        """The provider emulator as its own process (``genrelay emulator ARGS``, on a free port);
        ``address`` is its base URL. For scenarios that stop or kill the provider side."""
        return await self(" ".join(["emulator", "--port", "0", *args]), {}, ready_line=EMULATOR_READY)

    async def restart(self, old: DaemonProcess) -> DaemonProcess:
        """A new process with ``old``'s command and env (``old`` must have exited or be about to)."""
        env = {k: v for k, v in old.env.items() if os.environ.get(k) != v}
        return await self(old.command, env, ready_line=old.ready_line)

    def logs(self) -> dict[str, str]:
        """Every process's output so far, by log file name."""
        return {
            (p.log_path.name if p.log_path else f"{p.name}-{n}"): p.text()
            for n, p in enumerate(self.started, 1)
        }

    async def close(self) -> None:
        """SIGKILL every process still running (all first, so one slow exit strands none), then reap them."""
        for process in self.started:
            process.kill()
        for process in self.started:
            await process.wait()
