"""One suite, every session store: the memory store and Redis (single server here;
tests/cluster runs it against Sentinel and Cluster). Time is an injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from bff.session.crypto import RecordCipher
from bff.session.models import LoginTransaction, Session, new_session_id
from bff.session.redis_store import RedisStore, connect, connect_listener
from bff.session.store import MemoryStore, SessionStore

IDLE = 60
ABSOLUTE = 100


class Clock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_store(url: str | None, clock: Clock, cached: bool = False) -> SessionStore:
    """The memory store for ``None``, else a RedisStore on that BFF_REDIS_URL; ``cached``:
    with its session cache (a TTL of a tenth of the idle timeout, as the app sets it) and the
    notices subscription that keeps the cache correct."""
    if url is None:
        return MemoryStore(IDLE, clock)
    cipher = RecordCipher.from_settings((), ("k" * 32,))
    if not cached:
        return RedisStore(connect(url), cipher, IDLE, clock)
    return RedisStore(connect(url), cipher, IDLE, clock, listener=connect_listener(url), cache_ttl=IDLE / 10)


@pytest.fixture(params=["memory", "redis", "redis-cached"])
def store_url(request) -> str | None:
    """Which store the suite runs against; tests/cluster overrides it with Sentinel and Cluster."""
    if request.param == "memory":
        return None
    url = request.getfixturevalue("redis_url")
    return url + "#cached" if request.param == "redis-cached" else url


@pytest.fixture
async def store_and_clock(store_url):
    clock = Clock()
    cached = bool(store_url and store_url.endswith("#cached"))
    store = make_store(store_url.removesuffix("#cached") if store_url else None, clock, cached)
    notices = asyncio.create_task(store.run_notices()) if cached else None
    if cached:
        async with asyncio.timeout(5):
            while not store.notices.live:
                await asyncio.sleep(0.01)
    yield store, clock
    if notices is not None:
        notices.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await notices
    await store.close()


def session(clock: Clock, sub: str = "u1", idp_sid: str | None = "s1", **kw) -> Session:
    now = int(clock())
    return Session(
        id=new_session_id(),
        sub=sub,
        id_token="eyJ.id.token",
        access_token="at-" + sub,
        access_expires_at=now + 300,
        refresh_token="rt-" + sub,
        created_at=now,
        expires_at=now + ABSOLUTE,
        last_seen=now,
        idp_sid=idp_sid,
        user_agent="UA",
        ip="10.0.0.1",
        **kw,
    )


async def test_create_then_load_round_trips(store_and_clock):
    store, clock = store_and_clock
    s = session(clock)
    await store.create(s)
    loaded = await store.load(s.id)
    assert loaded is not None
    for field in (
        "sub",
        "id_token",
        "access_token",
        "access_expires_at",
        "refresh_token",
        "created_at",
        "expires_at",
        "idp_sid",
        "user_agent",
        "ip",
    ):
        assert getattr(loaded, field) == getattr(s, field), field
    assert await store.load("nope") is None


async def test_idle_timeout_slides_on_use(store_and_clock):
    store, clock = store_and_clock
    s = session(clock)
    await store.create(s)
    clock.advance(40)
    assert await store.load(s.id) is not None  # used: slides
    clock.advance(40)
    assert await store.load(s.id) is not None  # 80 s after creation: alive only because it slid
    clock.advance(IDLE + 1)
    assert await store.load(s.id) is None


async def test_absolute_timeout_never_moves(store_and_clock):
    store, clock = store_and_clock
    s = session(clock)
    await store.create(s)
    for _ in range(3):
        clock.advance(30)
        assert await store.load(s.id) is not None
    clock.advance(11)  # 101 s after creation, used 11 s ago
    assert await store.load(s.id) is None


async def test_load_without_touch_does_not_slide(store_and_clock):
    store, clock = store_and_clock
    s = session(clock)
    await store.create(s)
    clock.advance(IDLE - 5)
    assert await store.load(s.id, touch=False) is not None
    clock.advance(10)
    assert await store.load(s.id) is None


async def test_update_tokens_keeps_timing_and_never_resurrects(store_and_clock):
    store, clock = store_and_clock
    s = session(clock)
    await store.create(s)
    updated = s.with_tokens("at-2", s.access_expires_at + 300, "rt-2", None)
    assert await store.update_tokens(updated)
    loaded = await store.load(s.id)
    assert (loaded.access_token, loaded.refresh_token, loaded.expires_at) == ("at-2", "rt-2", s.expires_at)
    await store.delete(s.id)
    assert not await store.update_tokens(updated)
    assert await store.load(s.id) is None


async def test_delete_drops_the_session_from_every_index(store_and_clock):
    store, clock = store_and_clock
    a, b = session(clock), session(clock, idp_sid="s2")
    await store.create(a)
    clock.advance(0.001)  # "oldest first" needs an order: a frozen clock would tie them
    await store.create(b)
    assert [x.id for x in await store.sessions_of("u1")] == [a.id, b.id]
    assert [x.id for x in await store.sessions_by_idp_sid("s1")] == [a.id]
    deleted = await store.delete(a.id)
    assert deleted is not None and deleted.id == a.id
    assert await store.delete(a.id) is None
    assert [x.id for x in await store.sessions_of("u1")] == [b.id]
    assert await store.sessions_by_idp_sid("s1") == []


async def test_indexes_never_return_expired_sessions(store_and_clock):
    store, clock = store_and_clock
    old = session(clock)
    await store.create(old)
    clock.advance(IDLE - 1)
    fresh = session(clock)
    await store.create(fresh)
    clock.advance(5)  # old is idle-expired now, fresh is not
    assert [x.id for x in await store.sessions_of("u1")] == [fresh.id]
    assert [x.id for x in await store.sessions_by_idp_sid("s1")] == [fresh.id]


async def test_session_limit_ends_the_oldest(store_and_clock):
    store, clock = store_and_clock
    made = []
    for _ in range(3):
        s = session(clock)
        ended = await store.create(s, max_per_user=2)
        made.append(s)
        clock.advance(0.001)
    assert [x.id for x in ended] == [made[0].id]
    assert [x.id for x in await store.sessions_of("u1")] == [made[1].id, made[2].id]
    other = session(clock, sub="u2")
    assert await store.create(other, max_per_user=2) == []


async def test_login_transactions_are_single_use_limited_and_expire(store_and_clock):
    store, clock = store_and_clock
    txs = [LoginTransaction(f"state{i}", "n", "v", "/", "browser-1", int(clock())) for i in range(3)]
    assert await store.save_transaction(txs[0], 600, 2)
    assert await store.save_transaction(txs[1], 600, 2)
    assert not await store.save_transaction(txs[2], 600, 2)
    assert await store.save_transaction(LoginTransaction("other", "n", "v", "/", "browser-2", 0), 600, 2)
    taken = await store.take_transaction("state0")
    assert taken == txs[0]
    assert await store.take_transaction("state0") is None
    assert await store.save_transaction(txs[2], 600, 2)  # a slot was freed


async def test_jti_is_remembered(store_and_clock):
    store, _ = store_and_clock
    assert await store.remember_jti("j1", 60)
    assert not await store.remember_jti("j1", 60)
    assert await store.remember_jti("j2", 60)


async def test_lock_is_exclusive_until_released(store_and_clock):
    store, _ = store_and_clock
    first, second = store.lock("x", 5), store.lock("x", 5)
    assert await first.acquire(1)
    assert not await second.acquire(0.2)
    waiter = asyncio.create_task(second.acquire(2))
    await asyncio.sleep(0.1)
    await first.release()
    assert await waiter
    await second.extend()
    await second.release()


async def test_concurrent_loads_each_get_their_own_session(store_and_clock):
    """Reads issued together (on Redis: one auto-pipeline) answer each caller with its own
    session, slid or not as asked, and a read of a missing session with None."""
    store, clock = store_and_clock
    sessions = [session(clock, sub=f"user{i}", idp_sid=None) for i in range(60)]
    for s in sessions:
        await store.create(s)
    clock.advance(10)
    ids = [s.id for s in sessions] + [new_session_id()]
    touches = [i % 3 != 0 for i in range(len(ids))]
    loaded = await asyncio.gather(*(store.load(sid, touch=t) for sid, t in zip(ids, touches, strict=True)))
    assert loaded[-1] is None
    for s, got, touched in zip(sessions, loaded, touches, strict=False):
        assert got is not None and got.id == s.id and got.sub == s.sub and got.access_token == s.access_token
        assert got.last_seen == (int(clock()) if touched else s.last_seen)
    clock.advance(IDLE - 5)  # only the slid ones are still within their idle timeout
    again = await asyncio.gather(*(store.load(s.id) for s in sessions))
    for got, touched in zip(again, touches, strict=False):
        assert (got is not None) == touched


async def test_a_cancelled_load_leaves_the_others_alone(store_and_clock):
    store, clock = store_and_clock
    sessions = [session(clock, sub=f"user{i}", idp_sid=None) for i in range(10)]
    for s in sessions:
        await store.create(s)
    tasks = [asyncio.create_task(store.load(s.id)) for s in sessions]
    tasks[4].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[4], asyncio.CancelledError)
    for i, (s, got) in enumerate(zip(sessions, results, strict=True)):
        if i != 4:
            assert isinstance(got, Session) and got.id == s.id
    assert await store.load(sessions[4].id) is not None


async def test_shared_values_are_kept_apart_by_name(store_and_clock):
    store, _ = store_and_clock
    assert await store.load_shared("client-token:a") is None
    await store.save_shared("client-token:a", b'["tok-a", 1, 2, "Bearer"]', 60)
    await store.save_shared("client-token:b", b"value-b", 60)
    assert await store.load_shared("client-token:a") == b'["tok-a", 1, 2, "Bearer"]'
    assert await store.load_shared("client-token:b") == b"value-b"


async def test_route_tokens_are_kept_with_the_session_record(store_and_clock):
    from bff.session.models import RouteToken

    store, clock = store_and_clock
    s = session(clock)
    await store.create(s)
    token = RouteToken("exchanged-at", int(clock()) + 60, 60)
    assert await store.update_tokens(s.with_route_token("k1", token, int(clock())))
    loaded = await store.load(s.id, touch=False)
    assert loaded is not None and loaded.route_tokens == {"k1": token}
    refreshed = loaded.with_tokens("new-at", int(clock()) + 300, "new-rt", None, 300)
    assert refreshed.route_tokens == {"k1": token}  # a refresh keeps them
    await store.delete(s.id)
    assert await store.load(s.id) is None
