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
    idp.configure(access_ttl=0, refresh_access_ttl=3600)
    app, browser = await make_bff(BFF_TOKEN_REFRESH_SKEW="60")
    await browser.login()
    before = idp.stats()["stats"]["refresh_token"]
    results = await asyncio.gather(*[browser.get("/api/echo", csrf=True) for _ in range(50)])
    assert [r.status_code for r in results] == [200] * 50
    assert idp.stats()["stats"]["refresh_token"] - before == 1
    tokens = {r.json()["headers"]["authorization"][0] for r in results}
    assert len(tokens) == 1


async def test_invalid_grant_on_refresh_ends_the_session_and_gives_401(make_bff, idp, redis_server):
    idp.configure(access_ttl=0)
    _, browser = await make_bff(BFF_TOKEN_REFRESH_SKEW="60")
    await browser.login()
    idp.end_idp_session("alice")
    r = await browser.get("/api/echo", csrf=True)
    assert r.status_code == 401
    assert redis_server.cli("KEYS", "bff:s:*").split() == []
    assert (await browser.get("/bff/user", csrf=True)).status_code == 401


@pytest.mark.parametrize("failure", [{"token_status": 503}, {"token_status": 500}])
async def test_idp_failing_on_refresh_gives_503_and_keeps_the_session(make_bff, idp, failure):
    idp.configure(access_ttl=0)
    _, browser = await make_bff(BFF_TOKEN_REFRESH_SKEW="60")
    await browser.login()
    idp.configure(**failure)
    r = await browser.get("/api/echo", csrf=True)
    assert r.status_code == 503
    assert r.json()["error"] == "idp_unavailable"
    idp.configure(token_status=0)
    assert (await browser.get("/api/echo", csrf=True)).status_code == 200


async def test_idp_process_down_on_refresh_gives_503_and_keeps_the_session(make_bff, idp):
    idp.configure(access_ttl=0)
    _, browser = await make_bff(BFF_TOKEN_REFRESH_SKEW="60")
    await browser.login()
    idp.stop()
    try:
        r = await browser.get("/api/echo", csrf=True)
        assert r.status_code == 503
    finally:
        idp.start()
    assert (await browser.get("/bff/user", csrf=True)).status_code == 200


async def test_a_rotated_refresh_token_is_stored_with_the_new_access_token(make_bff, idp):
    idp.configure(access_ttl=0)
    _, browser = await make_bff(BFF_TOKEN_REFRESH_SKEW="60")
    await browser.login()
    first = (await browser.get("/api/echo", csrf=True)).json()["headers"]["authorization"][0]
    second = (await browser.get("/api/echo", csrf=True)).json()["headers"]["authorization"][0]
    assert first != second  # each call refreshed (tokens live 0 s), using the rotated refresh token
    assert idp.stats()["valid_refresh_tokens"] == 1


async def test_a_route_without_strip_keeps_the_prefix_and_one_with_strip_drops_it(make_bff, upstream):
    routes = json.dumps(
        [
            {"prefix": "/api", "upstream": upstream.url},
            {"prefix": "/v2", "upstream": upstream.url + "/base", "strip_prefix": True, "token": "none"},
        ]
    )
    _, browser = await make_bff(BFF_API_ROUTES=routes)
    r = await browser.get("/v2/items/7?q=1", csrf=True)
    assert r.status_code == 200
    assert r.json()["raw_path"] == "/base/items/7"
    assert r.json()["query"] == "q=1"
    assert "authorization" not in r.json()["headers"]


async def test_token_policy_user_optional_attaches_a_token_only_when_logged_in(make_bff, upstream):
    routes = json.dumps([{"prefix": "/api", "upstream": upstream.url, "token": "user-optional"}])
    _, browser = await make_bff(BFF_API_ROUTES=routes)
    r = await browser.get("/api/echo", csrf=True)
    assert r.status_code == 200 and "authorization" not in r.json()["headers"]
    await browser.login()
    r = await browser.get("/api/echo", csrf=True)
    assert r.json()["headers"]["authorization"][0].startswith("Bearer ")


async def test_spoofed_forwarding_headers_in_any_spelling_are_replaced(bff):
    _, browser = bff
    await browser.login()
    spoof = {
        "x-forwarded-for": "6.6.6.6",
        "x-forwarded-host": "evil.example.com",
        "x-forwarded-proto": "gopher",
        "x_forwarded_for": "6.6.6.6",
        "X_Forwarded_Host": "evil.example.com",
        "forwarded": "for=6.6.6.6",
        "x-real-ip": "6.6.6.6",
        "connection": "x-keep, close",
        "x-keep": "hop-by-hop",
        "proxy-authorization": "x",
        "x-forwarded-prefix": "/admin",
        "te": "trailers",
    }
    r = await browser.get("/api/echo", csrf=True, headers=spoof)
    seen = r.json()["headers"]
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-host"] == ["localhost:8080"]
    assert seen["x-forwarded-proto"] == ["http"]
    for name in (
        "x_forwarded_for",
        "x_forwarded_host",
        "forwarded",
        "x-real-ip",
        "x-keep",
        "proxy-authorization",
        "x-forwarded-prefix",
        "te",
    ):
        assert name not in seen, name
    assert "6.6.6.6" not in r.text and "evil.example.com" not in r.text


async def test_upstream_set_cookie_is_not_passed_to_the_browser(bff):
    _, browser = bff
    await browser.login()
    before = dict(browser.cookies)
    r = await browser.get("/api/set-cookie", csrf=True)
    assert r.status_code == 200
    assert "set-cookie" not in r.headers
    assert browser.cookies == before


async def test_upstream_statuses_and_bodies_pass_through(bff):
    _, browser = bff
    await browser.login()
    r = await browser.get("/api/status/418", csrf=True)
    assert r.status_code == 418 and r.json() == {"status": 418}
    r = await browser.request(
        "POST", "/api/echo", csrf=True, content=b"a" * 1000, headers={"content-type": "text/plain"}
    )
    assert r.json()["body_size"] == 1000 and r.json()["method"] == "POST"
    assert r.json()["headers"]["content-type"] == ["text/plain"]


async def test_answers_without_a_body_pass_through_and_keep_the_connection_usable(bff):
    """HEAD (a Content-Length but no body), 204 and 304 (no body at all): relayed as they are,
    and the pooled upstream connection is not left waiting for a body that never comes."""
    _, browser = bff
    await browser.login()
    for _ in range(2):  # the second round on the same pooled connections
        r = await browser.request("HEAD", "/api/echo", csrf=True)
        assert r.status_code == 200 and r.content == b"" and int(r.headers["content-length"]) > 0
        r = await browser.get("/api/status/204", csrf=True)
        assert r.status_code == 204 and r.content == b""
        r = await browser.get("/api/status/304", csrf=True)
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == '"v1"'
        assert (await browser.get("/api/echo", csrf=True)).json()["method"] == "GET"


async def test_unreachable_upstream_is_502_json(make_bff):
    from tests.support import free_port

    _, browser = await make_bff(BFF_API_ROUTES=f"/api=http://127.0.0.1:{free_port()}")
    await browser.login()
    r = await browser.get("/api/echo", csrf=True)
    assert r.status_code == 502
    assert r.json()["error"] == "upstream_unavailable"


async def test_slow_upstream_is_504_json_and_other_routes_still_answer(make_bff, upstream):
    routes = json.dumps(
        [
            {"prefix": "/api", "upstream": upstream.url, "timeout": 0.5},
            {"prefix": "/fast", "upstream": upstream.url},
        ]
    )
    _, browser = await make_bff(BFF_API_ROUTES=routes)
    await browser.login()
    slow, fast = await asyncio.gather(
        browser.get("/api/slow?delay=3", csrf=True), browser.get("/fast/echo", csrf=True)
    )
    assert slow.status_code == 504
    assert slow.json()["error"] == "upstream_timeout"
    assert fast.status_code == 200


async def test_api_calls_are_json_401_never_a_redirect(bff):
    _, browser = bff
    r = await browser.get("/api/anything", csrf=True, headers={"accept": "text/html"})
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/json")


async def test_a_skew_longer_than_the_token_lifetime_does_not_refresh_on_every_call(make_bff, idp):
    """Regression (found against oidc-provider): expires_in 60 with the default skew of 60
    refreshed on every call; the skew is now capped at half the token's lifetime."""
    idp.configure(access_ttl=60)
    _, browser = await make_bff(BFF_TOKEN_REFRESH_SKEW="60")
    await browser.login()
    for _ in range(3):
        assert (await browser.get("/api/echo", csrf=True)).status_code == 200
    assert idp.stats()["stats"]["refresh_token"] == 0


async def test_without_a_refresh_token_the_access_token_is_used_until_it_expires(make_bff, idp):
    idp.configure(access_ttl=60, issue_refresh_token=False)
    _, browser = await make_bff(BFF_TOKEN_REFRESH_SKEW="300")
    await browser.login()
    assert (await browser.get("/api/echo", csrf=True)).status_code == 200
    assert (await browser.get("/bff/user", csrf=True)).status_code == 200


async def test_a_caller_going_away_does_not_cancel_the_refresh_others_wait_on(make_bff, idp):
    idp.configure(access_ttl=0, refresh_access_ttl=3600, token_delay=0.5)
    _, browser = await make_bff()
    await browser.login()
    first = asyncio.create_task(browser.get("/api/echo", csrf=True))
    await asyncio.sleep(0.1)
    second = asyncio.create_task(browser.get("/api/echo", csrf=True))
    await asyncio.sleep(0.1)
    first.cancel()  # the browser tab that started the refresh is closed
    r = await second
    assert r.status_code == 200
    assert idp.stats()["stats"]["refresh_token"] == 1
