"""DPoP (RFC 9449) end to end against the real test provider told to demand proofs and
nonces, and the real upstream, which checks every proof (signature, htm, htu, iat, jti
replay, ath, cnf.jkt): login, refresh, token exchange, client credentials, UserInfo and
proxied calls all bound; per-session keys; nonces from the IdP and from upstreams."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from bff.dpop import DPoPKey, deployment_key
from bff.session.models import jwt_claims
from tests.support import SECRET

DPOP = {"dpop": True, "dpop_required": True}


def upstream_view(response: httpx.Response) -> tuple[str, dict[str, Any] | None, dict[str, Any]]:
    """(the scheme the upstream saw, what it verified of the proof, the token's claims)."""
    assert response.status_code == 200, response.text
    scheme, _, token = response.json()["headers"]["authorization"][0].partition(" ")
    return scheme, response.json()["dpop"], jwt_claims(token)


async def session_key(app_session: Any, app: Any, browser: Any) -> DPoPKey:
    session = await app_session(app, browser)
    assert session.dpop_key is not None
    return DPoPKey.load(session.dpop_key)


async def test_login_refresh_and_proxied_calls_are_bound_to_the_sessions_key(
    make_bff, app_session, idp, upstream
):
    idp.configure(**DPOP, access_ttl=0, refresh_access_ttl=0)  # every call refreshes
    app, browser = await make_bff(BFF_DPOP="true", BFF_TOKEN_REFRESH_SKEW="60")
    r = await browser.start_login()
    authz = httpx.URL(r.headers["location"]).params
    assert "request_uri" in authz or "dpop_jkt" in authz  # PAR carries it otherwise
    await browser.get((await browser.authorize(r.headers["location"])).headers["location"])
    key = await session_key(app_session, app, browser)
    assert idp.stats()["dpop_jkts"] == [key.jkt]  # the code was bound to the session's key
    assert (await app_session(app, browser)).access_token_type == "DPoP"
    for _ in range(3):
        scheme, proof, claims = upstream_view(await browser.get("/api/echo?x=1", csrf=True))
        assert scheme == "DPoP" and claims["cnf"]["jkt"] == key.jkt
        assert proof is not None and proof["jkt"] == key.jkt
    proofs = idp.stats()["dpop_proofs"]
    assert {p["endpoint"] for p in proofs} == {"token"}
    assert {p["jkt"] for p in proofs} == {key.jkt}  # the code exchange and every refresh
    assert idp.stats()["stats"]["refresh_token"] >= 3


async def test_two_sessions_use_different_keys_and_no_proof_is_sent_twice(
    make_bff, app_session, idp, upstream
):
    idp.configure(**DPOP)
    app, alice = await make_bff(BFF_DPOP="true")
    bob = await make_bff.new_browser(app)
    await alice.login("alice")
    await bob.login("bob")
    keys = {(await session_key(app_session, app, b)).jkt for b in (alice, bob)}
    assert len(keys) == 2
    results = await asyncio.gather(*[b.get("/api/echo", csrf=True) for b in (alice, bob) for _ in range(20)])
    jtis = [upstream_view(r)[1]["jti"] for r in results]  # type: ignore[index]
    assert len(jtis) == len(set(jtis)) == 40


async def test_a_replayed_proof_is_refused_by_the_upstream(make_bff, idp, upstream):
    idp.configure(**DPOP)
    _, browser = await make_bff(BFF_DPOP="true")
    await browser.login()
    echo = (await browser.get("/api/echo", csrf=True)).json()
    replay = {"authorization": echo["headers"]["authorization"][0], "dpop": echo["headers"]["dpop"][0]}
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{upstream.url}/api/echo", headers=replay)
    assert r.status_code == 401 and "invalid_dpop_proof" in r.headers["www-authenticate"]


async def test_redis_holds_no_private_key_in_clear(make_bff, app_session, idp, redis_server):
    idp.configure(**DPOP)
    app, browser = await make_bff(BFF_DPOP="true")
    await browser.login()
    private = json.loads((await app_session(app, browser)).dpop_key)["d"].encode()
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        raw = [await client.dump(k) for k in await client.keys("bff:*")]
    finally:
        await client.aclose()
    assert raw and all(private not in value and b'"d"' not in value for value in raw if value)


async def test_a_sessions_private_key_leaves_the_process_memory_when_the_session_ends(
    make_bff, app_session, idp
):
    idp.configure(**DPOP)
    app, alice = await make_bff(BFF_DPOP="true")
    bob = await make_bff.new_browser(app)
    for browser, user in ((alice, "alice"), (bob, "bob")):
        await browser.login(user)
        assert (await browser.get("/api/echo", csrf=True)).status_code == 200  # key parsed, kept
    keys = app.services.tokens.keys
    assert len(keys) == 2
    assert (await alice.request("POST", "/bff/logout", csrf=True)).status_code == 302
    async with asyncio.timeout(5):  # the end notice comes back over Redis pub/sub
        while len(keys) != 1:
            await asyncio.sleep(0.01)
    assert (await bob.get("/api/echo", csrf=True)).status_code == 200  # the other one stays


async def test_the_idps_nonce_is_asked_for_used_and_followed_when_it_rotates(make_bff, idp):
    idp.configure(**DPOP, dpop_nonce=True, dpop_rotate_nonce=True, access_ttl=0)
    _, browser = await make_bff(BFF_DPOP="true", BFF_TOKEN_REFRESH_SKEW="60")
    assert (await browser.login()).status_code == 302
    for _ in range(3):  # each refresh uses the nonce the previous answer brought
        assert (await browser.get("/api/echo", csrf=True)).status_code == 200
    stats = idp.stats()
    assert stats["dpop_nonce_challenges"] == 1  # only the first request had no nonce
    assert all(p["nonce"] for p in stats["dpop_proofs"])


@pytest.mark.parametrize("body", [None, b'{"small": true}'])
async def test_an_upstream_nonce_challenge_is_answered_once_for_a_replayable_call(make_bff, idp, body):
    idp.configure(**DPOP)
    _, browser = await make_bff(BFF_DPOP="true")
    await browser.login()
    r = await browser.request("POST", "/api/dpop-nonce/echo", csrf=True, content=body)
    scheme, proof, _ = upstream_view(r)
    assert scheme == "DPoP" and proof is not None and proof["nonce"]
    assert r.json()["body_size"] == len(body or b"")
    assert "dpop-nonce" not in r.headers  # the upstream's nonce is for the BFF, not the SPA
    # The nonce is remembered: the next call carries it at once (and the rotating path works).
    for path in ("/api/dpop-nonce/echo", "/api/dpop-rotate/x/echo", "/api/dpop-rotate/x/echo"):
        assert upstream_view(await browser.get(path, csrf=True))[1]["nonce"]  # type: ignore[index]


async def test_a_streamed_body_is_not_replayed_for_a_nonce_and_the_401_goes_to_the_spa(make_bff, idp):
    idp.configure(**DPOP)
    _, browser = await make_bff(BFF_DPOP="true", BFF_RETRY_BODY_LIMIT="16")
    await browser.login()
    r = await browser.request("POST", "/api/dpop-nonce/fresh/echo", csrf=True, content=b"x" * 1000)
    assert r.status_code == 401 and "use_dpop_nonce" in r.headers["www-authenticate"]


async def test_exchanged_and_client_tokens_are_bound_too(make_bff, app_session, idp, upstream):
    idp.configure(**DPOP)
    routes = json.dumps(
        [
            {"prefix": "/api", "upstream": upstream.url},
            {"prefix": "/reports", "upstream": upstream.url, "audience": "demo-reports"},
            {"prefix": "/m2m", "upstream": upstream.url, "token": "client"},
        ]
    )
    app, browser = await make_bff(BFF_DPOP="true", BFF_API_ROUTES=routes)
    await browser.login()
    key = await session_key(app_session, app, browser)
    scheme, proof, claims = upstream_view(await browser.get("/reports/echo", csrf=True))
    assert (scheme, claims["aud"], claims["cnf"]["jkt"], proof["jkt"]) == (
        "DPoP",
        ["demo-reports"],
        key.jkt,
        key.jkt,
    )  # type: ignore[index]
    scheme, proof, claims = upstream_view(await browser.get("/m2m/echo", csrf=True))
    deployment = deployment_key(SECRET, None)  # the same in every process of this deployment
    assert (scheme, claims["cnf"]["jkt"], proof["jkt"]) == ("DPoP", deployment.jkt, deployment.jkt)  # type: ignore[index]


async def test_userinfo_is_called_with_the_dpop_scheme(make_bff, idp):
    idp.configure(**DPOP, claims_in_id_token=False)
    _, browser = await make_bff(BFF_DPOP="true", BFF_FETCH_USERINFO="true")
    assert (await browser.login()).status_code == 302
    assert (await browser.get("/bff/user", csrf=True)).json()["claims"]["email"] == "alice@example.com"
    assert "userinfo" in {p["endpoint"] for p in idp.stats()["dpop_proofs"]}


async def test_an_idp_that_ignores_the_proof_gives_bearer_tokens_used_as_bearer(make_bff, app_session, idp):
    idp.configure(dpop=True, dpop_ignore=True)
    app, browser = await make_bff(BFF_DPOP="true")
    await browser.login()
    assert (await app_session(app, browser)).access_token_type == "Bearer"
    scheme, proof, _ = upstream_view(await browser.get("/api/echo", csrf=True))
    assert scheme == "Bearer" and proof is None
    assert "dpop" not in (await browser.get("/api/echo", csrf=True)).json()["headers"]


async def test_a_dpop_header_from_the_browser_never_reaches_the_upstream(make_bff, idp):
    _, browser = await make_bff()
    await browser.login()
    r = await browser.get("/api/echo", csrf=True, headers={"dpop": "forged.proof.value"})
    assert "dpop" not in r.json()["headers"]
