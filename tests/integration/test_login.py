"""The login round trip against the real test provider and a real redis-server."""

from __future__ import annotations

import pytest

from tests.support import query_of


@pytest.mark.smoke
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


async def test_access_denied_at_the_idp_gives_a_clear_page_and_no_session(bff, idp):
    _, browser = bff
    idp.configure(authorize_error="access_denied")
    r = await browser.start_login()
    r = await browser.authorize(r.headers["location"])
    r = await browser.get(r.headers["location"], headers={"accept": "text/html"})
    assert r.status_code == 400
    assert "text/html" in r.headers["content-type"]
    assert "cancelled the sign-in or access was denied" in r.text
    assert "bff_session" not in browser.cookies


async def test_iss_parameter_is_optional_when_the_idp_does_not_advertise_it(make_bff, idp):
    idp.configure(iss_param=False, advertise_iss=False)
    _, browser = await make_bff()
    r = await browser.login()
    assert r.status_code == 302


@pytest.mark.parametrize("methods", [["client_secret_basic"], ["client_secret_post"]])
async def test_client_authentication_follows_what_the_idp_advertises(make_bff, idp, methods):
    idp.configure(auth_methods=methods)
    _, browser = await make_bff()
    r = await browser.login()
    assert r.status_code == 302
    assert idp.stats()["client_auth"] == methods


async def test_private_key_jwt_client_authentication(make_bff, idp):
    from joserfc.jwk import RSAKey

    key = RSAKey.generate_key(2048, parameters={"kid": "bff-key"})
    idp.configure(client_jwk=key.as_dict(private=False))
    _, browser = await make_bff(
        BFF_CLIENT_AUTH_METHOD="private_key_jwt", BFF_CLIENT_PRIVATE_KEY=key.as_pem(private=True).decode()
    )
    r = await browser.login()
    assert r.status_code == 302
    assert idp.stats()["client_auth"] == ["private_key_jwt"]


async def test_pushed_authorization_request_when_enabled(make_bff, idp):
    _, browser = await make_bff(BFF_USE_PAR="true")
    r = await browser.start_login()
    params = query_of(r.headers["location"])
    assert set(params) == {"client_id", "request_uri"}
    r = await browser.authorize(r.headers["location"])
    r = await browser.get(r.headers["location"])
    assert r.status_code == 302
    assert idp.stats()["stats"]["par"] == 1


async def test_userinfo_is_merged_and_must_name_the_same_subject(make_bff, idp):
    _, browser = await make_bff(BFF_FETCH_USERINFO="true")
    assert (await browser.login()).status_code == 302
    assert (await browser.get("/bff/user", csrf=True)).json()["claims"]["preferred_username"] == "alice"
    idp.configure(misbehave="userinfo_other_sub")
    _, other = await make_bff(BFF_FETCH_USERINFO="true")
    r = await other.login()
    assert r.status_code == 400
    assert r.json()["error"] == "userinfo_sub"


async def test_rotated_signing_keys_are_fetched_on_an_unknown_kid(bff, idp):
    app, browser = bff
    idp.rotate_keys(kid="k-new", keep_old=False)
    r = await browser.login()
    assert r.status_code == 302, r.text


async def test_every_login_gets_a_new_session_id_and_ends_the_previous_one(bff, redis_server):
    _, browser = bff
    await browser.login(user="bob")
    first = browser.cookies["bff_session"]
    await browser.login(user="alice")
    second = browser.cookies["bff_session"]
    assert first != second
    assert len(redis_server.cli("KEYS", "bff:s:*").split()) == 1
    assert (await browser.get("/bff/user", csrf=True)).json()["sub"] == "user-alice-0001"


async def test_too_many_pending_logins_in_one_browser_are_refused(make_bff):
    _, browser = await make_bff(BFF_MAX_PENDING_LOGINS="2")
    assert (await browser.start_login()).status_code == 302
    assert (await browser.start_login()).status_code == 302
    r = await browser.start_login()
    assert r.status_code == 429
    assert r.json()["error"] == "too_many_pending_logins"


async def test_userinfo_is_fetched_by_default_when_the_id_token_lacks_profile_claims(make_bff, idp):
    """Regression (found against oidc-provider): OIDC Core §5.4 lets an IdP put profile and
    email claims only in UserInfo; the default (auto) fetches them then, and only then."""
    _, browser = await make_bff()
    await browser.login()
    assert idp.stats()["stats"]["userinfo"] == 0  # the ID token had them
    idp.configure(claims_in_id_token=False)
    _, other = await make_bff()
    await other.login()
    assert idp.stats()["stats"]["userinfo"] == 1
    claims = (await other.get("/bff/user", csrf=True)).json()["claims"]
    assert claims["email"] == "alice@example.com" and claims["name"] == "Alice Example"


async def test_after_a_login_round_trip_the_browser_holds_exactly_one_bff_cookie(bff):
    _, browser = bff
    r = await browser.login()
    assert r.status_code == 302
    cleared = [c for c in browser.last_set_cookies if c.startswith("bff_login=")]
    assert cleared and "Max-Age=0" in cleared[0]
    assert sorted(browser.cookies) == ["bff_session"]


async def test_two_tabs_signing_in_keep_the_login_cookie_until_the_last_one_is_back(bff):
    _, browser = bff
    first = await browser.start_login("/one")
    second = await browser.start_login("/two")
    back_one = await browser.authorize(first.headers["location"])
    back_two = await browser.authorize(second.headers["location"])
    r = await browser.get(back_one.headers["location"])
    assert r.headers["location"].endswith("/one")
    assert "bff_login" in browser.cookies  # the other tab still needs it
    r = await browser.get(back_two.headers["location"])
    assert r.status_code == 302 and r.headers["location"].endswith("/two")
    assert sorted(browser.cookies) == ["bff_session"]
    assert (await browser.get("/bff/user", csrf=True)).status_code == 200


async def test_a_late_callback_for_a_signed_in_browser_goes_back_to_the_app_signed_in(bff):
    """A callback replayed (back button) or arriving after its login cookie is gone, in a
    browser that is signed in already, returns to the application instead of an error page."""
    _, browser = bff
    r = await browser.start_login("/later")
    back = await browser.authorize(r.headers["location"])
    assert (await browser.get(back.headers["location"])).status_code == 302
    session = browser.cookies["bff_session"]
    again = await browser.get(back.headers["location"], headers={"accept": "text/html"})
    assert again.status_code == 302, again.text
    assert again.headers["location"] == "http://localhost:8080/"
    assert browser.cookies["bff_session"] == session
    assert (await browser.get("/bff/user", csrf=True)).status_code == 200


async def test_a_replayed_callback_in_a_signed_out_browser_is_still_refused(bff):
    _, browser = bff
    r = await browser.start_login()
    back = await browser.authorize(r.headers["location"])
    assert (await browser.get(back.headers["location"])).status_code == 302
    browser.cookies.clear()
    r = await browser.get(back.headers["location"])
    assert r.status_code == 400
    assert r.json()["error"] == "unknown_state"


async def test_an_id_token_issued_a_week_ago_is_refused_at_login(bff, idp):
    _, browser = bff
    idp.configure(misbehave="stale_iat")
    r = await browser.login()
    assert r.status_code == 400
    assert r.json()["error"] == "token_iat_stale"
    assert "bff_session" not in browser.cookies


@pytest.mark.parametrize(("limit", "status"), [("600", 400), ("86400", 302)])
async def test_the_id_token_age_limit_is_a_setting(make_bff, idp, limit, status):
    """A five-hour-old ID token: refused under the default ten minutes, accepted under a day."""
    idp.configure(misbehave="iat_hours_ago")
    _, browser = await make_bff(BFF_ID_TOKEN_MAX_IAT_AGE=limit)
    r = await browser.login()
    assert r.status_code == status, r.text
