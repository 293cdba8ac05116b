"""Child processes that ``genrelay run`` and ``genrelay demo`` start, watch and stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

STOP_GRACE_S = 15.0


@dataclass
class Child:
    """One ``python -m <module> <args>`` child; its output goes to ``log_path`` or is inherited."""

    name: str
    args: list[str]
    env: Mapping[str, str]
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log: IO[bytes] | None = field(default=None, init=False)

    def start(self) -> Child:
        stdout: IO[bytes] | int | None = None
        if self.log_path is not None:
            self._log = self.log_path.open("ab")
            stdout = self._log
        self.process = subprocess.Popen(
            [sys.executable, "-m", *self.args],
            env=dict(self.env),
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            # Own process group: a Ctrl-C on the terminal reaches the parent, which stops children in order.
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = STOP_GRACE_S) -> int | None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; returns the exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return process.returncode


def stop_all(children: list[Child], grace: float = STOP_GRACE_S) -> None:
    """Stop children in reverse start order (web before the workers it feeds, say)."""
    for child in reversed(children):
        child.stop(grace)


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def wait_for_exit(children: list[Child], stop_requested: list[bool], poll_s: float = 0.2) -> Child | None:
    """Block until a stop is requested (returns None) or a child exits on its own (returns it)."""
    while not stop_requested[0]:
        for child in children:
            if not child.alive():
                return child
        time.sleep(poll_s)
    return None
