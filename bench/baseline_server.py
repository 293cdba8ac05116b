"""The two ceilings the callback route is measured against, as a process of their own:

* ``bare``: an aiohttp handler that reads and parses the same JSON and answers 200;
* ``evalsha``: the same plus one trivial EVALSHA (the Redis round trip a callback costs).

Run by ``bench/callbacks.py``; prints ``listening on http://HOST:PORT`` when ready.
"""

from __future__ import annotations

import argparse
import asyncio

import orjson
from aiohttp import web

from daemon.redis_connection import connect


async def serve(mode: str, redis_url: str) -> None:
    redis = await connect(redis_url)
    sha = await redis.script_load("return 1")

    async def handle(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        if mode == "evalsha":
            await redis.evalsha(sha, 0)
        return web.Response(
            body=orjson.dumps({"received": isinstance(body, dict)}), content_type="application/json"
        )

    app = web.Application()
    app.router.add_post("/callbacks/{provider}/{token}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"listening on http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("bare", "evalsha"))
    parser.add_argument("redis_url")
    args = parser.parse_args()
    asyncio.run(serve(args.mode, args.redis_url))


if __name__ == "__main__":
    main()
