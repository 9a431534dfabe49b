"""The Redis store's auto-pipelining against a real redis-server: batching, a flushed
script cache, an error reply for one command, Redis going away mid-batch."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
import redis.asyncio as aioredis

from bff.errors import StoreUnavailable
from bff.session import redis_store
from bff.session.crypto import RecordCipher
from bff.session.models import Session, new_session_id
from bff.session.redis_store import RedisStore, connect
from tests.support import RedisServer


def _store(url: str) -> RedisStore:
    return RedisStore(connect(url), RecordCipher.from_settings((), ("k" * 32,)), 600)


def _session(sub: str) -> Session:
    now = int(time.time())
    return Session(
        id=new_session_id(),
        sub=sub,
        id_token="eyJ.id.token",
        access_token="at-" + sub,
        access_expires_at=now + 300,
        refresh_token="rt-" + sub,
        created_at=now,
        expires_at=now + 3600,
        last_seen=now,
    )


async def _clients(url: str) -> int:
    admin = aioredis.Redis.from_url(url)
    try:
        return len(await admin.client_list()) - 1  # not counting this one
    finally:
        await admin.aclose()


async def test_concurrent_reads_share_one_connection(redis_url):
    """200 reads in one turn of the event loop: one pipeline, so one connection, not 200."""
    store = _store(redis_url)
    try:
        sessions = [_session(f"u{i}") for i in range(200)]
        for s in sessions:
            await store.create(s)
        before = await _clients(redis_url)
        loaded = await asyncio.gather(*(store.load(s.id) for s in sessions))
        assert [x.id if x else None for x in loaded] == [s.id for s in sessions]
        assert await _clients(redis_url) <= max(before, 1) + 1
    finally:
        await store.close()


async def test_reads_survive_a_flushed_script_cache(redis_url):
    store = _store(redis_url)
    try:
        s = _session("alice")
        await store.create(s)
        assert await store.load(s.id) is not None
        admin = aioredis.Redis.from_url(redis_url)
        await admin.script_flush()
        await admin.aclose()
        loaded = await asyncio.gather(*(store.load(s.id) for _ in range(5)))
        assert all(x is not None and x.id == s.id for x in loaded)
    finally:
        await store.close()


async def test_an_error_reply_fails_only_its_own_read(redis_url):
    store = _store(redis_url)
    try:
        good = _session("alice")
        await store.create(good)
        bad = new_session_id()
        admin = aioredis.Redis.from_url(redis_url)
        await admin.rpush(f"bff:s:{bad}", "not a string")  # WRONGTYPE for GET
        await admin.aclose()
        results = await asyncio.gather(
            store.load(good.id), store.load(bad), store.load(good.id), return_exceptions=True
        )
        assert isinstance(results[1], StoreUnavailable)
        assert isinstance(results[0], Session) and isinstance(results[2], Session)
    finally:
        await store.close()


async def test_redis_gone_fails_every_read_in_the_batch_then_recovers():
    server = RedisServer()
    server.start()
    store = _store(server.url)
    try:
        s = _session("alice")
        await store.create(s)
        server.stop()
        results = await asyncio.gather(*(store.load(s.id) for _ in range(20)), return_exceptions=True)
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        server.start()  # same port; the data is gone (no persistence in this server)
        await store.create(s)
        assert (await store.load(s.id)) is not None
    finally:
        await store.close()
        server.stop()


@pytest.mark.parametrize("touch", [True, False])
async def test_a_reader_that_goes_away_does_not_block_the_batch(redis_url, touch):
    store = _store(redis_url)
    try:
        s = _session("alice")
        await store.create(s)
        for _ in range(20):
            tasks = [asyncio.create_task(store.load(s.id, touch=touch)) for _ in range(8)]
            await asyncio.sleep(0)
            tasks[0].cancel()
            done = await asyncio.gather(*tasks[1:])
            assert all(x is not None and x.id == s.id for x in done)
    finally:
        await store.close()


async def test_a_hung_redis_fails_the_batch_in_time_then_recovers(monkeypatch):
    """Redis stopped (SIGSTOP, so connections stay open and nothing answers): the batched
    reads fail with StoreUnavailable after the operation limit, not never; after SIGCONT
    the same store reads again."""
    monkeypatch.setattr(redis_store, "OPERATION_TIMEOUT", 0.5)
    server = RedisServer()
    server.start()
    store = _store(server.url)
    try:
        s = _session("alice")
        await store.create(s)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            results = await asyncio.gather(*(store.load(s.id) for _ in range(20)), return_exceptions=True)
            assert all(isinstance(r, StoreUnavailable) for r in results), results
            assert time.monotonic() - started < 5
        finally:
            server.proc.send_signal(signal.SIGCONT)
        loaded = await asyncio.gather(*(store.load(s.id) for _ in range(20)))
        assert all(x is not None and x.id == s.id for x in loaded)
    finally:
        await store.close()
        server.stop()
