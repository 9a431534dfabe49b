"""The BFF on Redis Sentinel and on Redis Cluster: single-flight refresh across processes,
back-channel logout, the user's sessions and the session limit.

Every test runs twice (``ha_url``): with ``BFF_REDIS_URL=redis+sentinel://...`` and with
``BFF_REDIS_URL=redis+cluster://...``, against the real set-ups of tests/cluster/conftest.py.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.support import BffProc, Browser, bff_env, free_port

pytestmark = pytest.mark.cluster


@pytest.fixture
def two_bffs(idp, ha_url, upstream, tmp_path):
    """Two ``python -m bff`` processes sharing the Sentinel or Cluster set-up."""
    port_a = free_port()
    public = f"http://127.0.0.1:{port_a}"
    procs = []
    try:
        for i, port in enumerate((port_a, free_port())):
            env = bff_env(
                idp,
                ha_url,
                public,
                BFF_API_ROUTES=f"/api={upstream.url}",
                BFF_PORT=str(port),
                BFF_TOKEN_REFRESH_SKEW="60",
            )
            proc = BffProc(env, log=tmp_path / f"bff-{i}.log")
            procs.append(proc)
            proc.start()
        yield procs
    finally:
        for p in procs:
            p.stop()


async def test_two_processes_share_one_refresh_for_fifty_concurrent_calls(idp, two_bffs):
    # The login's access token is due at once (expires_in 0); the refreshed one is not.
    idp.configure(access_ttl=0, refresh_access_ttl=3600)
    a, b = two_bffs
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as client:
        browser = Browser(client, a.url)
        await browser.login()
        before = idp.stats()["stats"]["refresh_token"]
        headers = {"x-csrf": "1", **browser._cookie_header()}
        calls = [client.get(f"{(a if i % 2 else b).url}/api/echo", headers=headers) for i in range(50)]
        results = await asyncio.gather(*calls)
        after = idp.stats()["stats"]["refresh_token"]
        # The refreshed token was stored: later calls, on either process, use it unchanged.
        again = [await client.get(f"{p.url}/api/echo", headers=headers) for p in (a, b)]
        await browser.aclose()
    assert [r.status_code for r in results] == [200] * 50, [r.text for r in results if r.status_code != 200]
    assert after - before == 1
    tokens = {r.json()["headers"]["authorization"][0] for r in [*results, *again]}
    assert len(tokens) == 1
    assert idp.stats()["stats"]["refresh_token"] - before == 1


async def _sid(browser: Browser) -> str:
    r = await browser.get("/bff/user", csrf=True)
    assert r.status_code == 200, r.text
    return str(r.json()["claims"]["sid"])


async def _logout(browser: Browser, token: str) -> httpx.Response:
    return await browser.request("POST", "/bff/backchannel-logout", data={"logout_token": token})


async def test_backchannel_logout_by_sid_ends_exactly_that_session(make_bff, idp, ha_url):
    app, alice1 = await make_bff(BFF_REDIS_URL=ha_url)
    alice2 = await make_bff.new_browser(app)
    bob = await make_bff.new_browser(app)
    await alice1.login("alice")
    await alice2.login("alice")
    await bob.login("bob")
    r = await _logout(bob, idp.logout_token(user="alice", sid=await _sid(alice1)))
    assert r.status_code == 200, r.text
    assert (await alice1.get("/bff/user", csrf=True)).status_code == 401
    assert (await alice1.get("/api/echo", csrf=True)).status_code == 401
    assert (await alice2.get("/bff/user", csrf=True)).status_code == 200
    assert (await bob.get("/bff/user", csrf=True)).status_code == 200
    assert len((await alice2.get("/bff/sessions", csrf=True)).json()["sessions"]) == 1


async def test_backchannel_logout_by_sub_ends_every_session_of_that_user(make_bff, idp, ha_url):
    app, alice1 = await make_bff(BFF_REDIS_URL=ha_url)
    alice2 = await make_bff.new_browser(app)
    bob = await make_bff.new_browser(app)
    await alice1.login("alice")
    await alice2.login("alice")
    await bob.login("bob")
    token = idp.logout_token(user="alice")
    assert (await _logout(bob, token)).status_code == 200
    assert (await alice1.get("/bff/user", csrf=True)).status_code == 401
    assert (await alice2.get("/bff/user", csrf=True)).status_code == 401
    assert (await bob.get("/bff/user", csrf=True)).status_code == 200
    # The logout token's jti is remembered in the store: a replay is refused.
    await alice1.login("alice")
    r = await _logout(bob, token)
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
