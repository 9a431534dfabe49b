"""Interoperability: the BFF against panva's oidc-provider, an OpenID Certified provider
(interop/oidc-provider/server.js), over real HTTP and real Redis.

Covers the login round trip through oidc-provider's own login and consent pages, client
authentication (client_secret_basic, client_secret_post, private_key_jwt), RFC 9207
``iss``, PAR, RS256 and ES256 ID tokens, signing key rotation, the proxied API call with an
access token oidc-provider accepts, refresh with rotation (and a burst of concurrent
calls, which oidc-provider's reuse detection punishes if the BFF races), RP-initiated
logout with revocation, and back-channel logout delivered by oidc-provider to a BFF process.

The regression tests near the end cover three interop bugs this suite found (refresh skew
as long as the token lifetime; profile/email claims only at UserInfo; ended sessions
keeping live refresh tokens) and which are fixed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from urllib.parse import parse_qs

import httpx

from tests.interop.conftest import (
    BASIC,
    CLIENT_SECRET,
    ES256,
    PKJWT,
    POST,
    PROC,
    PUBLIC_URL,
    OidcProvider,
    expire_access_token,
    login,
    record_idp,
    start_op,
    stored_session,
    walk,
)
from tests.support import query_of

# oidc-provider issues refresh tokens for offline_access only, and OIDC Core §11 makes that
# scope need prompt=consent.
CONSENT = {"BFF_SCOPES": "openid profile email offline_access", "BFF_EXTRA_AUTH_PARAMS": "prompt=consent"}
DUE = 1.1  # seconds until a 60 s access token is due under BFF_TOKEN_REFRESH_SKEW=59


def refreshes(op: OidcProvider, since: int = 0) -> int:
    grants = op.events("grant.success")[since:]
    return sum(1 for g in grants if g["grant_type"] == "refresh_token")


def grant_mark(op: OidcProvider) -> int:
    return len(op.events("grant.success"))


def errors_since(op: OidcProvider, mark: int) -> list[dict[str, object]]:
    """oidc-provider's error events (grant.error, revocation.error, ...) after ``mark``."""
    return [e for e in op.events()[mark:] if str(e["event"]).endswith("error")]


# --- discovery and login --------------------------------------------------------------


async def test_bff_accepts_oidc_providers_metadata_and_keys(op, make_interop_bff):
    app, browser = await make_interop_bff(op)
    meta = await app.services.provider.metadata()
    assert meta.issuer == op.issuer
    assert meta.authorization_response_iss_parameter_supported is True
    assert meta.end_session_endpoint == f"{op.issuer}/session/end"
    assert meta.revocation_endpoint == f"{op.issuer}/token/revocation"
    # oidc-provider publishes an RSA and an EC key; the ID token names its key by kid.
    assert {k.key_type for k in (await app.services.provider.keys()).keys} == {"RSA", "EC"}
    assert (await browser.get("/readyz")).status_code == 200


async def test_login_round_trip_with_client_secret_basic(op, make_interop_bff):
    mark = len(op.events())
    app, browser = await make_interop_bff(op, BASIC, BFF_FETCH_USERINFO="true")
    start = await browser.start_login("/after/login?x=1")
    auth = query_of(start.headers["location"])
    assert start.headers["location"].startswith(f"{op.issuer}/auth?")
    assert auth["code_challenge_method"] == "S256"
    assert auth["client_id"] == BASIC
    assert auth["redirect_uri"] == f"{PUBLIC_URL}/bff/callback"

    w = await walk(browser.idp, start.headers["location"], f"{PUBLIC_URL}/bff/callback")
    assert w.pages == ["login", "consent"]
    callback = query_of(w.location)
    assert callback["iss"] == op.issuer  # RFC 9207, checked by the BFF
    r = await browser.get(w.location)
    assert r.status_code == 302, r.text
    assert r.headers["location"] == f"{PUBLIC_URL}/after/login?x=1"
    assert "bff_session" in browser.cookies

    me = await browser.get("/bff/user", csrf=True)
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["sub"] == "alice"
    assert body["claims"]["email"] == "alice@example.com"
    assert body["claims"]["name"] == "Alice Example"
    session = await stored_session(app, browser)
    assert session.idp_sid  # backchannel_logout_session_required: oidc-provider puts sid in
    # The access token the BFF keeps is one oidc-provider honours.
    assert op.userinfo(session.access_token).json()["sub"] == "alice"
    assert errors_since(op, mark) == []


async def test_login_round_trip_with_client_secret_post(op, make_interop_bff):
    app, browser = await make_interop_bff(
        op, POST, BFF_CLIENT_AUTH_METHOD="client_secret_post", BFF_FETCH_USERINFO="true", **CONSENT
    )
    r, w = await login(browser, "bob")
    assert r.status_code == 302, r.text
    me = (await browser.get("/bff/user", csrf=True)).json()
    assert me["sub"] == "bob"
    assert me["claims"]["email"] == "bob@example.com"
    session = await stored_session(app, browser)
    assert session.refresh_token
    assert op.introspect(session.refresh_token, POST)["active"] is True
    r = await browser.request("POST", "/bff/logout", csrf=True)
    assert r.status_code == 302
    assert op.introspect(session.refresh_token, POST)["active"] is False  # revoked, as POST


async def test_client_authentication_is_sent_as_configured(op, make_interop_bff):
    """oidc-provider accepts either secret method from a secret client, so look at what the
    BFF sent: the form-encoded secret in Basic (RFC 6749 §2.3.1) or in the body."""
    for method, client_id in (("auto", BASIC), ("client_secret_basic", BASIC), ("client_secret_post", POST)):
        app, browser = await make_interop_bff(op, client_id, BFF_CLIENT_AUTH_METHOD=method)
        seen = record_idp(app)
        r, _ = await login(browser, "bob")
        assert r.status_code == 302, (method, r.text)
        (token,) = [a.request for a in seen if a.request.url.path == "/token"]
        form = parse_qs(token.content.decode())
        if method == "client_secret_post":
            assert "authorization" not in token.headers
            assert form["client_secret"] == [CLIENT_SECRET]
        else:
            assert token.headers["authorization"].startswith("Basic ")
            assert "client_secret" not in form


async def test_login_and_logout_with_private_key_jwt(op, make_interop_bff):
    """RFC 7523 client assertions (ES256) at the token, PAR and revocation endpoints."""
    mark = len(op.events())
    app, browser = await make_interop_bff(op, PKJWT, BFF_USE_PAR="true", **CONSENT)
    seen = record_idp(app)
    r, _ = await login(browser)
    assert r.status_code == 302, r.text
    (token,) = [a.request for a in seen if a.request.url.path == "/token"]
    form = parse_qs(token.content.decode())
    assert form["client_assertion_type"] == ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]
    assert "authorization" not in token.headers
    session = await stored_session(app, browser)
    assert op.introspect(session.refresh_token)["active"] is True
    r = await browser.request("POST", "/bff/logout", csrf=True)
    assert r.status_code == 302
    revocation = [a for a in seen if a.request.url.path == "/token/revocation"]
    assert [a.status_code for a in revocation] == [200]
    assert errors_since(op, mark) == []
    assert op.introspect(session.refresh_token)["active"] is False


async def test_login_with_pushed_authorization_request(op, make_interop_bff):
    mark = len(op.events())
    app, browser = await make_interop_bff(op, BASIC, BFF_USE_PAR="true")
    start = await browser.start_login()
    params = query_of(start.headers["location"])
    assert set(params) == {"client_id", "request_uri"}
    assert params["request_uri"].startswith("urn:ietf:params:oauth:request_uri:")
    w = await walk(browser.idp, start.headers["location"], f"{PUBLIC_URL}/bff/callback")
    r = await browser.get(w.location)
    assert r.status_code == 302, r.text
    assert (await browser.get("/bff/user", csrf=True)).json()["sub"] == "alice"
    assert errors_since(op, mark) == []


async def test_second_login_reuses_the_idp_session_without_pages(op, make_interop_bff):
    _, browser = await make_interop_bff(op)
    r, w = await login(browser)
    assert w.pages == ["login", "consent"]
    r, w = await login(browser)
    assert r.status_code == 302, r.text
    assert w.pages == []  # SSO: oidc-provider answers at once, the BFF makes a new session
    assert (await browser.get("/bff/user", csrf=True)).status_code == 200


async def test_es256_signed_id_token(op, make_interop_bff):
    """A client registered with id_token_signed_response_alg ES256: the BFF is told so."""
    app, browser = await make_interop_bff(op, ES256, BFF_ID_TOKEN_ALGS="ES256")
    r, _ = await login(browser)
    assert r.status_code == 302, r.text
    session = await stored_session(app, browser)
    header = json.loads(base64.urlsafe_b64decode(session.id_token.split(".")[0] + "=="))
    assert header["alg"] == "ES256"
    assert header["kid"].startswith("ec-")


async def test_signing_key_rotation_at_oidc_provider(bff_proc_port, make_interop_bff):
    """oidc-provider restarts with new keys (and, in memory, forgets its grants): the BFF
    fetches the new JWKS for the unknown kid, and ends a session whose refresh token the
    provider no longer knows (invalid_grant) with a clean 401."""
    op = start_op("rotation", bff_proc_port)
    try:
        app, browser = await make_interop_bff(op, BASIC, **CONSENT)
        r, _ = await login(browser)
        assert r.status_code == 302, r.text
        old_kid = (await app.services.provider.keys()).keys[0].kid
        op.stop()
        op.start()
        await expire_access_token(app, browser)
        r = await browser.get("/api/echo", csrf=True)
        assert r.status_code == 401, r.text
        assert (await browser.get("/bff/user", csrf=True)).status_code == 401

        r, w = await login(browser)
        assert w.pages == ["login", "consent"]
        assert r.status_code == 302, r.text
        assert old_kid not in {k.kid for k in (await app.services.provider.keys()).keys}
        assert (await browser.get("/api/echo", csrf=True)).status_code == 200
    finally:
        op.stop()


async def test_user_cancelling_at_oidc_provider_is_a_clear_access_denied(op, make_interop_bff):
    _, browser = await make_interop_bff(op)
    start = await browser.start_login()
    w = await walk(browser.idp, start.headers["location"], f"{PUBLIC_URL}/bff/callback", abort=True)
    assert w.pages == ["login:abort"]
    params = query_of(w.location)
    assert params["error"] == "access_denied"
    assert params["iss"] == op.issuer
    r = await browser.get(w.location)
    assert r.status_code == 400
    assert r.json()["error"] == "access_denied"
    assert "bff_session" not in browser.cookies


async def test_a_tampered_iss_is_refused(op, make_interop_bff):
    _, browser = await make_interop_bff(op)
    start = await browser.start_login()
    w = await walk(browser.idp, start.headers["location"], f"{PUBLIC_URL}/bff/callback")
    r = await browser.get(w.location.replace("iss=http", "iss=https"))
    assert r.status_code == 400
    assert "bff_session" not in browser.cookies


# --- the API proxy and refresh --------------------------------------------------------


async def test_api_call_carries_an_access_token_oidc_provider_accepts(op, make_interop_bff):
    app, browser = await make_interop_bff(op, BASIC, BFF_TOKEN_REFRESH_SKEW="10", **CONSENT)
    await login(browser)
    r = await browser.get("/api/echo/x", csrf=True)
    assert r.status_code == 200, r.text
    (auth,) = r.json()["headers"]["authorization"]
    assert auth.startswith("Bearer ")
    token = auth.removeprefix("Bearer ")
    session = await stored_session(app, browser)
    assert token == session.access_token
    assert abs(session.access_expires_at - (time.time() + 60)) < 5  # expires_in: 60
    assert op.introspect(token)["active"] is True
    assert op.introspect(token)["client_id"] == BASIC
    assert op.userinfo(token).json()["sub"] == "alice"


async def test_refresh_rotates_tokens_at_oidc_provider(op, make_interop_bff):
    # Access tokens live 60 s; with a refresh skew of 59 s one is due a second after issue.
    app, browser = await make_interop_bff(op, BASIC, BFF_TOKEN_REFRESH_SKEW="59", **CONSENT)
    r, w = await login(browser)
    assert w.pages == ["login", "consent"]
    first = await stored_session(app, browser)
    assert first.refresh_token, "offline_access with prompt=consent yields a refresh token"
    mark, since = grant_mark(op), len(op.events())
    seen = record_idp(app)

    tokens = []
    for _ in range(2):
        await asyncio.sleep(DUE)
        r = await browser.get("/api/echo", csrf=True)
        assert r.status_code == 200, r.text
        tokens.append(r.json()["headers"]["authorization"][0].removeprefix("Bearer "))
    assert refreshes(op, mark) == 2
    assert tokens[0] != tokens[1] != first.access_token
    assert op.introspect(tokens[1])["active"] is True
    now = await stored_session(app, browser)
    assert now.refresh_token != first.refresh_token  # rotated
    # oidc-provider sends an ID token with each refresh; the BFF validated and kept it.
    last = [a for a in seen if a.request.url.path == "/token"][-1].json()
    assert now.id_token == last["id_token"] != first.id_token
    assert now.refresh_token == last["refresh_token"]
    # The rotated-away refresh token is spent; presenting it again would revoke the grant.
    assert op.introspect(first.refresh_token)["active"] is False
    assert op.introspect(now.refresh_token)["active"] is True
    assert errors_since(op, since) == []
    me = await browser.get("/bff/user", csrf=True)
    assert me.json()["sub"] == "alice"


async def test_concurrent_calls_share_one_refresh(op, make_interop_bff):
    """oidc-provider revokes the whole grant when a rotated refresh token is used twice;
    a BFF that refreshed once per concurrent call would lose the session."""
    app, browser = await make_interop_bff(op, BASIC, BFF_TOKEN_REFRESH_SKEW="59", **CONSENT)
    await login(browser)
    mark = grant_mark(op)
    await asyncio.sleep(DUE)
    results = await asyncio.gather(*(browser.get("/api/echo", csrf=True) for _ in range(8)))
    assert [r.status_code for r in results] == [200] * 8
    assert refreshes(op, mark) == 1
    session = await stored_session(app, browser)
    assert op.introspect(session.refresh_token)["active"] is True


async def test_without_prompt_consent_oidc_provider_issues_no_refresh_token(op, make_interop_bff):
    """OIDC Core §11: offline_access is ignored unless prompt contains consent. With the
    BFF's default request (no prompt) oidc-provider returns no refresh token, and the
    session ends when the access token expires."""
    app, browser = await make_interop_bff(op, BASIC, BFF_SCOPES=CONSENT["BFF_SCOPES"])
    start = await browser.start_login()
    assert "prompt" not in query_of(start.headers["location"])
    assert "offline_access" in query_of(start.headers["location"])["scope"].split()
    w = await walk(browser.idp, start.headers["location"], f"{PUBLIC_URL}/bff/callback")
    assert (await browser.get(w.location)).status_code == 302
    session = await stored_session(app, browser)
    assert session.refresh_token is None
    assert "offline_access" not in op.introspect(session.access_token)["scope"].split()
    await expire_access_token(app, browser)
    r = await browser.get("/api/echo", csrf=True)
    assert r.status_code == 401
    assert (await browser.get("/bff/user", csrf=True)).status_code == 401


async def test_operator_choices_refresh_always_par_required_claims_in_id_token(op_lenient, make_interop_bff):
    """oidc-provider as operators often configure it: refresh tokens without offline_access
    and prompt=consent, PAR required (the BFF follows the metadata), scope claims in the ID
    token, and the stock rotation policy (no rotation of a young refresh token)."""
    app, browser = await make_interop_bff(op_lenient, BASIC)
    assert (await app.services.provider.metadata()).require_pushed_authorization_requests
    start = await browser.start_login()
    assert "request_uri" in query_of(start.headers["location"])
    w = await walk(browser.idp, start.headers["location"], f"{PUBLIC_URL}/bff/callback")
    assert (await browser.get(w.location)).status_code == 302
    first = await stored_session(app, browser)
    assert first.refresh_token
    mark = grant_mark(op_lenient)
    await expire_access_token(app, browser)
    r = await browser.get("/api/echo", csrf=True)
    assert r.status_code == 200, r.text
    assert refreshes(op_lenient, mark) == 1
    now = await stored_session(app, browser)
    assert now.refresh_token == first.refresh_token  # not rotated, and still good
    assert now.access_token != first.access_token
    assert op_lenient.introspect(now.refresh_token)["active"] is True
    claims = (await browser.get("/bff/user", csrf=True)).json()["claims"]
    assert claims["email"] == "alice@example.com"


async def test_default_skew_uses_a_fresh_short_lived_token_without_refresh_token(op, make_interop_bff):
    app, browser = await make_interop_bff(op)
    await login(browser)
    assert (await stored_session(app, browser)).refresh_token is None
    r = await browser.get("/api/echo", csrf=True)  # the access token is good for 60 s more
    assert r.status_code == 200, r.text


async def test_default_skew_does_not_refresh_a_fresh_short_lived_token(op, make_interop_bff):
    _, browser = await make_interop_bff(op, BASIC, **CONSENT)
    await login(browser)
    mark = grant_mark(op)
    for _ in range(3):
        assert (await browser.get("/api/echo", csrf=True)).status_code == 200
    assert refreshes(op, mark) == 0


async def test_default_settings_show_the_users_email_and_name(op, make_interop_bff):
    _, browser = await make_interop_bff(op)
    await login(browser)
    claims = (await browser.get("/bff/user", csrf=True)).json()["claims"]
    assert claims.get("email") == "alice@example.com"
    assert claims.get("name") == "Alice Example"


# --- logout ---------------------------------------------------------------------------


async def test_a_new_login_in_the_same_browser_keeps_the_grant_alive(op, make_interop_bff):
    """oidc-provider revokes the whole grant when one of its refresh tokens is revoked, and a
    second login in the same browser continues the same grant. The BFF replaces the old
    session (session fixation defence) without revoking its refresh token, and must keep
    doing so: revoking it would kill the new session's tokens too."""
    app, browser = await make_interop_bff(op, BASIC, **CONSENT)
    await login(browser)
    old = await stored_session(app, browser)
    await login(browser)
    new = await stored_session(app, browser)
    assert new.id != old.id
    assert op.introspect(new.refresh_token)["active"] is True
    assert op.introspect(new.refresh_token)["sid"] == op.introspect(old.refresh_token)["sid"]
    assert (await browser.get("/api/echo", csrf=True)).status_code == 200


async def test_ending_sessions_from_the_session_list_revokes_their_refresh_tokens(op, make_interop_bff):
    """Three browsers (three oidc-provider sessions, three grants): one ends another's
    session, then logs out everywhere; each ended session's refresh token should die."""
    browsers, tokens = [], []
    for _ in range(3):
        app, browser = await make_interop_bff(op, BASIC, **CONSENT)
        await login(browser)
        browsers.append(browser)
        tokens.append((await stored_session(app, browser)).refresh_token)
    assert all(op.introspect(t)["active"] for t in tokens)
    listed = (await browsers[0].get("/bff/sessions", csrf=True)).json()["sessions"]
    assert len(listed) == 3
    other = next(s["id"] for s in listed if not s["current"])
    assert (await browsers[0].request("DELETE", f"/bff/sessions/{other}", csrf=True)).status_code == 204
    assert (await browsers[0].request("DELETE", "/bff/sessions", csrf=True)).status_code == 204
    for browser in browsers:
        assert (await browser.get("/bff/user", csrf=True)).status_code == 401
    assert [op.introspect(t)["active"] for t in tokens] == [False, False, False]


async def test_rp_initiated_logout_revokes_and_ends_the_idp_session(op, make_interop_bff):
    app, browser = await make_interop_bff(op, BASIC, **CONSENT)
    await login(browser)
    session = await stored_session(app, browser)
    assert op.introspect(session.refresh_token)["active"] is True
    mark = len(op.events())

    r = await browser.request("POST", "/bff/logout", csrf=True)
    assert r.status_code == 302, r.text
    location = r.headers["location"]
    assert location.startswith(f"{op.issuer}/session/end?")
    params = query_of(location)
    assert params["client_id"] == BASIC
    assert params["post_logout_redirect_uri"] == f"{PUBLIC_URL}/bff/post-logout"
    assert params["state"]
    assert params["id_token_hint"] == session.id_token
    # RFC 7009 revocation by the BFF, before the browser even reaches oidc-provider.
    assert [(e["event"], e["route"]) for e in op.events()[mark:]] == [("grant.revoked", "revocation")]
    assert op.introspect(session.refresh_token)["active"] is False
    assert op.introspect(session.access_token)["active"] is False
    assert (await browser.get("/bff/user", csrf=True)).status_code == 401

    w = await walk(browser.idp, location, f"{PUBLIC_URL}/")
    assert w.pages == ["logout"]
    # Back at the BFF's landing with the logout's state, which sends the browser on.
    assert w.location.startswith(f"{PUBLIC_URL}/bff/post-logout?")
    assert query_of(w.location)["state"] == params["state"]
    r = await browser.get(w.location)
    assert (r.status_code, r.headers["location"]) == (302, f"{PUBLIC_URL}/")
    # oidc-provider's session is over: the next login asks for the password again.
    r, w = await login(browser)
    assert r.status_code == 302
    assert w.pages[0] == "login"


async def test_backchannel_logout_from_oidc_provider_ends_the_bff_session(op, bff_process):
    browser = await bff_process.browser()
    r, _ = await login(browser)
    assert r.status_code == 302, r.text
    assert (await browser.get("/bff/user", csrf=True)).status_code == 200
    mark = len(op.events())

    # The user logs out at oidc-provider itself (not through the BFF): oidc-provider ends
    # its session and POSTs a logout token to the BFF's backchannel_logout_uri.
    w = await walk(browser.idp, f"{op.issuer}/session/end", f"{op.issuer}/session/end/success")
    assert w.pages == ["logout"]
    events = op.events()[mark:]
    delivered = [e for e in events if e["event"].startswith("backchannel")]
    assert [e["event"] for e in delivered] == ["backchannel.success"], events
    assert delivered[0]["client_id"] == PROC and delivered[0]["sid"]
    assert (await browser.get("/bff/user", csrf=True)).status_code == 401


async def test_backchannel_logout_by_sid_and_by_sub(op, bff_process):
    alice1, alice2, bob = [await bff_process.browser() for _ in range(3)]
    for browser, user in ((alice1, "alice"), (alice2, "alice"), (bob, "bob")):
        r, _ = await login(browser, user)
        assert r.status_code == 302, r.text
    sid = (await alice1.get("/bff/user", csrf=True)).json()["claims"]["sid"]

    assert op.backchannel_logout(PROC, "alice", sid) == {"delivered": True}
    assert (await alice1.get("/bff/user", csrf=True)).status_code == 401
    assert (await alice2.get("/bff/user", csrf=True)).status_code == 200

    # A logout token without sid names every session of the subject.
    assert op.backchannel_logout(PROC, "alice") == {"delivered": True}
    assert (await alice2.get("/bff/user", csrf=True)).status_code == 401
    assert (await bob.get("/bff/user", csrf=True)).status_code == 200


async def test_rp_initiated_logout_through_a_bff_process(op, bff_process):
    """The whole logout as deployed: the BFF revokes, the browser confirms at oidc-provider,
    oidc-provider then posts a back-channel logout for the (already ended) session, which
    the BFF acknowledges, and sends the browser back to the BFF."""
    browser = await bff_process.browser()
    await login(browser)
    mark = len(op.events())
    r = await browser.request("POST", "/bff/logout", csrf=True)
    assert r.status_code == 302, r.text
    w = await walk(browser.idp, r.headers["location"], f"{bff_process.url}/")
    assert w.location.startswith(f"{bff_process.url}/bff/post-logout?state=")
    back = await browser.get(w.location)
    assert (back.status_code, back.headers["location"]) == (302, f"{bff_process.url}/")
    events = [e["event"] for e in op.events()[mark:]]
    assert "backchannel.success" in events, op.events()[mark:]
    assert not [e for e in events if e.endswith("error")], op.events()[mark:]
    assert (await browser.get("/bff/user", csrf=True)).status_code == 401
    async with httpx.AsyncClient() as plain:
        assert (await plain.get(f"{bff_process.url}/readyz")).status_code == 200
