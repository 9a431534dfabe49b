"""Per-route token policy (SPEC "Per-route token policy") against the real test provider
(token exchange, client credentials, refusals), the upstream and Redis: each route type and
parameter, one token request per cold key under load and across processes, no mix-ups
between routes, refusals that keep the session, and exchanged tokens that end with it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from typing import Any

import httpx
import pytest

from bff.session.models import jwt_claims
from tests.support import Browser, bff_processes

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


def routes(upstream: Any, *extra: dict[str, Any]) -> str:
    return json.dumps([{"prefix": "/api", "upstream": upstream.url}, *extra])


def reports(upstream: Any, **kw: Any) -> dict[str, Any]:
    return {"prefix": "/reports", "upstream": upstream.url, "audience": "demo-reports", **kw}


def token_of(response: httpx.Response) -> dict[str, Any]:
    """The claims of the token the upstream received."""
    assert response.status_code == 200, response.text
    return jwt_claims(response.json()["headers"]["authorization"][0].removeprefix("Bearer "))


def requests_of(idp: Any, grant: str) -> list[dict[str, Any]]:
    return [r for r in idp.stats()["route_token_requests"] if r["grant"] == grant]


async def test_a_user_route_with_an_audience_gets_an_exchanged_token_for_that_audience(
    make_bff, idp, upstream
):
    _, browser = await make_bff(BFF_API_ROUTES=routes(upstream, reports(upstream, scope="reports.read")))
    await browser.login()
    own = token_of(await browser.get("/api/echo", csrf=True))
    exchanged = token_of(await browser.get("/reports/echo", csrf=True))
    assert own["aud"] == "api" and exchanged["aud"] == ["demo-reports"]
    assert exchanged["sub"] == own["sub"] == "user-alice-0001"
    assert exchanged["scope"] == "reports.read"
    (request,) = requests_of(idp, EXCHANGE)
    assert request == {"grant": EXCHANGE, "audience": "demo-reports", "resource": [], "scope": "reports.read"}
    # Cached: the next calls use it without asking the IdP again.
    for _ in range(3):
        assert token_of(await browser.get("/reports/echo", csrf=True))["jti"] == exchanged["jti"]
    assert len(requests_of(idp, EXCHANGE)) == 1


async def test_several_resource_indicators_are_all_sent(make_bff, idp, upstream):
    route = {
        "prefix": "/r",
        "upstream": upstream.url,
        "resource": ["https://b.example/", "https://a.example/"],
    }
    _, browser = await make_bff(BFF_API_ROUTES=routes(upstream, route))
    await browser.login()
    claims = token_of(await browser.get("/r/echo", csrf=True))
    assert sorted(claims["aud"]) == ["https://a.example/", "https://b.example/"]
    assert requests_of(idp, EXCHANGE)[0]["resource"] == ["https://a.example/", "https://b.example/"]


async def test_a_client_route_needs_no_session_but_x_csrf_and_shares_one_client_token(
    make_bff, idp, upstream
):
    route = {
        "prefix": "/m2m",
        "upstream": upstream.url,
        "token": "client",
        "audience": "metrics",
        "scope": "m.read",
    }
    app, alice = await make_bff(BFF_API_ROUTES=routes(upstream, route))
    anonymous = await make_bff.new_browser(app)
    assert (await anonymous.get("/m2m/echo")).status_code == 403  # X-CSRF still required
    first = token_of(await anonymous.get("/m2m/echo", csrf=True))
    assert first["sub"] == "service-account-bff-test" and first["aud"] == ["metrics"]
    await alice.login()
    second = token_of(await alice.get("/m2m/echo", csrf=True))  # the same token for every caller
    assert second["jti"] == first["jti"]
    assert requests_of(idp, "client_credentials") == [
        {"grant": "client_credentials", "audience": "metrics", "resource": [], "scope": "m.read"}
    ]


async def test_user_or_client_sends_the_users_token_with_a_session_and_the_clients_without(
    make_bff, upstream
):
    route = {"prefix": "/either", "upstream": upstream.url, "token": "user-or-client"}
    app, browser = await make_bff(BFF_API_ROUTES=routes(upstream, route))
    assert token_of(await browser.get("/either/echo", csrf=True))["sub"] == "service-account-bff-test"
    await browser.login()
    assert token_of(await browser.get("/either/echo", csrf=True))["sub"] == "user-alice-0001"


async def test_fifty_concurrent_calls_on_a_cold_route_key_make_one_token_request(make_bff, idp, upstream):
    client_route = {"prefix": "/m2m", "upstream": upstream.url, "token": "client", "audience": "m"}
    _, browser = await make_bff(BFF_API_ROUTES=routes(upstream, reports(upstream), client_route))
    await browser.login()
    idp.configure(token_delay=0.2)  # every request waits at the IdP: all 50 arrive while it is cold
    for path, grant in (("/reports/echo", EXCHANGE), ("/m2m/echo", "client_credentials")):
        results = await asyncio.gather(*[browser.get(path, csrf=True) for _ in range(50)])
        assert len({token_of(r)["jti"] for r in results}) == 1, path
        assert len(requests_of(idp, grant)) == 1, path


async def test_two_processes_share_one_exchange_and_one_client_token(idp, redis_url, upstream, tmp_path):
    client_route = {"prefix": "/m2m", "upstream": upstream.url, "token": "client", "audience": "m"}
    extra = {"BFF_API_ROUTES": routes(upstream, reports(upstream), client_route)}
    with bff_processes(idp, redis_url, upstream, tmp_path, **extra) as procs:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as client:
            browser = Browser(client, procs[0].url)
            await browser.login()
            idp.configure(token_delay=0.3)
            headers = {"x-csrf": "1", **browser._cookie_header()}
            for path, grant in (("/reports/echo", EXCHANGE), ("/m2m/echo", "client_credentials")):
                calls = [client.get(f"{procs[i % 2].url}{path}", headers=headers) for i in range(50)]
                results = await asyncio.gather(*calls)
                assert len({token_of(r)["jti"] for r in results}) == 1, path
                assert len(requests_of(idp, grant)) == 1, path
            await browser.aclose()


async def test_routes_with_different_audiences_never_receive_each_others_token(make_bff, upstream):
    """The known bug of one token manager: a concurrent request with another resource
    indicator got the first one's token. Each route here differs in one parameter only."""
    variants = [
        reports(upstream),
        {"prefix": "/sales", "upstream": upstream.url, "audience": "demo-sales"},
        {"prefix": "/res-a", "upstream": upstream.url, "resource": "https://a.example/"},
        {"prefix": "/res-b", "upstream": upstream.url, "resource": "https://b.example/"},
        {"prefix": "/scoped", "upstream": upstream.url, "audience": "demo-reports", "scope": "extra"},
    ]
    _, browser = await make_bff(BFF_API_ROUTES=routes(upstream, *variants))
    await browser.login()
    calls = [
        (v["prefix"], browser.get(f"{v['prefix']}/echo", csrf=True)) for v in variants for _ in range(10)
    ]
    expected = {
        "/reports": (["demo-reports"], ""),
        "/sales": (["demo-sales"], ""),
        "/res-a": (["https://a.example/"], ""),
        "/res-b": (["https://b.example/"], ""),
        "/scoped": (["demo-reports"], "extra"),
    }
    await assert_each_route_got_its_own_token(calls, expected)


async def assert_each_route_got_its_own_token(
    calls: list[tuple[str, Awaitable[httpx.Response]]], expected: dict[str, tuple[list[str], str]]
) -> None:
    """Every answer carries the (aud, scope) its route asks for, and each route had exactly
    one token of its own, shared by none of the others."""
    results = await asyncio.gather(*[c for _, c in calls])
    seen: dict[str, set[str]] = {}
    for (prefix, _), response in zip(calls, results, strict=True):
        claims = token_of(response)
        assert (claims["aud"], claims["scope"]) == expected[prefix], prefix
        seen.setdefault(prefix, set()).add(claims["jti"])
    jtis = [j for s in seen.values() for j in s]
    assert len(jtis) == len(set(jtis)) == len(expected)


async def test_client_routes_with_different_parameters_never_receive_each_others_token(make_bff, upstream):
    """The same mix-up on the BFF's own tokens: client routes that differ in one parameter,
    called concurrently, each get the token asked for with theirs."""
    variants = [
        {"prefix": "/m-a", "upstream": upstream.url, "token": "client", "audience": "m-a"},
        {"prefix": "/m-b", "upstream": upstream.url, "token": "client", "audience": "m-b"},
        {"prefix": "/m-r", "upstream": upstream.url, "token": "client", "resource": "https://r.example/"},
        {"prefix": "/m-s", "upstream": upstream.url, "token": "client", "audience": "m-a", "scope": "extra"},
    ]
    _, browser = await make_bff(BFF_API_ROUTES=routes(upstream, *variants))
    calls = [
        (v["prefix"], browser.get(f"{v['prefix']}/echo", csrf=True)) for v in variants for _ in range(10)
    ]
    expected = {
        "/m-a": (["m-a"], ""),
        "/m-b": (["m-b"], ""),
        "/m-r": (["https://r.example/"], ""),
        "/m-s": (["m-a"], "extra"),
    }
    await assert_each_route_got_its_own_token(calls, expected)


async def test_two_users_on_one_exchange_route_never_receive_each_others_token(make_bff, upstream):
    app, alice = await make_bff(BFF_API_ROUTES=routes(upstream, reports(upstream)))
    bob = await make_bff.new_browser(app)
    await alice.login("alice")
    await bob.login("bob")
    subs = {(await b.get("/bff/user", csrf=True)).json()["sub"]: b for b in (alice, bob)}
    assert len(subs) == 2
    calls = [(sub, b.get("/reports/echo", csrf=True)) for sub, b in subs.items() for _ in range(20)]
    results = await asyncio.gather(*[c for _, c in calls])
    for (sub, _), response in zip(calls, results, strict=True):
        claims = token_of(response)
        assert claims["sub"] == sub and claims["aud"] == ["demo-reports"]


@pytest.mark.parametrize("error", ["invalid_target", "unauthorized_client", "invalid_scope", "access_denied"])
async def test_an_idp_refusing_the_exchange_is_a_clear_non_401_and_keeps_the_session(
    make_bff, idp, upstream, error
):
    _, browser = await make_bff(BFF_API_ROUTES=routes(upstream, reports(upstream)))
    await browser.login()
    idp.configure(exchange_error=error)
    r = await browser.get("/reports/echo", csrf=True)
    assert r.status_code == 403
    assert r.json()["error"] == "route_token_refused" and error in r.json()["message"]
    assert (await browser.get("/bff/user", csrf=True)).status_code == 200
    assert (await browser.get("/api/echo", csrf=True)).status_code == 200
    idp.configure(exchange_error="")
    assert token_of(await browser.get("/reports/echo", csrf=True))["aud"] == ["demo-reports"]


async def test_an_idp_refusing_client_credentials_is_403_and_an_idp_down_503(make_bff, idp, upstream):
    route = {"prefix": "/m2m", "upstream": upstream.url, "token": "client"}
    _, browser = await make_bff(BFF_API_ROUTES=routes(upstream, route, reports(upstream)))
    idp.configure(client_credentials_error="unauthorized_client")
    r = await browser.get("/m2m/echo", csrf=True)
    assert (r.status_code, r.json()["error"]) == (403, "route_token_refused")
    await browser.login()
    idp.configure(token_status=503)
    for path in ("/m2m/echo", "/reports/echo"):
        r = await browser.get(path, csrf=True)
        assert (r.status_code, r.json()["error"]) == (503, "idp_unavailable"), path
    idp.configure(token_status=0)
    assert (await browser.get("/bff/user", csrf=True)).status_code == 200


async def test_a_malformed_exchange_answer_is_refused_whole_and_nothing_is_cached(
    make_bff, app_session, idp, upstream
):
    app, browser = await make_bff(BFF_API_ROUTES=routes(upstream, reports(upstream)))
    await browser.login()
    idp.configure(exchange_malformed=True)  # no issued_token_type
    r = await browser.get("/reports/echo", csrf=True)
    assert (r.status_code, r.json()["error"]) == (502, "idp_error")
    assert (await app_session(app, browser)).route_tokens == {}


async def test_an_exchanged_token_is_capped_at_the_session_and_subject_token_and_ends_with_the_session(
    make_bff, app_session, idp, upstream, redis_server
):
    idp.configure(route_token_ttl=7200, access_ttl=600)
    app, browser = await make_bff(
        BFF_API_ROUTES=routes(upstream, reports(upstream)), BFF_SESSION_ABSOLUTE_TIMEOUT="900"
    )
    await browser.login()
    token_of(await browser.get("/reports/echo", csrf=True))
    session = await app_session(app, browser)
    (cached,) = session.route_tokens.values()
    assert cached.expires_at <= min(session.expires_at, session.access_expires_at)
    assert "demo-reports" not in redis_server.cli("KEYS", "*")  # only inside the encrypted record
    assert (await browser.request("POST", "/bff/logout", csrf=True)).status_code == 302
    assert redis_server.cli("KEYS", "bff:s:*").split() == []


async def test_an_exchanged_token_is_exchanged_again_ahead_of_its_expiry(make_bff, idp, upstream):
    idp.configure(route_token_ttl=2)
    _, browser = await make_bff(
        BFF_API_ROUTES=routes(upstream, reports(upstream)), BFF_TOKEN_REFRESH_SKEW="1"
    )
    await browser.login()
    first = token_of(await browser.get("/reports/echo", csrf=True))
    await asyncio.sleep(1.2)
    second = token_of(await browser.get("/reports/echo", csrf=True))
    assert second["jti"] != first["jti"]
    assert len(requests_of(idp, EXCHANGE)) == 2


async def test_route_token_metrics_and_no_token_in_any_log_line(make_bff, idp, upstream, caplog):
    client_route = {"prefix": "/m2m", "upstream": upstream.url, "token": "client"}
    _, browser = await make_bff(BFF_API_ROUTES=routes(upstream, reports(upstream), client_route))
    with caplog.at_level(logging.DEBUG):
        await browser.login()
        for _ in range(2):
            await browser.get("/reports/echo", csrf=True)
            await browser.get("/m2m/echo", csrf=True)
        idp.configure(exchange_error="invalid_target")
        await browser.get("/reports/echo", csrf=True)  # cached still: no refusal
    text = (await browser.get("/metrics")).text
    for line in (
        'bff_route_token_requests_total{kind="exchange",outcome="ok"} 1.0',
        'bff_route_token_requests_total{kind="client_credentials",outcome="ok"} 1.0',
        'bff_route_token_cache_total{kind="exchange",result="hit"} 2.0',
        'bff_route_token_cache_total{kind="client",result="hit"} 1.0',
    ):
        assert line in text, line
    # The BFF's own records (the test client's httpx logs its own URLs): before any redaction.
    logged = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records if r.name.startswith("bff"))
    for secret in idp.issued():
        assert secret not in logged
