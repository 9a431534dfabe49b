"""The API proxy against a real upstream process, real Redis and the test provider."""

from __future__ import annotations

import asyncio
import json

import pytest


async def test_proxied_call_carries_a_bearer_token_and_not_the_browser_cookie(bff, upstream):
    _, browser = bff
    await browser.login()
    r = await browser.get("/api/echo/x?a=1", csrf=True, headers={"authorization": "Bearer evil"})
    assert r.status_code == 200, r.text
    echo = r.json()
    assert echo["path"] == "/api/echo/x"
    assert echo["query"] == "a=1"
    auth = echo["headers"]["authorization"]
    assert len(auth) == 1 and auth[0].startswith("Bearer eyJ") and auth[0] != "Bearer evil"
    assert "cookie" not in echo["headers"]
    assert "x-csrf" not in echo["headers"]
    assert echo["headers"]["x-forwarded-for"] == ["127.0.0.1"]
    assert echo["headers"]["x-forwarded-proto"] == ["http"]
    assert echo["headers"]["x-forwarded-host"] == ["localhost:8080"]


async def test_proxied_call_without_csrf_header_never_reaches_the_upstream(bff):
    _, browser = bff
    await browser.login()
    r = await browser.get("/api/echo")
    assert r.status_code == 403
    assert r.json()["error"] == "csrf_rejected"


async def test_proxied_call_without_session_is_401(bff):
    _, browser = bff
    r = await browser.get("/api/echo", csrf=True)
    assert r.status_code == 401
    assert r.json()["error"] == "not_authenticated"


async def test_expired_access_token_is_refreshed_once_for_fifty_concurrent_calls(make_bff, idp):
    idp.configure(access_ttl=30)
    app, browser = await make_bff(BFF_TOKEN_REFRESH_SKEW="60")
    await browser.login()
    before = idp.stats()["stats"]["refresh_token"]
    results = await asyncio.gather(*[browser.get("/api/echo", csrf=True) for _ in range(50)])
    assert [r.status_code for r in results] == [200] * 50
    assert idp.stats()["stats"]["refresh_token"] - before == 1
    tokens = {r.json()["headers"]["authorization"][0] for r in results}
    assert len(tokens) == 1
