"""Attacks a malicious site or network position tries against the browser-facing endpoints.
Each test performs the attack and fails if it works.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

import pytest

from bff.security.cookies import CookieCodec
from tests.support import B64URL, SECRET, query_of
from tests.unit.test_redirects import BYPASSES

CROSS_SITE = [
    {"sec-fetch-site": "cross-site"},
    {"origin": "https://evil.example.com"},
    {"origin": "null"},
    {"origin": "http://localhost:8080.evil.example.com"},
]


@pytest.mark.parametrize("target", [b for b in BYPASSES if b])
async def test_open_redirect_through_return_to(bff, target):
    _, browser = bff
    r = await browser.login(return_to=target)
    assert r.status_code == 302
    location = urlsplit(r.headers["location"])
    assert (location.scheme, location.netloc) == ("http", "localhost:8080"), r.headers["location"]
    assert r.headers["location"] == "http://localhost:8080/"


async def test_login_csrf_callback_without_the_browsers_own_transaction(make_bff):
    """The attacker starts a login in their own browser and sends the victim the callback URL."""
    app, attacker = await make_bff()
    victim = await make_bff.new_browser(app)
    r = await attacker.start_login()
    r = await attacker.authorize(r.headers["location"], user="bob")
    r = await victim.get(r.headers["location"])
    assert r.status_code == 400
    assert r.json()["error"] == "browser_mismatch"
    assert not any(k.endswith("bff_session") for k in victim.cookies)


async def test_callback_forged_without_any_login(bff):
    _, browser = bff
    r = await browser.get("/bff/callback?code=stolen&state=guessed")
    assert r.status_code == 400
    assert r.json()["error"] == "unknown_state"


async def test_session_fixation_a_planted_cookie_is_never_adopted(make_bff, redis_server):
    app, attacker = await make_bff()
    await attacker.login("bob")
    planted = attacker.cookies["bff_session"]
    victim = await make_bff.new_browser(app)
    victim.cookies["bff_session"] = planted  # cookie tossing
    await victim.login("alice")
    assert victim.cookies["bff_session"] != planted
    # The planted session was ended, and the attacker's copy does not see Alice.
    assert (await attacker.get("/bff/user", csrf=True)).status_code == 401


async def test_a_made_up_session_id_is_not_adopted_at_login(bff):
    _, browser = bff
    browser.cookies["bff_session"] = CookieCodec((SECRET,), "bff.session").encode("attacker-chosen-id")
    await browser.login()
    assert (
        CookieCodec((SECRET,), "bff.session").decode(browser.cookies["bff_session"]) != "attacker-chosen-id"
    )


@pytest.mark.parametrize("headers", [{}, {"x-csrf": "0"}, {"x-csrf": "true"}, *CROSS_SITE])
@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/bff/user"),
        ("POST", "/bff/logout"),
        ("GET", "/bff/sessions"),
        ("DELETE", "/bff/sessions"),
        ("GET", "/api/echo"),
        ("POST", "/api/echo"),
        ("DELETE", "/api/echo"),
    ],
)
async def test_csrf_on_xhr_endpoints(bff, method, path, headers):
    _, browser = bff
    await browser.login()
    h = dict(headers)
    if "origin" in h or "sec-fetch-site" in h:
        h["x-csrf"] = "1"  # even with the header, a cross-site request is refused
    r = await browser.request(method, path, headers=h)
    assert r.status_code == 403, (method, path, headers, r.status_code)
    assert (await browser.get("/bff/user", csrf=True)).status_code == 200


@pytest.mark.parametrize("headers", CROSS_SITE)
async def test_cross_site_navigation_to_login_and_logout_is_refused(bff, headers):
    _, browser = bff
    await browser.login()
    logout_url = (await browser.get("/bff/user", csrf=True)).json()["logout_url"]
    assert (await browser.get("/bff/login", headers=headers)).status_code == 403
    assert (await browser.get(logout_url, headers=headers)).status_code == 403
    assert (await browser.get("/bff/user", csrf=True)).status_code == 200


async def test_same_origin_and_same_site_fetch_metadata_pass(bff):
    _, browser = bff
    await browser.login()
    for site in ("same-origin", "same-site", "none"):
        r = await browser.get(
            "/bff/user", csrf=True, headers={"sec-fetch-site": site, "origin": "http://localhost:8080"}
        )
        assert r.status_code == 200


async def test_mix_up_iss_mismatch_in_the_authorization_response(bff, idp):
    _, browser = bff
    idp.configure(iss_override="https://attacker-idp.example.com")
    r = await browser.login()
    assert r.status_code == 400
    assert r.json()["error"] == "iss_mismatch"
    assert "bff_session" not in browser.cookies


async def test_mix_up_iss_missing_though_the_idp_advertises_it(bff, idp):
    _, browser = bff
    idp.configure(iss_param=False)
    r = await browser.login()
    assert r.status_code == 400
    assert r.json()["error"] == "iss_missing"


async def test_state_and_code_replay(bff, idp):
    """A replayed callback never redeems its code again: a signed-in browser goes back to the
    app with its session unchanged; a signed-out one gets unknown_state."""
    _, browser = bff
    r = await browser.start_login()
    r = await browser.authorize(r.headers["location"])
    callback = r.headers["location"]
    assert (await browser.get(callback)).status_code == 302
    first = browser.cookies["bff_session"]
    exchanges = idp.stats()["stats"]["authorization_code"]
    r = await browser.get(callback)  # the same state and code again
    assert r.status_code == 302 and r.headers["location"] == "http://localhost:8080/"
    assert browser.cookies["bff_session"] == first
    del browser.cookies["bff_session"]
    r = await browser.get(callback)
    assert r.status_code == 400
    assert r.json()["error"] == "unknown_state"
    assert idp.stats()["stats"]["authorization_code"] == exchanges


async def test_a_code_injected_into_another_login_fails_at_the_idp(make_bff):
    """The attacker's code pasted into the victim's own callback: PKCE binds it to the attacker."""
    app, attacker = await make_bff()
    victim = await make_bff.new_browser(app)
    r = await attacker.start_login()
    stolen = query_of((await attacker.authorize(r.headers["location"], "bob")).headers["location"])["code"]
    r = await victim.start_login()
    own = (await victim.authorize(r.headers["location"], "alice")).headers["location"]
    params = query_of(own)
    r = await victim.get(
        f"/bff/callback?code={quote(stolen)}&state={params['state']}&iss={quote(params['iss'])}"
    )
    assert r.status_code == 400
    assert r.json()["error"] == "code_exchange"
    assert "bff_session" not in victim.cookies


def _last_char(c: str, same_bytes: bool) -> str:
    """Another last signature character. Its two low bits are spare: flipping one of them
    keeps the signature's bytes (another spelling), flipping a high bit changes them."""
    return B64URL[B64URL.index(c) ^ (1 if same_bytes else 32)]


@pytest.mark.parametrize(
    "tamper",
    ["flip_signature", "spare_bits", "padded", "flip_id", "unsigned", "retired_key", "other_purpose"],
)
async def test_cookie_tampering(bff, tamper):
    _, browser = bff
    await browser.login()
    value = browser.cookies["bff_session"]
    sid, _, sig = value.rpartition(".")
    forged = {
        "flip_signature": f"{sid}.{sig[:-1]}{_last_char(sig[-1], same_bytes=False)}",
        "spare_bits": f"{sid}.{sig[:-1]}{_last_char(sig[-1], same_bytes=True)}",
        "padded": f"{sid}.{sig}=",
        "flip_id": f"{sid[:-1]}{'A' if sid[-1] != 'A' else 'B'}.{sig}",
        "unsigned": sid,
        "retired_key": CookieCodec(("retired-key-retired-key-retired-key-0000",), "bff.session").encode(sid),
        "other_purpose": CookieCodec((SECRET,), "bff.login-binding").encode(sid),
    }[tamper]
    browser.cookies["bff_session"] = forged
    assert (await browser.get("/bff/user", csrf=True)).status_code == 401
    assert (await browser.get("/api/echo", csrf=True)).status_code == 401


async def test_rotated_signing_key_keeps_sessions_and_retired_key_ends_them(make_bff):
    new = "a-brand-new-signing-key-that-is-long-enough-123"
    app, browser = await make_bff()
    await browser.login()
    rotated_app, _ = await make_bff(BFF_SECRET_KEY=f"{new},{SECRET}")
    rotated = await make_bff.new_browser(rotated_app)
    rotated.cookies = dict(browser.cookies)
    assert (await rotated.get("/bff/user", csrf=True)).status_code == 200
    retired_app, _ = await make_bff(BFF_SECRET_KEY=new)
    retired = await make_bff.new_browser(retired_app)
    retired.cookies = dict(browser.cookies)
    assert (await retired.get("/bff/user", csrf=True)).status_code == 401


async def test_oversized_headers_and_bodies_get_clear_4xx(make_bff):
    _, browser = await make_bff(BFF_MAX_HEADER_SIZE="4096", BFF_MAX_BODY_SIZE="2048")
    r = await browser.get("/bff/user", csrf=True, headers={"x-big": "a" * 5000})
    assert r.status_code == 431
    assert r.json()["error"] == "headers_too_large"
    r = await browser.request(
        "POST",
        "/bff/backchannel-logout",
        content=b"logout_token=" + b"a" * 5000,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 413

    async def chunks():
        for _ in range(10):
            yield b"logout_token=" + b"a" * 500

    r = await browser.request(
        "POST",
        "/bff/backchannel-logout",
        content=chunks(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 413


async def test_bff_answers_are_never_cached_and_are_nosniff(bff):
    _, browser = bff
    await browser.login()
    for path in ("/bff/user", "/bff/sessions", "/bff/nope"):
        r = await browser.get(path, csrf=True)
        assert r.headers["cache-control"] == "no-store", path
        assert r.headers["x-content-type-options"] == "nosniff"
    r = await browser.start_login()
    assert r.headers["cache-control"] == "no-store"
