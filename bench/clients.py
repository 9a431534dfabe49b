"""Minimal proxies that differ only in their upstream HTTP client, for the comparison that
chose the BFF's own client (bff/upstream_client.py) for its forwarding path over aiohttp
(see docs/benchmarks.md).

Each request: read a session from Redis (one GET, like the BFF), forward to the upstream
with a bearer token, stream the answer back. Plain ASGI under uvicorn (httptools, uvloop).

    python bench/clients.py {bff|httpx|aiohttp|httpx-aiohttp} PORT UPSTREAM_URL REDIS_URL
"""

from __future__ import annotations

import sys
from typing import Any

import redis.asyncio as aioredis
import uvicorn

KIND, PORT, UPSTREAM, REDIS_URL = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
state: dict[str, Any] = {}


async def startup() -> None:
    state["redis"] = aioredis.Redis.from_url(REDIS_URL)
    await state["redis"].set("bench:session", b"x" * 1500)
    if KIND == "bff":
        from bff.upstream_client import UpstreamPool

        state["client"] = UpstreamPool(UPSTREAM)
    elif KIND == "aiohttp":
        import aiohttp

        state["client"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
        )
    elif KIND == "httpx":
        import httpx

        state["client"] = httpx.AsyncClient(limits=httpx.Limits(max_connections=512))
    else:
        import httpx
        from httpx_aiohttp import AiohttpTransport

        state["client"] = httpx.AsyncClient(transport=AiohttpTransport())


async def forward() -> tuple[int, bytes]:
    headers = {"authorization": "Bearer " + "t" * 800}
    if KIND == "bff":
        pool = state["client"]
        response = await pool.request("GET", "/bench", list(headers.items()), None, read_timeout=30)
        return response.status, await response.read()
    if KIND == "aiohttp":
        async with state["client"].get(f"{UPSTREAM}/bench", headers=headers) as r:
            return r.status, await r.read()
    r = await state["client"].get(f"{UPSTREAM}/bench", headers=headers)
    return r.status_code, r.content


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await startup()
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await state["redis"].get("bench:session")
    status, body = await forward()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=PORT,
        log_level="warning",
        http="httptools",
        loop="uvloop",
        access_log=False,
    )
