"""Several BFF processes on one Redis: one refresh per session, one view of sessions."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.support import BffProc, Browser, bff_env, free_port


@pytest.fixture
def two_bffs(idp, redis_url, upstream, tmp_path):
    port_a = free_port()
    public = f"http://127.0.0.1:{port_a}"
    procs = []
    for i, port in enumerate((port_a, free_port())):
        env = bff_env(
            idp,
            redis_url,
            public,
            BFF_API_ROUTES=f"/api={upstream.url}",
            BFF_PORT=str(port),
            BFF_TOKEN_REFRESH_SKEW="60",
            BFF_MAX_SESSIONS_PER_USER="3",
        )
        proc = BffProc(env, log=tmp_path / f"bff-{i}.log")
        proc.start()
        procs.append(proc)
    yield procs
    for p in procs:
        p.stop()


async def test_two_processes_share_one_refresh_for_fifty_concurrent_calls(idp, two_bffs):
    # The login's access token is due at once (expires_in 0); refreshed ones are not.
    idp.configure(access_ttl=0, refresh_access_ttl=3600)
    a, b = two_bffs
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as client:
        browser = Browser(client, a.url)
        await browser.login()
        before = idp.stats()["stats"]["refresh_token"]
        headers = {"x-csrf": "1", **browser._cookie_header()}
        calls = [client.get(f"{(a if i % 2 else b).url}/api/echo", headers=headers) for i in range(50)]
        results = await asyncio.gather(*calls)
        await browser.aclose()
    assert [r.status_code for r in results] == [200] * 50
    assert idp.stats()["stats"]["refresh_token"] - before == 1
    assert len({r.json()["headers"]["authorization"][0] for r in results}) == 1


async def test_sessions_are_listed_and_ended_across_processes(two_bffs):
    a, b = two_bffs
    async with httpx.AsyncClient(timeout=60) as ca, httpx.AsyncClient(timeout=60) as cb:
        on_a, on_b = Browser(ca, a.url), Browser(cb, a.url)
        await on_a.login("alice")
        await on_b.login("alice")
        on_b.public_url = b.url  # this browser now talks to the other process
        listed = (await on_b.get("/bff/sessions", csrf=True)).json()["sessions"]
        assert len(listed) == 2
        other = next(s for s in listed if not s["current"])
        assert (await on_b.request("DELETE", f"/bff/sessions/{other['id']}", csrf=True)).status_code == 204
        assert (await on_a.get("/bff/user", csrf=True)).status_code == 401
        assert (await on_b.get("/bff/user", csrf=True)).status_code == 200
        # The limit (3) holds across processes too.
        extra = [Browser(ca, a.url if i % 2 else b.url) for i in range(3)]
        for br in extra:
            br.public_url = a.url
            await br.login("alice")
        assert (await on_b.get("/bff/user", csrf=True)).status_code == 401
        assert len((await extra[0].get("/bff/sessions", csrf=True)).json()["sessions"]) == 3
        for br in [on_a, on_b, *extra]:
            await br.aclose()
