"""Test scenarios run against more than one store or deployment (one Redis, Sentinel,
Cluster): written once here, called from each suite with its own fixtures."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.support import BffProc, Browser, ProviderProc


async def fifty_calls_on_a_due_token_share_one_refresh(idp: ProviderProc, procs: list[BffProc]) -> None:
    """50 concurrent API calls spread over the processes on a due access token: exactly one
    token request at the IdP, all answered with the one new token, which is then stored."""
    idp.configure(access_ttl=0, refresh_access_ttl=3600)  # the login's token is due at once
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as client:
        browser = Browser(client, procs[0].url)
        await browser.login()
        before = idp.stats()["stats"]["refresh_token"]
        headers = {"x-csrf": "1", **browser._cookie_header()}
        calls = [client.get(f"{procs[i % len(procs)].url}/api/echo", headers=headers) for i in range(50)]
        results = await asyncio.gather(*calls)
        again = [await client.get(f"{p.url}/api/echo", headers=headers) for p in procs]
        await browser.aclose()
    assert [r.status_code for r in results] == [200] * 50, [r.text for r in results if r.status_code != 200]
    assert idp.stats()["stats"]["refresh_token"] - before == 1
    assert len({r.json()["headers"]["authorization"][0] for r in [*results, *again]}) == 1


async def alice_twice_and_bob(make_bff: Any, **overrides: str) -> tuple[Any, Browser, Browser, Browser]:
    """One app, three logged-in browsers: alice (two sessions) and bob."""
    app, alice1 = await make_bff(**overrides)
    alice2 = await make_bff.new_browser(app)
    bob = await make_bff.new_browser(app)
    await alice1.login("alice")
    await alice2.login("alice")
    await bob.login("bob")
    return app, alice1, alice2, bob


async def idp_sid(browser: Browser) -> str:
    r = await browser.get("/bff/user", csrf=True)
    assert r.status_code == 200, r.text
    return str(r.json()["claims"]["sid"])


async def post_logout_token(browser: Browser, token: str) -> httpx.Response:
    return await browser.request("POST", "/bff/backchannel-logout", data={"logout_token": token})
