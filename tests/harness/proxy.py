"""A small asyncio TCP proxy between the processes under test and Redis, with faults (after
Toxiproxy, whose server is a Go binary we do not have here).

Modes, switched at any time from the test's event loop while subprocesses talk through it:

* ``pass_through()``: bytes go both ways unchanged;
* ``latency(ms)``: every reply chunk (Redis to client) is delivered ``ms`` after it arrived (order
  kept, chunks pipelined), so a round trip takes ``ms`` longer (Toxiproxy's downstream latency);
* ``blackhole()``: connections are accepted and held, every byte either way is dropped (Toxiproxy's
  ``timeout`` toxic with 0): a client waits for replies that never come. When it ends, the
  connections that lost bytes are closed (their Redis protocol stream is broken) and new ones pass;
* ``reset()``: every open connection is aborted now;
* ``cut_scripts(n, only=sha)``: the next ``n`` script calls (``EVALSHA``/``EVAL``; only those
  carrying ``sha`` when given) reach Redis, which runs them, and their connection is aborted before
  the reply gets back: the client sees a connection error for a script that did run.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

CHUNK = 65536
SCRIPT_MARKERS = (b"EVALSHA", b"evalsha", b"EVAL", b"eval")


@dataclass
class ProxyStats:
    connections: int = 0
    resets: int = 0
    scripts_cut: int = 0
    dropped_bytes: int = 0


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    lost_bytes: bool = False
    cut_on_reply: bool = False

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    """Listens on a free loopback port and forwards to ``upstream_host:upstream_port``."""

    def __init__(self, upstream_host: str, upstream_port: int, *, password: str | None = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.password = password
        self.mode = "pass"
        self.latency_s = 0.0
        self.stats = ProxyStats()
        self._scripts_to_cut = 0
        self._cut_only: bytes | None = None
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        credentials = f":{self.password}@" if self.password else ""
        return f"redis://{credentials}127.0.0.1:{self.port}/0"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    # -- modes ---------------------------------------------------------------------------------------

    def pass_through(self) -> None:
        was_blackhole = self.mode == "blackhole"
        self.mode, self.latency_s = "pass", 0.0
        if was_blackhole:
            for link in list(self._links):
                if link.lost_bytes or link.upstream is None:
                    link.abort()

    def latency(self, ms: float) -> None:
        self.mode, self.latency_s = "latency", ms / 1000

    def blackhole(self) -> None:
        self.mode = "blackhole"

    def reset(self) -> int:
        """Abort every open connection now; returns how many."""
        links = list(self._links)
        for link in links:
            link.abort()
        self.stats.resets += len(links)
        return len(links)

    def cut_scripts(self, count: int, only: str | None = None) -> None:
        self._scripts_to_cut = count
        self._cut_only = only.encode() if only else None

    @property
    def scripts_left_to_cut(self) -> int:
        return self._scripts_to_cut

    def _is_cut_script(self, data: bytes) -> bool:
        if not any(marker in data for marker in SCRIPT_MARKERS):
            return False
        return self._cut_only is None or self._cut_only in data

    # -- plumbing ------------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        link = _Link(writer)
        self._links.add(link)
        try:
            while self.mode == "blackhole":  # held: accepted, never connected upstream
                data = await reader.read(CHUNK)
                if not data:
                    return
                link.lost_bytes = True
                self.stats.dropped_bytes += len(data)
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                return  # Redis is down: the client sees its connection closed
            link.upstream = up_writer
            link.tasks = [
                asyncio.create_task(self._pump(link, reader, up_writer, to_upstream=True)),
                asyncio.create_task(self._pump(link, up_reader, writer, to_upstream=False)),
            ]
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            link.abort()
            self._links.discard(link)

    async def _pump(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, to_upstream: bool
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            while True:
                arrived, data = await queue.get()
                delay = arrived + (0.0 if to_upstream else self.latency_s) - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()

        delivering = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    return
                if self.mode == "blackhole":
                    link.lost_bytes = True
                    self.stats.dropped_bytes += len(data)
                    continue
                if not to_upstream and link.cut_on_reply:
                    self.stats.scripts_cut += 1
                    return  # the script ran; its reply is lost with the connection
                if to_upstream and self._scripts_to_cut > 0 and self._is_cut_script(data):
                    self._scripts_to_cut -= 1
                    link.cut_on_reply = True
                # Always through the queue, so switching modes never reorders bytes.
                queue.put_nowait((loop.time(), data))
        except (ConnectionError, OSError):
            return
        finally:
            delivering.cancel()
