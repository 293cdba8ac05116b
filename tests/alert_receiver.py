"""An operator's alert endpoint for tests: a small aiohttp server on 127.0.0.1 that keeps every
request and verifies each one with the ``standardwebhooks`` package, the way an operator would."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks import Webhook


@dataclass
class AlertReceiver:
    server: TestServer
    # Statuses to answer with, one per request, before answering 200 for good.
    answers: list[int] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return str(self.server.make_url("/alerts?token=operator-capability"))

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        self.arrived.set()
        return web.Response(status=self.answers.pop(0) if self.answers else 200)

    def verified(self, secret: str) -> list[dict[str, Any]]:
        """Every alert received, verified (raises on a bad signature)."""
        return [Webhook(secret).verify(body, headers) for headers, body in self.requests]

    async def wait_for(self, secret: str, kind: str, *, account: str | None = None) -> dict[str, Any]:
        """The first verified alert of ``kind`` (bound it with ``asyncio.timeout``)."""
        while True:
            for alert in self.verified(secret):
                if alert["type"] == kind and account in (None, alert.get("account")):
                    return alert
            self.arrived.clear()
            await self.arrived.wait()
