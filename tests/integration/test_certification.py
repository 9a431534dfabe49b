"""What the OpenID Foundation's RP test plans check, against the real test provider told to
behave like the conformance suite's: signed UserInfo, algorithms the client did not register,
token responses without ``expires_in``, an upstream that refuses a token (RFC 6750), and
RP-initiated logout with ``state`` (tests/integration/test_logout.py)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.scenarios import post_logout_token

NO_CLAIMS = {"claims_in_id_token": False}  # profile and email only from UserInfo


async def test_a_signed_userinfo_answer_is_verified_and_used(make_bff, idp):
    idp.configure(userinfo_mode="signed", **NO_CLAIMS)
    _, browser = await make_bff(BFF_FETCH_USERINFO="true")
    r = await browser.login()
    assert r.status_code == 302, r.text
    claims = (await browser.get("/bff/user", csrf=True)).json()["claims"]
    assert claims["email"] == "alice@example.com"
    assert "aud" not in claims or claims["aud"] == "bff-test"  # the ID token's own aud
    assert idp.stats()["stats"]["userinfo"] == 1


@pytest.mark.parametrize(
    ("mode", "code"),
    [
        ("signed_bad_signature", "token_signature"),
        ("signed_other_sub", "userinfo_sub"),
        ("signed_wrong_iss", "userinfo_iss"),
        ("signed_wrong_aud", "userinfo_aud"),
        ("signed_es256", "token_alg"),
        ("not_json", "userinfo_invalid"),
    ],
)
async def test_an_unusable_userinfo_answer_fails_the_login_when_userinfo_is_required(
    make_bff, idp, mode, code
):
    idp.configure(userinfo_mode=mode, publish_ec_key=True, algs=["RS256", "ES256"], **NO_CLAIMS)
    _, browser = await make_bff(BFF_FETCH_USERINFO="true")
    r = await browser.login()
    assert r.status_code == 400, r.text
    assert r.json()["error"] == code
    assert "bff_session" not in browser.cookies


@pytest.mark.parametrize("mode", ["signed_bad_signature", "signed_wrong_aud", "signed_es256", "not_json"])
async def test_under_auto_an_unusable_userinfo_answer_only_costs_its_claims(make_bff, idp, mode):
    idp.configure(userinfo_mode=mode, publish_ec_key=True, algs=["RS256", "ES256"], **NO_CLAIMS)
    _, browser = await make_bff()  # BFF_FETCH_USERINFO=auto
    r = await browser.login()
    assert r.status_code == 302, r.text
    claims = (await browser.get("/bff/user", csrf=True)).json()["claims"]
    assert claims["sub"] == "user-alice-0001" and "email" not in claims


async def test_under_auto_a_signed_userinfo_of_another_subject_still_refuses_the_login(make_bff, idp):
    idp.configure(userinfo_mode="signed_other_sub", **NO_CLAIMS)
    _, browser = await make_bff()
    r = await browser.login()
    assert r.status_code == 400
    assert r.json()["error"] == "userinfo_sub"


async def test_an_id_token_signed_with_an_advertised_but_unregistered_algorithm_is_refused(make_bff, idp):
    """OIDC Core §3.1.3.7 step 7: the IdP advertises RS256 and ES256; the client registered
    RS256 (the default), so an ES256 ID token is refused and the message names the setting."""
    idp.configure(misbehave="signed_es256", publish_ec_key=True, algs=["RS256", "ES256"])
    _, browser = await make_bff()
    r = await browser.login()
    assert r.status_code == 400
    assert r.json()["error"] == "token_alg"
    assert "BFF_ID_TOKEN_ALGS" in r.json()["message"]


async def test_an_es256_id_token_is_accepted_when_that_is_the_registered_algorithm(make_bff, idp):
    idp.configure(misbehave="signed_es256", publish_ec_key=True, algs=["RS256", "ES256"])
    _, browser = await make_bff(BFF_ID_TOKEN_ALGS="ES256")
    assert (await browser.login()).status_code == 302


async def test_a_logout_token_signed_with_an_unregistered_algorithm_is_refused(make_bff, idp):
    idp.configure(publish_ec_key=True, algs=["RS256", "ES256"])
    _, browser = await make_bff()
    await browser.login()
    r = await post_logout_token(browser, idp.logout_token(user="alice", forge="es256"))
    assert r.status_code == 400
    assert "BFF_ID_TOKEN_ALGS" in r.json()["message"]
    assert (await browser.get("/bff/user", csrf=True)).status_code == 200


async def test_a_token_response_without_expires_in_gets_the_assumed_lifetime_and_is_refreshed(make_bff, idp):
    idp.configure(omit_expires_in=True)
    app, browser = await make_bff(BFF_ASSUMED_TOKEN_LIFETIME="10", BFF_TOKEN_REFRESH_SKEW="9")
    await browser.login()
    session_id = app.services.cookies.session_id(f"bff_session={browser.cookies['bff_session']}")
    session = await app.services.store.load(session_id, touch=False)
    assert abs(session.access_expires_at - (time.time() + 10)) <= 2
    first = (await browser.get("/api/echo", csrf=True)).json()["headers"]["authorization"][0]
    before = idp.stats()["stats"]["refresh_token"]
    await asyncio.sleep(1.2)  # past expiry minus the skew
    second = (await browser.get("/api/echo", csrf=True)).json()["headers"]["authorization"][0]
    assert idp.stats()["stats"]["refresh_token"] == before + 1
    assert first != second


@pytest.mark.parametrize("expires_in", ["soon", "\u00b2", -5, True, [60], {"s": 60}, -0.5])
async def test_a_token_response_with_a_malformed_expires_in_is_refused_whole(make_bff, idp, expires_in):
    """Present but not a number of seconds: no session from it (not a token assumed to live
    forever, nor for the assumed lifetime, nor a 500 from a digit int() cannot read)."""
    idp.configure(overrides={"token": {"set": {"expires_in": expires_in}}})
    app, browser = await make_bff()
    r = await browser.login()
    assert r.status_code in (400, 502), r.text
    assert r.status_code != 500 and "bff_session" not in browser.cookies
    assert (await browser.get("/bff/user", csrf=True)).status_code == 401


async def _refuse(upstream_url: str, authorization: str) -> None:
    async with httpx.AsyncClient() as client:
        r = await client.post(f"{upstream_url}/refuse-token", content=authorization.partition(" ")[2])
        r.raise_for_status()


async def _strict_calls(upstream_url: str) -> int:
    async with httpx.AsyncClient() as client:
        return int((await client.get(f"{upstream_url}/strict-calls")).json()["calls"])


@pytest.mark.parametrize("body", [None, b'{"small": "body"}'])
async def test_an_upstream_invalid_token_refusal_refreshes_once_and_retries_once(
    make_bff, idp, upstream, body
):
    _, browser = await make_bff()
    await browser.login()
    first = (await browser.get("/api/strict/echo", csrf=True)).json()["headers"]["authorization"][0]
    await _refuse(upstream.url, first)
    await asyncio.sleep(2.1)  # a token seconds old is not refreshed again (REFUSED_MIN_AGE)
    before, calls = idp.stats()["stats"]["refresh_token"], await _strict_calls(upstream.url)
    r = await browser.request("POST", "/api/strict/echo", csrf=True, content=body)
    assert r.status_code == 200, r.text
    assert r.json()["headers"]["authorization"][0] != first
    assert r.json()["body_size"] == len(body or b"")
    assert idp.stats()["stats"]["refresh_token"] == before + 1
    assert await _strict_calls(upstream.url) == calls + 2  # the refused call and its one retry


async def test_a_streamed_body_is_never_sent_twice_and_the_refusal_goes_to_the_spa(make_bff, idp, upstream):
    _, browser = await make_bff(BFF_RETRY_BODY_LIMIT="16")
    await browser.login()
    first = (await browser.get("/api/strict/echo", csrf=True)).json()["headers"]["authorization"][0]
    await _refuse(upstream.url, first)
    await asyncio.sleep(2.1)
    before, calls = idp.stats()["stats"]["refresh_token"], await _strict_calls(upstream.url)
    r = await browser.request("POST", "/api/strict/echo", csrf=True, content=b"x" * 1000)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer error=")
    assert idp.stats()["stats"]["refresh_token"] == before
    assert await _strict_calls(upstream.url) == calls + 1


async def test_an_upstream_that_refuses_every_token_does_not_cause_a_refresh_per_request(
    make_bff, idp, upstream
):
    _, browser = await make_bff()
    await browser.login()
    first = (await browser.get("/api/strict/echo", csrf=True)).json()["headers"]["authorization"][0]
    await _refuse(upstream.url, first)
    before = idp.stats()["stats"]["refresh_token"]
    results = [await browser.get("/api/strict/echo", csrf=True) for _ in range(5)]
    assert [r.status_code for r in results] == [401] * 5  # the token is seconds old: no refresh
    assert idp.stats()["stats"]["refresh_token"] == before
