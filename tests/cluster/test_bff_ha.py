"""The BFF on Redis Sentinel and on Redis Cluster: single-flight refresh across processes,
back-channel logout, the user's sessions and the session limit.

Every test runs twice (``ha_url``): with ``BFF_REDIS_URL=redis+sentinel://...`` and with
``BFF_REDIS_URL=redis+cluster://...``, against the real set-ups of tests/cluster/conftest.py.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.scenarios import (
    alice_twice_and_bob,
    fifty_calls_on_a_due_token_share_one_refresh,
    idp_sid,
    post_logout_token,
)
from tests.support import bff_processes

pytestmark = pytest.mark.cluster


@pytest.fixture
def two_bffs(idp, ha_url, upstream, tmp_path):
    """Two ``python -m bff`` processes sharing the Sentinel or Cluster set-up."""
    with bff_processes(idp, ha_url, upstream, tmp_path, BFF_TOKEN_REFRESH_SKEW="60") as procs:
        yield procs


async def test_two_processes_share_one_refresh_for_fifty_concurrent_calls(idp, two_bffs):
    await fifty_calls_on_a_due_token_share_one_refresh(idp, two_bffs)


async def test_backchannel_logout_by_sid_ends_exactly_that_session(make_bff, idp, ha_url):
    _, alice1, alice2, bob = await alice_twice_and_bob(make_bff, BFF_REDIS_URL=ha_url)
    r = await post_logout_token(bob, idp.logout_token(user="alice", sid=await idp_sid(alice1)))
    assert r.status_code == 200, r.text
    assert (await alice1.get("/bff/user", csrf=True)).status_code == 401
    assert (await alice1.get("/api/echo", csrf=True)).status_code == 401
    assert (await alice2.get("/bff/user", csrf=True)).status_code == 200
    assert (await bob.get("/bff/user", csrf=True)).status_code == 200
    assert len((await alice2.get("/bff/sessions", csrf=True)).json()["sessions"]) == 1


async def test_backchannel_logout_by_sub_ends_every_session_of_that_user(make_bff, idp, ha_url):
    _, alice1, alice2, bob = await alice_twice_and_bob(make_bff, BFF_REDIS_URL=ha_url)
    token = idp.logout_token(user="alice")
    assert (await post_logout_token(bob, token)).status_code == 200
    assert (await alice1.get("/bff/user", csrf=True)).status_code == 401
    assert (await alice2.get("/bff/user", csrf=True)).status_code == 401
    assert (await bob.get("/bff/user", csrf=True)).status_code == 200
    # The logout token's jti is remembered in the store: a replay is refused.
    await alice1.login("alice")
    r = await post_logout_token(bob, token)
    assert r.status_code == 400 and "replay" in r.json()["message"]
    assert (await alice1.get("/bff/user", csrf=True)).status_code == 200


async def test_sessions_list_end_one_end_all_and_the_limit(make_bff, ha_url):
    app, laptop = await make_bff(BFF_REDIS_URL=ha_url, BFF_MAX_SESSIONS_PER_USER="3")
    phone = await make_bff.new_browser(app)
    bob = await make_bff.new_browser(app)
    await laptop.login("alice")
    await phone.login("alice")
    await bob.login("bob")
    listed = (await laptop.get("/bff/sessions", csrf=True)).json()["sessions"]
    assert len(listed) == 2 and sum(s["current"] for s in listed) == 1
    other = next(s for s in listed if not s["current"])
    # Bob can neither see nor end Alice's sessions.
    assert len((await bob.get("/bff/sessions", csrf=True)).json()["sessions"]) == 1
    assert (await bob.request("DELETE", f"/bff/sessions/{other['id']}", csrf=True)).status_code == 404
    # End one.
    assert (await laptop.request("DELETE", f"/bff/sessions/{other['id']}", csrf=True)).status_code == 204
    assert (await phone.get("/bff/user", csrf=True)).status_code == 401
    assert (await laptop.get("/bff/user", csrf=True)).status_code == 200
    # The limit (3): the fourth login ends the oldest (the laptop's).
    extra = [await make_bff.new_browser(app) for _ in range(3)]
    for br in extra:
        await br.login("alice")
    assert (await laptop.get("/bff/user", csrf=True)).status_code == 401
    listed = (await extra[0].get("/bff/sessions", csrf=True)).json()["sessions"]
    assert len(listed) == 3
    # End all.
    assert (await extra[0].request("DELETE", "/bff/sessions", csrf=True)).status_code == 204
    for br in extra:
        assert (await br.get("/bff/user", csrf=True)).status_code == 401
    assert (await bob.get("/bff/user", csrf=True)).status_code == 200
    assert (await bob.get("/api/echo", csrf=True)).status_code == 200


async def test_cluster_spreads_the_keys_over_its_masters(make_bff, cluster_url, cluster_setup):
    """The Cluster really is used as one: keys of one session live on different masters."""
    app, browser = await make_bff(BFF_REDIS_URL=cluster_url)
    for user in ("alice", "bob", "alice", "bob"):
        other = await make_bff.new_browser(app)
        await other.login(user)
    await browser.login("alice")
    assert (await browser.get("/api/echo", csrf=True)).status_code == 200
    keys = cluster_setup.keys("bff:*")
    assert sum(len(k) for k in keys.values()) >= 10
    assert sum(1 for k in keys.values() if k) >= 2, keys
    assert (await browser.get("/readyz")).status_code == 200


async def test_a_burst_beyond_the_connection_pool_waits_instead_of_failing(make_bff, ha_url):
    """300 concurrent requests of one process: more than its connections to one Redis node
    (redis-py's pools raise "Too many connections" at 100); they wait for one, all get 200."""
    _, browser = await make_bff(BFF_REDIS_URL=ha_url)
    await browser.login()
    results = await asyncio.gather(*(browser.get("/bff/user", csrf=True) for _ in range(300)))
    statuses = [r.status_code for r in results]
    assert statuses == [200] * 300, {s: statuses.count(s) for s in set(statuses)}
