"""The Sentinel and Cluster forms of BFF_REDIS_URL: what connect() makes of them, and that
they reach real password-protected set-ups (and fail fast, as a 503, when a password is
wrong or nothing answers).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from bff.errors import StoreUnavailable
from bff.session.crypto import RecordCipher
from bff.session.models import Session, new_session_id
from bff.session.redis_store import DEFAULT_TIMEOUT, MAX_CONNECTIONS, RedisStore, connect
from tests.cluster.redis_ha import cli
from tests.support import free_port

pytestmark = pytest.mark.cluster


def _store(url: str) -> RedisStore:
    return RedisStore(connect(url), RecordCipher.from_settings((), ("k" * 32,)), 60)


def _session(sub: str = "u1") -> Session:
    now = int(time.time())
    return Session(
        id=new_session_id(),
        sub=sub,
        id_token="eyJ.id.token",
        access_token="at",
        access_expires_at=now + 300,
        refresh_token="rt",
        created_at=now,
        expires_at=now + 100,
        last_seen=now,
        idp_sid="s1",
        user_agent="UA",
        ip="10.0.0.1",
    )


def _sentinel_hosts(client) -> list[tuple[str, int, str | None]]:
    return [
        (kw["host"], kw["port"], kw.get("password"))
        for kw in (
            s.connection_pool.connection_kwargs for s in client.connection_pool.sentinel_manager.sentinels
        )
    ]


def test_sentinel_url_hosts_default_port_ipv6_service_db_and_passwords():
    client = connect("redis+sentinel://:p%40ss@s1:26380,s2,[::1]:26381/cache-svc/3?sentinel_password=sp")
    pool = client.connection_pool
    assert _sentinel_hosts(client) == [("s1", 26380, "sp"), ("s2", 26379, "sp"), ("::1", 26381, "sp")]
    assert pool.service_name == "cache-svc"
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (3, "p@ss")
    assert pool.connection_kwargs.get("username") is None
    # A pool that waits for a free connection, like the single-server one.
    assert (pool.max_connections, pool.timeout) == (MAX_CONNECTIONS, DEFAULT_TIMEOUT)


def test_sentinel_url_with_user_and_the_defaults():
    client = connect("redis+sentinel://app:pw@s1?sentinel_username=watch&sentinel_password=sp")
    pool = client.connection_pool
    assert pool.service_name == "mymaster"
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["username"]) == (0, "app")
    sentinel = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
    assert (sentinel["host"], sentinel["port"], sentinel["username"], sentinel["password"]) == (
        "s1",
        26379,
        "watch",
        "sp",
    )


def test_cluster_url_hosts_default_port_ipv6_user_password_and_tls():
    client = connect("rediss+cluster://app:p%40ss@n1:7000,n2,[::1]:7001")
    nodes = client.nodes_manager.startup_nodes
    assert sorted((n.host, n.port) for n in nodes.values()) == [("::1", 7001), ("n1", 7000), ("n2", 6379)]
    kwargs = client.nodes_manager.connection_kwargs
    assert (kwargs["username"], kwargs["password"]) == ("app", "p@ss")
    assert kwargs["connection_class"].__name__ == "SSLConnection"
    assert connect("redis+cluster://n1").nodes_manager.connection_kwargs.get("password") is None


@pytest.mark.parametrize(
    "url,message",
    [
        ("redis+sentinel://s1:port/mymaster", "invalid port"),
        ("redis+sentinel://s1/mymaster/zero", "invalid database"),
        ("redis+cluster://", "names no host"),
        ("redis+cluster://n1:7000,n2:x", "invalid port"),
        ("memcached://x", "unsupported"),
    ],
)
def test_a_bad_url_is_refused_with_a_clear_message(url, message):
    with pytest.raises(ValueError, match=message):
        connect(url)


async def _round_trip(url: str) -> None:
    store = _store(url)
    try:
        s = _session()
        await store.create(s)
        loaded = await store.load(s.id)
        assert loaded is not None and loaded.sub == "u1"
        await store.ping()
        assert await store.delete(s.id) is not None
    finally:
        await store.close()


async def _fails_fast(url: str) -> None:
    store = _store(url)
    start = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable):
            await store.load("x")
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.close()
    assert time.monotonic() - start < 3


async def test_sentinel_with_passwords_for_the_nodes_and_for_the_sentinels(sentinel_factory):
    setup = await asyncio.to_thread(sentinel_factory, password="node-pw", sentinel_password="sentinel-pw")
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in setup.sentinels)
    url = f"redis+sentinel://:node-pw@{hosts}/mymaster/2?sentinel_password=sentinel-pw"
    await _round_trip(url)
    store = _store(url)
    await store.create(_session("in-db-2"))
    await store.close()
    assert cli(setup.master_port(), "-n", "2", "DBSIZE", password="node-pw").strip() != "0"
    assert cli(setup.master_port(), "-n", "0", "DBSIZE", password="node-pw").strip() == "0"
    await _fails_fast(f"redis+sentinel://:wrong@{hosts}/mymaster/2?sentinel_password=sentinel-pw")
    await _fails_fast(f"redis+sentinel://:node-pw@{hosts}/mymaster/2")  # no sentinel password
    await _fails_fast(f"redis+sentinel://:node-pw@{hosts}/other-service?sentinel_password=sentinel-pw")


async def test_cluster_with_a_password(cluster_factory):
    setup = await asyncio.to_thread(cluster_factory, password="cluster-pw")
    assert setup.url.startswith("redis+cluster://:cluster-pw@")
    await _round_trip(setup.url)
    await _fails_fast(setup.url.replace("cluster-pw", "wrong"))


async def test_nothing_listening_fails_fast():
    ports = ",".join(f"127.0.0.1:{free_port()}" for _ in range(3))
    await _fails_fast(f"redis+sentinel://{ports}/mymaster")
    await _fails_fast(f"redis+cluster://{ports}")


async def test_a_burst_of_new_connections_keeps_every_sentinel_in_the_list(sentinel_url):
    """redis-py's Sentinel reorders its list of sentinels across an await: concurrent master
    discoveries (one per new connection) could duplicate one sentinel and drop another."""
    store = _store(sentinel_url)
    try:
        before = sorted(_sentinel_hosts(store.r))
        await asyncio.gather(*(store.load("x") for _ in range(300)))
        assert sorted(_sentinel_hosts(store.r)) == before
        assert len(set(before)) == 3
    finally:
        await store.close()
