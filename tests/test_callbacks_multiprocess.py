"""The same callback ten times at once, spread over two web processes: every answer is 2xx, the
job ends once, its slot is released once (and handed to the next job once), and the app is told once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

from daemon import keys
from daemon.jobs import JobRequest, State, Update
from tests.conftest import process_env
from tests.harness import slots as slot_index

ACCOUNT = "ltxstudio/me@example.com"
READY = "genrelay web listening on"
ARTIFACT = {"assetUrl": "https://storage.example/v.mp4", "expirationDateString": "1748919477350"}


async def test_ten_identical_callbacks_across_two_web_processes_apply_once(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, daemon_processes, open_daemon, make_settings
) -> None:
    extra = {
        "GENRELAY_PUBLIC_URL": "https://relay.example.com",
        "GENRELAY_CALLBACK_CONFIRM": "0",
        "GENRELAY_PORT": "0",
    }
    services = await open_daemon(make_settings(accounts={ACCOUNT: 1}, **extra))
    env = process_env(
        tmp_path, redis_url, "http://127.0.0.1:9", {ACCOUNT: 1}, **extra, GENRELAY_SECRET=services.secret
    )
    webs = [await daemon_processes("web", env, ready_line=READY) for _ in range(2)]

    def request(n: int) -> JobRequest:
        return JobRequest.from_json(
            {
                "provider": "ltxstudio",
                "operation": "videos/ltx-create",
                "params": {"prompt": f"p{n}"},
                "replyUrl": "https://app.example.com/done",
            }
        )

    job_id = (await services.store.create(request(1))).job_id
    waiting = (await services.store.create(request(2))).job_id
    assert (await services.store.claim_submit(job_id)).outcome == "go"
    await services.store.apply(job_id, Update(State.ACTIVE, provider_job_id="pj"), source="submit")
    token = services.callback_tokens().issue("ltxstudio", job_id)
    body = {
        "status": {"type": "completed", "progress": 100, "artifact": ARTIFACT},
        "jobId": "pj",
        "replyRef": job_id,
    }
    async with aiohttp.ClientSession() as http:

        async def send(n: int) -> tuple[int, str]:
            async with http.post(f"{webs[n % 2].address}/callbacks/ltxstudio/{token}", json=body) as resp:
                return resp.status, (await resp.json())["outcome"]

        answers = await asyncio.gather(*(send(n) for n in range(10)))
    assert [status for status, _ in answers] == [200] * 10
    outcomes = [outcome for _, outcome in answers]
    # The others found the job ended, or (a repeat of what this process just applied) were answered
    # without touching Redis.
    assert outcomes.count("applied") == 1 and set(outcomes) - {"applied"} <= {"terminal", "duplicate"}
    events = [f for _, f in await redis_client.xrange(keys.events_key("ltxstudio"))]
    assert [f["state"] for f in events if f["job"] == job_id].count("completed") == 1
    assert [f["state"] for f in events if f["job"] == waiting].count("dispatched") == 1
    deliveries = [
        t for t in await redis_client.zrange(keys.ARQ_QUEUE, 0, -1) if t.startswith(f"deliver:{job_id}:")
    ]
    assert len(deliveries) == 1
    assert await slot_index.leases_on(redis_client, "ltxstudio", "me@example.com") == [waiting]
