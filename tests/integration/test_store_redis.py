"""The Redis store's auto-pipelining against a real redis-server: batching, a flushed
script cache, an error reply for one command, Redis gone or hung mid-batch."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from bff.errors import StoreUnavailable
from bff.session.models import Session, new_session_id
from bff.session.redis_store import RedisStore
from tests.contract.test_store_contract import Clock, make_store, session
from tests.support import RedisServer


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    s = make_store(redis_url, Clock())
    assert isinstance(s, RedisStore)
    yield s
    await s.close()


@pytest.fixture
async def own() -> AsyncIterator[tuple[RedisServer, RedisStore]]:
    """A redis-server of this test's own (to stop, kill or pause) and a store on it."""
    server = RedisServer()
    server.start()
    s = make_store(server.url, Clock())
    assert isinstance(s, RedisStore)
    yield server, s
    await s.close()
    server.stop()


async def _admin(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url)


async def _clients(url: str) -> int:
    admin = await _admin(url)
    try:
        return len(await admin.client_list()) - 1  # not counting this one
    finally:
        await admin.aclose()


async def _created(store: RedisStore, n: int = 1) -> list[Session]:
    sessions = [session(Clock(), sub=f"u{i}", idp_sid=None) for i in range(n)]
    for s in sessions:
        await store.create(s)
    return sessions


async def test_concurrent_reads_share_one_connection(store, redis_url):
    """200 reads in one turn of the event loop: one pipeline, so one connection, not 200."""
    sessions = await _created(store, 200)
    before = await _clients(redis_url)
    loaded = await asyncio.gather(*(store.load(s.id) for s in sessions))
    assert [x.id if x else None for x in loaded] == [s.id for s in sessions]
    assert await _clients(redis_url) <= max(before, 1) + 1


async def test_reads_survive_a_flushed_script_cache(store, redis_url):
    (s,) = await _created(store)
    assert await store.load(s.id) is not None
    admin = await _admin(redis_url)
    await admin.script_flush()
    await admin.aclose()
    loaded = await asyncio.gather(*(store.load(s.id) for _ in range(5)))
    assert all(x is not None and x.id == s.id for x in loaded)


async def test_an_error_reply_fails_only_its_own_read(store, redis_url):
    (good,) = await _created(store)
    bad = new_session_id()
    admin = await _admin(redis_url)
    await admin.rpush(f"bff:s:{bad}", "not a string")  # WRONGTYPE for GET
    await admin.aclose()
    results = await asyncio.gather(
        store.load(good.id), store.load(bad), store.load(good.id), return_exceptions=True
    )
    assert isinstance(results[1], StoreUnavailable)
    assert isinstance(results[0], Session) and isinstance(results[2], Session)


async def test_redis_gone_fails_every_read_in_the_batch_then_recovers(own):
    server, store = own
    (s,) = await _created(store)
    server.stop()
    results = await asyncio.gather(*(store.load(s.id) for _ in range(20)), return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    server.start()  # same port; the data is gone (no persistence in this server)
    await store.create(s)
    assert (await store.load(s.id)) is not None


async def test_a_hung_redis_fails_the_batch_in_time_then_recovers(own):
    """Redis stopped (SIGSTOP, so connections stay open and nothing answers): the batched
    reads fail with StoreUnavailable after the operation limit, not never; after SIGCONT
    the same store reads again."""
    server, store = own
    store.timeout = 0.5
    (s,) = await _created(store)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        results = await asyncio.gather(*(store.load(s.id) for _ in range(20)), return_exceptions=True)
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        assert time.monotonic() - started < 0.5 + 0.5
    finally:
        server.proc.send_signal(signal.SIGCONT)
    loaded = await asyncio.gather(*(store.load(s.id) for _ in range(20)))
    assert all(x is not None and x.id == s.id for x in loaded)


@pytest.mark.parametrize("touch", [True, False])
async def test_a_reader_that_goes_away_does_not_block_the_batch(store, touch):
    (s,) = await _created(store)
    for _ in range(20):
        tasks = [asyncio.create_task(store.load(s.id, touch=touch)) for _ in range(8)]
        await asyncio.sleep(0)
        tasks[0].cancel()
        done = await asyncio.gather(*tasks[1:])
        assert all(x is not None and x.id == s.id for x in done)
