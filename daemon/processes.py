"""Child processes that ``genrelay run`` and ``genrelay demo`` start, watch and stop.

:class:`Supervisor` is ``genrelay run``'s loop: a child that exits on its own is started again after
a backoff, and the supervisor gives up (stops everything, exit 1, says why) when one child crashed
``crash_limit`` times within ``crash_window_s``. A stop (SIGTERM or SIGINT to the supervisor) sends
SIGTERM to every child at once and gives them ``stop_grace_s`` together before SIGKILL; a second
signal during that wait kills at once.
"""

from __future__ import annotations

import collections
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from daemon.backoff import backoff_seconds

STOP_GRACE_S = 15.0
# Crashes of one child within CRASH_WINDOW_S after which the supervisor stops restarting it.
CRASH_LIMIT = 5
CRASH_WINDOW_S = 60.0
# Restart backoff: doubling from the base, capped; a crash loop costs a restart every few seconds.
RESTART_BASE_S = 0.5
RESTART_MAX_S = 8.0
POLL_S = 0.2
_PR_SET_PDEATHSIG = 1


def _parent_death_signal() -> Callable[[], None] | None:
    """What the child runs before exec so that it gets SIGTERM when its parent dies (Linux only): a
    supervisor that is SIGKILLed leaves no orphans holding ports and Redis connections. libc is
    looked up here, in the parent, so the child between fork and exec only makes the one call."""
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def set_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    return set_signal


@dataclass
class Child:
    """One ``python -m <module> <args>`` child; its output goes to ``log_path`` or is inherited."""

    name: str
    args: list[str]
    env: Mapping[str, str]
    log_path: Path | None = None
    die_with_parent: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log: IO[bytes] | None = field(default=None, init=False)

    def start(self) -> Child:
        """Start the process (again, after it exited: the same command and environment)."""
        self.close_log()
        stdout: IO[bytes] | int | None = None
        if self.log_path is not None:
            self._log = self.log_path.open("ab")
            stdout = self._log
        self.process = subprocess.Popen(
            [sys.executable, "-m", *self.args],
            env=dict(self.env),
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            # Own process group: a Ctrl-C on the terminal reaches the parent, which stops the children.
            start_new_session=True,
            preexec_fn=_parent_death_signal() if self.die_with_parent else None,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send(self, sig: int) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(sig)

    def stop(self, grace: float = STOP_GRACE_S) -> int | None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; returns the exit code."""
        self.send(signal.SIGTERM)
        return self.wait_or_kill(time.monotonic() + grace)

    def wait_or_kill(self, deadline: float) -> int | None:
        """Wait for the exit until ``deadline`` (monotonic), then SIGKILL; returns the exit code."""
        process = self.process
        if process is None:
            return None
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self.close_log()
        return process.returncode

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def stop_all(children: list[Child], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM to every child at once, then ``grace`` seconds for all of them together, then SIGKILL."""
    for child in children:
        child.send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        child.wait_or_kill(deadline)


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def say_to_stderr(text: str) -> None:
    print(f"genrelay run: {text}", file=sys.stderr, flush=True)


class Supervisor:
    """Keeps ``children`` running until :meth:`request_stop`; see the module docstring."""

    def __init__(
        self,
        children: list[Child],
        *,
        stop_grace_s: float,
        crash_limit: int = CRASH_LIMIT,
        crash_window_s: float = CRASH_WINDOW_S,
        restart_base_s: float = RESTART_BASE_S,
        restart_max_s: float = RESTART_MAX_S,
        say: Callable[[str], None] = say_to_stderr,
    ) -> None:
        self.children = children
        self.stop_grace_s = stop_grace_s
        self.crash_limit = crash_limit
        self.crash_window_s = crash_window_s
        self.restart_base_s = restart_base_s
        self.restart_max_s = restart_max_s
        self.say = say
        self.stopping = False
        self.crashes: dict[str, collections.deque[float]] = {c.name: collections.deque() for c in children}
        self.restart_at: dict[str, float] = {}

    def request_stop(self, signum: int, frame: object = None) -> None:
        """The signal handler for SIGTERM and SIGINT: the first stops gracefully, a second kills."""
        if not self.stopping:
            self.stopping = True
            self.say(
                f"{signal.Signals(signum).name}: stopping {len(self.children)} processes "
                f"(up to {self.stop_grace_s:g} s for work in flight; again to kill at once)"
            )
            return
        self.say(f"{signal.Signals(signum).name} again: killing every process now")
        for child in self.children:
            child.send(signal.SIGKILL)

    def run(self) -> bool:
        """Start the children and keep them running until a stop is requested (True) or one of them
        crashed too often (False); every child is stopped on return."""
        try:
            for child in self.children:
                self._start(child)
            while not self.stopping:
                if not self._watch(time.monotonic()):
                    return False
                time.sleep(POLL_S)
            return True
        finally:
            self.stopping = True
            stop_all(self.children, self.stop_grace_s)

    def _start(self, child: Child) -> None:
        child.start()
        self.say(f"{child.name} started (pid {child.pid})")

    def _watch(self, now: float) -> bool:
        for child in self.children:
            due = self.restart_at.get(child.name)
            if due is not None:
                if now >= due:
                    del self.restart_at[child.name]
                    self._start(child)
                continue
            if child.alive() or self.stopping:
                continue
            assert child.process is not None
            child.close_log()
            crashes = self.crashes[child.name]
            crashes.append(now)
            while crashes and crashes[0] < now - self.crash_window_s:
                crashes.popleft()
            how = describe_exit(child.process.returncode)
            if len(crashes) >= self.crash_limit:
                self.say(
                    f"GIVING UP: {child.name} {how}: {len(crashes)} crashes within "
                    f"{self.crash_window_s:g} s; stopping everything (see its log for why)"
                )
                return False
            delay = backoff_seconds(len(crashes), self.restart_base_s, self.restart_max_s)
            self.restart_at[child.name] = now + delay
            self.say(
                f"{child.name} {how}; restarting it in {delay:.1f} s "
                f"(crash {len(crashes)} of {self.crash_limit} allowed within {self.crash_window_s:g} s)"
            )
        return True
