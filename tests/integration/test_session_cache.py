"""The session cache (bff/session/cache.py) against real processes and a real Redis: an end
on one BFF process refuses the next request on another within the documented bound (the time
is measured and printed), the idle timeout keeps its documented precision, and a lost
notices link (connection killed, Redis restarted) flushes the cache."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from bff.session.redis_store import RedisStore
from tests.contract.test_store_contract import Clock, make_store, session
from tests.scenarios import post_logout_token
from tests.support import Browser, RedisServer, bff_processes

BOUND = 0.1  # seconds: docs/operations.md, "Session cache"


async def first_refusal(call: Callable[[], Awaitable[int]], limit: float = 5.0) -> float:
    """Seconds until ``call`` answers 401, asking again at once after every other answer."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        if await call() == 401:
            return time.perf_counter() - started
    raise AssertionError(f"still accepted after {limit} s")


@pytest.fixture
def two(idp, redis_url, upstream, tmp_path):
    with bff_processes(idp, redis_url, upstream, tmp_path) as procs:
        yield procs


@pytest.mark.parametrize("how", ["logout", "backchannel", "session_list"])
async def test_an_end_on_one_process_refuses_the_next_request_on_another_within_the_bound(
    idp, two, how, capsys
):
    a, b = two
    async with httpx.AsyncClient(timeout=30) as ca, httpx.AsyncClient(timeout=30) as cb:
        on_a = Browser(ca, a.url)
        await on_a.login("alice")
        on_b = Browser(cb, a.url)
        on_b.cookies = dict(on_a.cookies)
        on_b.public_url = b.url  # the same browser's cookie, sent to the other process
        for _ in range(5):  # the first reads Redis, the rest are answered from B's cache
            assert (await on_b.get("/api/bench", csrf=True)).status_code == 200
        if how == "logout":
            assert (await on_a.request("POST", "/bff/logout", csrf=True)).status_code in (200, 204, 302)
        elif how == "backchannel":
            sid = (await on_a.get("/bff/user", csrf=True)).json()["claims"]["sid"]
            r = await post_logout_token(on_a, idp.logout_token(user="alice", sid=sid))
            assert r.status_code == 200
        else:
            other = Browser(ca, a.url)
            await other.login("alice")
            mine = (await on_b.get("/bff/sessions", csrf=True)).json()["sessions"]
            handle = next(s["id"] for s in mine if s["current"])
            assert (await other.request("DELETE", f"/bff/sessions/{handle}", csrf=True)).status_code == 204

        async def call_b() -> int:
            return (await on_b.get("/api/bench", csrf=True)).status_code

        elapsed = await first_refusal(call_b)
    with capsys.disabled():
        print(f"\n  revocation via {how} seen by the other process after {elapsed * 1000:.1f} ms")
    assert elapsed < BOUND


async def test_the_idle_timeout_keeps_its_precision(idp, redis_url, upstream, tmp_path):
    """Idle 3 s, so the cache TTL is 0.3 s. A session ends no earlier than 3 - 0.3 s after its
    last request and no later than 3 s: used for a while, it outlives a 2.4 s pause, three
    times over (whatever the fraction of a second its last use fell on: whole seconds are
    stored), and not a 3.3 s one."""
    with bff_processes(idp, redis_url, upstream, tmp_path, count=1, BFF_SESSION_IDLE_TIMEOUT="3") as (a,):
        async with httpx.AsyncClient(timeout=30) as client:
            browser = Browser(client, a.url)
            await browser.login("alice")
            for _ in range(3):
                deadline = time.monotonic() + 1
                while time.monotonic() < deadline:  # a stream of calls, mostly from the cache
                    assert (await browser.get("/api/bench", csrf=True)).status_code == 200
                    await asyncio.sleep(0.02)
                await asyncio.sleep(2.4)
                assert (await browser.get("/api/bench", csrf=True)).status_code == 200  # slid again
            await asyncio.sleep(3.3)
            assert (await browser.get("/api/bench", csrf=True)).status_code == 401


@contextlib.asynccontextmanager
async def cached_store(url: str) -> AsyncIterator[RedisStore]:
    store = make_store(url, Clock(), cached=True)
    assert isinstance(store, RedisStore)
    task = asyncio.create_task(store.run_notices())
    await until(lambda: store.notices.live)
    try:
        yield store
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()


async def until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    async with asyncio.timeout(limit):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_change_elsewhere_drops_the_copy(redis_url):
    async with cached_store(redis_url) as here, cached_store(redis_url) as there:
        s = session(Clock())
        await there.create(s)
        assert (await here.load(s.id)) is not None
        assert len(here.cache) == 1
        await there.update_tokens(s.with_tokens("at-new", s.access_expires_at, "rt-new", None))
        await until(lambda: len(here.cache) == 0, 1.0)
        loaded = await here.load(s.id)
        assert loaded is not None and loaded.access_token == "at-new"
        await there.delete(s.id)
        await until(lambda: len(here.cache) == 0, 1.0)
        assert await here.load(s.id) is None


async def test_a_killed_notices_connection_flushes_the_cache_until_it_is_back(redis_url, redis_server):
    async with cached_store(redis_url) as store:
        s = session(Clock())
        await store.create(s)
        assert await store.load(s.id) is not None and len(store.cache) == 1
        # Delete the record behind the BFF's back (no notice), then cut the subscription:
        # from then on the copy must not be trusted.
        redis_server.cli("DEL", f"bff:s:{s.id}")
        redis_server.cli("CLIENT", "KILL", "TYPE", "pubsub")
        await until(lambda: len(store.cache) == 0 and not store.notices.live, 5.0)
        assert await store.load(s.id) is None
        await until(lambda: store.notices.live, 10.0)  # resubscribed: caching resumes
        again = session(Clock())
        await store.create(again)
        assert await store.load(again.id) is not None and len(store.cache) == 1


async def test_a_redis_restart_flushes_the_cache():
    server = RedisServer()
    server.start()
    try:
        async with cached_store(server.url) as store:
            s = session(Clock())
            await store.create(s)
            assert await store.load(s.id) is not None and len(store.cache) == 1
            server.stop()
            server.start()  # no persistence: every session is gone with it
            await until(lambda: len(store.cache) == 0, 5.0)
            assert await store.load(s.id) is None
    finally:
        server.stop()
