"""The login round trip against the real test provider and a real redis-server."""

from __future__ import annotations

import pytest

from tests.support import query_of


async def test_login_round_trip_creates_a_session_and_user_sees_claims(bff, redis_server):
    app, browser = bff
    r = await browser.start_login("/after/login?x=1")
    assert r.status_code == 302
    authz = query_of(r.headers["location"])
    assert authz["code_challenge_method"] == "S256"
    assert len(authz["code_challenge"]) == 43
    assert authz["state"] and authz["nonce"] and authz["state"] != authz["nonce"]
    assert authz["redirect_uri"] == "http://localhost:8080/bff/callback"
    r = await browser.authorize(r.headers["location"])
    r = await browser.get(r.headers["location"])
    assert r.status_code == 302
    assert r.headers["location"] == "http://localhost:8080/after/login?x=1"
    cookie = next(c for c in browser.last_set_cookies if c.startswith("bff_session="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    value = browser.cookies["bff_session"]
    assert value.count(".") == 1 and "eyJ" not in value  # a signed id, no token

    r = await browser.get("/bff/user", csrf=True)
    assert r.status_code == 200
    body = r.json()
    assert body["sub"] == "user-alice-0001"
    assert body["claims"]["email"] == "alice@example.com"
    assert "nonce" not in body["claims"]
    assert body["logout_url"].startswith("/bff/logout?sid=")
    assert "eyJ" not in r.text  # no token in the answer

    keys = redis_server.cli("KEYS", "bff:s:*").split()
    assert len(keys) == 1
    ttl = int(redis_server.cli("TTL", keys[0]))
    assert 1700 < ttl <= 1800


async def test_user_is_401_json_without_a_session(bff):
    _, browser = bff
    r = await browser.get("/bff/user", csrf=True)
    assert r.status_code == 401
    assert r.json()["error"] == "not_authenticated"


@pytest.mark.parametrize("misbehave", [
    "wrong_nonce", "missing_nonce", "bad_signature", "wrong_key", "unknown_kid", "expired", "future_iat",
    "wrong_aud", "multi_aud_no_azp", "wrong_azp", "wrong_iss", "alg_none", "hs256_public_key", "missing_sub",
    "bad_at_hash", "missing_exp", "no_id_token",
])
async def test_a_misbehaving_id_token_is_refused_and_no_session_is_created(bff, idp, redis_server, misbehave):
    _, browser = bff
    idp.configure(misbehave=misbehave)
    r = await browser.login()
    assert r.status_code == 400, misbehave
    assert r.json()["error"] != "internal_error"
    assert "bff_session" not in browser.cookies
    assert redis_server.cli("KEYS", "bff:s:*").split() == []
