"""Logout, back-channel logout, the user's sessions and the session limit."""

from __future__ import annotations

import pytest

from tests.scenarios import alice_twice_and_bob, idp_sid, post_logout_token
from tests.support import query_of


async def test_logout_ends_the_session_revokes_the_refresh_token_and_redirects_to_end_session(
    bff, idp, redis_server
):
    _, browser = bff
    await browser.login()
    assert idp.stats()["valid_refresh_tokens"] == 1
    r = await browser.request("POST", "/bff/logout", csrf=True)
    assert r.status_code == 302
    location = r.headers["location"]
    assert location.startswith(f"{idp.issuer}/end_session?")
    params = query_of(location)
    assert params["client_id"] == "bff-test"
    assert params["post_logout_redirect_uri"] == "http://localhost:8080/bff/post-logout"
    assert params["id_token_hint"].startswith("eyJ")
    assert len(params["state"]) >= 32
    assert redis_server.cli("KEYS", "bff:s:*").split() == []
    stats = idp.stats()
    assert stats["stats"]["revocation"] == 1
    assert stats["valid_refresh_tokens"] == 0
    assert "bff_session" not in browser.cookies
    assert (await browser.get("/bff/user", csrf=True)).status_code == 401


async def test_logout_by_link_needs_the_sessions_sid(bff, redis_server):
    _, browser = bff
    await browser.login()
    logout_url = (await browser.get("/bff/user", csrf=True)).json()["logout_url"]
    for bad in ("/bff/logout", "/bff/logout?sid=", "/bff/logout?sid=guess"):
        r = await browser.get(bad)
        assert r.status_code == 400, bad
        assert r.json()["error"] == "logout_sid_mismatch"
        assert (await browser.get("/bff/user", csrf=True)).status_code == 200
    r = await browser.get(logout_url)
    assert r.status_code == 302
    assert (await browser.get("/bff/user", csrf=True)).status_code == 401


async def test_post_logout_without_csrf_header_ends_nothing(bff):
    _, browser = bff
    await browser.login()
    r = await browser.request("POST", "/bff/logout")
    assert r.status_code == 403
    assert (await browser.get("/bff/user", csrf=True)).status_code == 200


async def test_logout_without_end_session_endpoint_is_local_and_goes_to_post_logout_uri(make_bff, idp):
    idp.configure(advertise_end_session=False)
    _, browser = await make_bff(BFF_POST_LOGOUT_REDIRECT_URI="http://localhost:8080/bye")
    await browser.login()
    r = await browser.request("POST", "/bff/logout", csrf=True)
    assert r.status_code == 302
    assert r.headers["location"] == "http://localhost:8080/bye"
    assert (await browser.get("/bff/user", csrf=True)).status_code == 401


async def test_logout_without_a_session_just_redirects(bff):
    _, browser = bff
    r = await browser.request("POST", "/bff/logout", csrf=True)
    assert r.status_code == 302
    assert r.headers["location"] == "http://localhost:8080/"


async def test_backchannel_logout_by_sid_ends_exactly_that_session(make_bff, idp):
    _, alice1, alice2, bob = await alice_twice_and_bob(make_bff)
    r = await post_logout_token(bob, idp.logout_token(user="alice", sid=await idp_sid(alice1)))
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    assert (await alice1.get("/bff/user", csrf=True)).status_code == 401
    assert (await alice2.get("/bff/user", csrf=True)).status_code == 200
    assert (await bob.get("/bff/user", csrf=True)).status_code == 200


async def test_backchannel_logout_by_sub_ends_every_session_of_that_user(make_bff, idp):
    _, alice1, alice2, bob = await alice_twice_and_bob(make_bff)
    r = await post_logout_token(bob, idp.logout_token(user="alice"))
    assert r.status_code == 200
    assert (await alice1.get("/bff/user", csrf=True)).status_code == 401
    assert (await alice2.get("/bff/user", csrf=True)).status_code == 401
    assert (await bob.get("/bff/user", csrf=True)).status_code == 200


FORGED = {
    "alg_none": {"forge": "alg_none"},
    "signed_by_another_key": {"forge": "wrong_key"},
    "bad_signature": {"forge": "bad_signature"},
    "hmac_with_public_key": {"forge": "hs256_public_key"},
    "wrong_iss": {"claims": {"iss": "https://evil.example.com"}},
    "wrong_aud": {"claims": {"aud": "another-client"}},
    "missing_iat": {"claims": {"iat": None}},
    "future_iat": {"claims": {"iat": 4102444800}},
    "too_old_iat": {"claims": {"iat": 1_000_000_000, "exp": None}},
    "expired": {"claims": {"exp": 1_000_000_000}},
    "missing_events": {"claims": {"events": None}},
    "wrong_event": {"claims": {"events": {"http://schemas.openid.net/event/other": {}}}},
    "event_not_object": {"claims": {"events": {"http://schemas.openid.net/event/backchannel-logout": "x"}}},
    "has_nonce": {"claims": {"nonce": "n"}},
    "no_sub_no_sid": {"sub": False},
    "missing_jti": {"claims": {"jti": None}},
    "typ_access_token": {"header": {"typ": "at+jwt"}},
}


@pytest.mark.parametrize("variant", sorted(FORGED))
async def test_a_forged_logout_token_is_refused_and_ends_nothing(bff, idp, variant):
    _, browser = bff
    await browser.login()
    r = await post_logout_token(browser, idp.logout_token(user="alice", **FORGED[variant]))
    assert r.status_code == 400, variant
    assert r.json()["error"] == "invalid_logout_token"
    assert (await browser.get("/bff/user", csrf=True)).status_code == 200


async def test_a_replayed_logout_token_is_refused(make_bff, idp):
    app, alice = await make_bff()
    await alice.login("alice")
    token = idp.logout_token(user="alice")
    assert (await post_logout_token(alice, token)).status_code == 200
    await alice.login("alice")
    r = await post_logout_token(alice, token)
    assert r.status_code == 400
    assert "replay" in r.json()["message"]
    assert (await alice.get("/bff/user", csrf=True)).status_code == 200


@pytest.mark.parametrize(
    "body,ctype",
    [
        ("", "application/x-www-form-urlencoded"),
        ('{"logout_token": "x"}', "application/json"),
        ("logout_token=a&logout_token=b", "application/x-www-form-urlencoded"),
    ],
)
async def test_backchannel_logout_without_a_single_form_token_is_400(bff, body, ctype):
    _, browser = bff
    r = await browser.request(
        "POST", "/bff/backchannel-logout", content=body, headers={"content-type": ctype}
    )
    assert r.status_code == 400


async def test_sessions_list_end_one_and_end_all(make_bff):
    app, laptop = await make_bff()
    phone = await make_bff.new_browser(
        app,
        ip="10.1.2.3",
        user_agent="Mozilla/5.0 (Linux; Android 14) "
        "AppleWebKit/537.36 (KHTML, like Gecko) Chrome/150.0 Mobile Safari/537.36",
    )
    bob = await make_bff.new_browser(app)
    await laptop.login("alice")
    await phone.login("alice")
    await bob.login("bob")
    listed = (await laptop.get("/bff/sessions", csrf=True)).json()["sessions"]
    assert len(listed) == 2
    current = [s for s in listed if s["current"]]
    other = [s for s in listed if not s["current"]]
    assert len(current) == 1 and len(other) == 1
    assert current[0]["user_agent"] == "Chrome on Linux"
    assert other[0]["user_agent"] == "Chrome on Android" and other[0]["ip"] == "10.1.2.3"
    assert all(s["created_at"] <= s["last_seen"] for s in listed)
    # Bob can neither see nor end Alice's sessions.
    assert len((await bob.get("/bff/sessions", csrf=True)).json()["sessions"]) == 1
    r = await bob.request("DELETE", f"/bff/sessions/{other[0]['id']}", csrf=True)
    assert r.status_code == 404
    assert (await phone.get("/bff/user", csrf=True)).status_code == 200
    # Alice ends her phone's session from the laptop.
    r = await laptop.request("DELETE", f"/bff/sessions/{other[0]['id']}", csrf=True)
    assert r.status_code == 204
    assert (await phone.get("/bff/user", csrf=True)).status_code == 401
    assert (await laptop.get("/bff/user", csrf=True)).status_code == 200
    # Log out everywhere.
    await phone.login("alice")
    r = await laptop.request("DELETE", "/bff/sessions", csrf=True)
    assert r.status_code == 204
    assert (await phone.get("/bff/user", csrf=True)).status_code == 401
    assert (await laptop.get("/bff/user", csrf=True)).status_code == 401
    assert (await bob.get("/bff/user", csrf=True)).status_code == 200


@pytest.mark.parametrize(
    "method,path", [("GET", "/bff/sessions"), ("DELETE", "/bff/sessions"), ("DELETE", "/bff/sessions/x")]
)
async def test_session_endpoints_need_the_csrf_header(bff, method, path):
    _, browser = bff
    await browser.login()
    r = await browser.request(method, path)
    assert r.status_code == 403
    assert (await browser.get("/bff/user", csrf=True)).status_code == 200


async def test_a_login_beyond_the_session_limit_ends_the_oldest_session(make_bff):
    app, first = await make_bff(BFF_MAX_SESSIONS_PER_USER="2")
    second = await make_bff.new_browser(app)
    third = await make_bff.new_browser(app)
    await first.login("alice")
    await second.login("alice")
    await third.login("alice")
    assert (await first.get("/bff/user", csrf=True)).status_code == 401
    assert (await second.get("/bff/user", csrf=True)).status_code == 200
    assert (await third.get("/bff/user", csrf=True)).status_code == 200
    assert len((await third.get("/bff/sessions", csrf=True)).json()["sessions"]) == 2


async def test_ending_sessions_from_the_list_revokes_their_refresh_tokens(make_bff, idp):
    """Regression (found against oidc-provider): ended sessions left live refresh tokens."""
    app, laptop = await make_bff()
    phone = await make_bff.new_browser(app)
    tablet = await make_bff.new_browser(app)
    for b in (laptop, phone, tablet):
        await b.login("alice")
    assert idp.stats()["valid_refresh_tokens"] == 3
    listed = (await laptop.get("/bff/sessions", csrf=True)).json()["sessions"]
    other = next(s for s in listed if not s["current"])
    assert (await laptop.request("DELETE", f"/bff/sessions/{other['id']}", csrf=True)).status_code == 204
    assert idp.stats()["valid_refresh_tokens"] == 2
    assert (await laptop.request("DELETE", "/bff/sessions", csrf=True)).status_code == 204
    assert idp.stats()["valid_refresh_tokens"] == 0


async def test_a_session_ended_by_the_limit_has_its_refresh_token_revoked(make_bff, idp):
    app, first = await make_bff(BFF_MAX_SESSIONS_PER_USER="1")
    second = await make_bff.new_browser(app)
    await first.login("alice")
    await second.login("alice")
    assert idp.stats()["valid_refresh_tokens"] == 1
    assert idp.stats()["stats"]["revocation"] == 1


async def test_the_idp_sends_the_browser_back_with_the_logout_state_and_it_lands_on_the_app(make_bff, idp):
    _, browser = await make_bff(BFF_POST_LOGOUT_REDIRECT_URI="http://localhost:8080/bye")
    await browser.login()
    r = await browser.request("POST", "/bff/logout", csrf=True)
    back = await browser.idp.get(r.headers["location"])  # the IdP's end_session redirects back
    assert back.status_code == 302
    landing = back.headers["location"]
    assert landing.startswith("http://localhost:8080/bff/post-logout?")
    assert query_of(landing)["state"] == query_of(r.headers["location"])["state"]
    r = await browser.get(landing, headers={"sec-fetch-site": "cross-site"})
    assert r.status_code == 302
    assert r.headers["location"] == "http://localhost:8080/bye"
    assert not [k for k in browser.cookies if k.startswith("bff")]  # the state cookie is gone too


@pytest.mark.parametrize("state", ["", "forged-state-value"])
async def test_a_logout_return_with_a_wrong_or_missing_state_is_refused(bff, state):
    _, browser = bff
    await browser.login()
    r = await browser.request("POST", "/bff/logout", csrf=True)
    assert query_of(r.headers["location"])["state"] != state
    r = await browser.get(f"/bff/post-logout?state={state}", headers={"accept": "text/html"})
    assert r.status_code == 400
    assert "logout_state_mismatch" in r.text and "Sign-out not recognised" in r.text
    assert (await browser.get("/bff/user", csrf=True)).status_code == 401  # signed out anyway


async def test_a_logout_return_without_a_logout_started_in_this_browser_is_refused(bff):
    _, browser = bff
    r = await browser.get("/bff/post-logout?state=abc", csrf=True)
    assert r.status_code == 400
    assert r.json()["error"] == "logout_state_mismatch"
