"""Connection-level limits of the web server: how long a request head may take, how long an idle
keep-alive connection is kept.

aiohttp closes an idle keep-alive connection after ``keepalive_timeout`` (its own default is about an
hour); genrelay passes ``GENRELAY_KEEPALIVE_TIMEOUT``. A request head (request line and headers) that
trickles in, or a new connection that sends nothing, is cut after ``GENRELAY_HEAD_TIMEOUT``: the timer
starts with the connection or with the first byte of the next request and stops when the head is
complete. Slow *bodies* are the handlers' business (``GENRELAY_BODY_TIMEOUT``, answered 408).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

__all__ = ["HeadTimeoutHandler", "HeadTimeoutRunner"]


class HeadTimeoutHandler(RequestHandler):
    """aiohttp's protocol with a deadline for each request head."""

    def __init__(self, *args: Any, head_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timeout = head_timeout
        self._head_handle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._messages:
            self._disarm_head_timer()  # a whole head arrived
        elif data and self._waiting_for_head():
            self._arm_head_timer()

    def _waiting_for_head(self) -> bool:
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def _arm_head_timer(self) -> None:
        if self._head_handle is None and self._head_timeout > 0:
            self._head_handle = self._loop.call_later(self._head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_handle is not None:
            self._head_handle.cancel()
            self._head_handle = None

    def _head_timed_out(self) -> None:
        self._head_handle = None
        if not self._messages and (self._waiting_for_head() or self._request_count == 0):
            self.force_close()


class _HeadTimeoutServer(web.Server):
    """Builds :class:`HeadTimeoutHandler` protocols (``head_timeout`` is set by the runner)."""

    head_timeout: float

    def __call__(self) -> RequestHandler:
        return HeadTimeoutHandler(self, loop=self._loop, head_timeout=self.head_timeout, **self._kwargs)


class HeadTimeoutRunner(web.AppRunner):
    """``web.AppRunner`` whose connections get :class:`HeadTimeoutHandler`."""

    def __init__(self, app: web.Application, *, head_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._head_timeout = head_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _HeadTimeoutServer
        assert isinstance(server, _HeadTimeoutServer)
        server.head_timeout = self._head_timeout
        return server
