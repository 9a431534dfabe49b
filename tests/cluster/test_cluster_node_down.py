"""A Redis Cluster master stops and comes back while browsers keep calling the BFF.

The Cluster has no replicas, so while one master is gone the keys it holds cannot be
read: requests that need them get a fast 503 ``session_store_unavailable`` (and once the
other masters mark the cluster failed, every request does), never a 500, a hang, a 401 or
another user's data. When the node is back (with its append-only file, so with its keys)
the same BFF answers 200 again for every session, without a restart.

With the session cache on, a session the BFF holds in memory may keep answering 200 while
its node is down (nothing can end it meanwhile: that is a write to the store), so the 503
assertions are made with the cache off, and with it on only the rest: fast, 200 or 503, never
a 401, a 500 or another user's data, and all 200 again afterwards.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.cluster.redis_ha import info_cluster

pytestmark = pytest.mark.cluster

USERS = ("alice", "bob", "alice", "bob", "alice", "bob")
FAST = 5.0


async def _round(browsers, identities) -> list[int]:
    """One /bff/user and one /api/echo per browser; checks each answer, returns the statuses."""
    statuses = []
    for browser, (sub, sid) in zip(browsers, identities, strict=True):
        for path in ("/bff/user", "/api/echo"):
            start = time.monotonic()
            r = await browser.get(path, csrf=True)
            took = time.monotonic() - start
            assert took < FAST, f"{path} took {took:.1f}s"
            assert r.status_code in (200, 503), (path, r.status_code, r.text)
            if r.status_code == 503:
                assert r.json()["error"] == "session_store_unavailable", r.text
            elif path == "/bff/user":
                assert (r.json()["sub"], r.json()["claims"]["sid"]) == (sub, sid)
            else:
                assert r.json()["headers"]["authorization"][0].startswith("Bearer ")
            statuses.append(r.status_code)
    return statuses


@pytest.mark.parametrize("cache_ttl", ["0", "30"])
async def test_a_cluster_master_down_gives_fast_503s_and_the_sessions_come_back(
    make_bff, cluster_factory, cache_ttl
):
    setup = await asyncio.to_thread(cluster_factory, node_timeout_ms=1000, persist=True)
    app, first = await make_bff(BFF_REDIS_URL=setup.url, BFF_SESSION_CACHE_TTL=cache_ttl)
    cached = cache_ttl != "0"
    browsers = [first, *[await make_bff.new_browser(app) for _ in USERS[1:]]]
    identities = []
    for browser, user in zip(browsers, USERS, strict=True):
        await browser.login(user)
        body = (await browser.get("/bff/user", csrf=True)).json()
        identities.append((body["sub"], body["claims"]["sid"]))
    assert set(await _round(browsers, identities)) == {200}

    # Stop the master that holds the most sessions: some browsers lose their store.
    held = setup.keys("bff:s:*")
    victim = next(n for n in setup.nodes if n.port == max(held, key=lambda p: len(held[p])))
    assert held[victim.port]
    victim.kill()
    statuses = await _round(browsers, identities)
    assert cached or 503 in statuses  # the sessions on the stopped node cannot be read now
    # The other masters declare the cluster failed (CLUSTERDOWN): every request that needs
    # the store is a 503.
    await asyncio.to_thread(setup.wait_state, "fail", 20)
    statuses = await _round(browsers, identities)
    assert cached or set(statuses) == {503}
    assert (await first.get("/readyz")).status_code == 503

    victim.start()
    await asyncio.to_thread(setup.wait_state, "ok", 30)
    assert info_cluster(victim.port)["cluster_state"] == "ok"
    deadline = time.monotonic() + 15
    while set(statuses := await _round(browsers, identities)) != {200} and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert set(statuses) == {200}  # every session is back, on the same BFF
    assert (await first.get("/readyz")).status_code == 200
