"""Device-bound sessions (W3C DBSC) with a scripted DBSC client (an ES256 software key, the
proofs Chrome sends) against real BFF processes and in-process apps, real Redis and the
test provider: registration and its refusals, the gate, refresh, theft, two processes
sharing challenges, the required mode's grace, skips, the browser-change policy, logout."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import http_sf
import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from bff.dbsc.cookie import BoundCookies
from tests.dbsc_client import DbscClient
from tests.support import SECRET, Browser, bff_processes

OPTIONAL = {"BFF_DEVICE_BOUND_SESSIONS": "optional"}
WINDOWS_FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:140.0) Gecko/20100101 Firefox/140.0"


async def bound(make_bff: Any, **settings: str) -> tuple[Any, Browser, DbscClient]:
    app, browser = await make_bff(**{**OPTIONAL, **settings})
    callback = await browser.login()
    client = DbscClient(browser)
    r = await client.register(callback)
    assert r.status_code == 200, r.text
    return app, browser, client


async def test_the_session_creating_response_offers_dbsc_and_registration_binds_the_session(make_bff):
    _, browser = await make_bff(**OPTIONAL)
    callback = await browser.login()
    path, challenge = DbscClient.offer(callback)
    assert path == "/bff/dbsc/register" and len(challenge) >= 32
    user = await browser.get("/bff/user", csrf=True)
    assert user.json()["device_binding"] == {"state": "unbound", "deadline": None}
    assert DbscClient.offer(user)[1] != challenge  # repeated, with a fresh challenge
    client = DbscClient(browser)
    r = await client.register(callback)
    assert r.status_code == 200, r.text
    instructions = r.json()
    assert instructions["refresh_url"] == "/bff/dbsc/refresh"
    assert instructions["session_identifier"].startswith("dbsc-")
    assert instructions["scope"]["origin"] == "http://localhost:8080"
    assert instructions["scope"]["include_site"] is False
    excluded = {s["path"] for s in instructions["scope"]["scope_specification"] if s["type"] == "exclude"}
    assert excluded == {"/bff/dbsc/", "/bff/logout"}
    (credential,) = instructions["credentials"]
    set_cookie = next(c for c in browser.last_set_cookies if c.startswith("bff_bound="))
    assert credential["name"] == "bff_bound"
    set_attributes = [a.strip() for a in set_cookie.split(";")[1:]]
    assert credential["attributes"] == "; ".join(a for a in set_attributes if not a.startswith("Max-Age"))
    for attribute in ("HttpOnly", "Path=/", "SameSite=Lax", "Max-Age=600"):
        assert attribute in set_cookie
    assert "secure-session-challenge" in r.headers  # the next refresh's challenge, sent ahead
    user = await browser.get("/bff/user", csrf=True)
    assert user.json()["device_binding"]["state"] == "bound"
    assert "secure-session-registration" not in user.headers
    assert (await client.register(callback)).status_code == 400  # one registration per session


@pytest.mark.parametrize("bad", ["wrong_challenge", "bad_signature", "alg_none", "no_jwk", "wrong_aud"])
async def test_a_bad_registration_proof_is_refused_and_the_session_stays_unbound(make_bff, bad):
    _, browser = await make_bff(**OPTIONAL)
    callback = await browser.login()
    client = DbscClient(browser)
    _, challenge = client.offer(callback)
    other = ECKey.generate_key("P-256")
    proofs = {
        "wrong_challenge": client.proof("not-the-challenge", jwk=True),
        # signed by another key than the jwk it carries
        "bad_signature": jwt.encode(
            {"typ": "dbsc+jwt", "alg": "ES256", "jwk": client.key.as_dict(private=False)},
            {"jti": challenge},
            other,
            algorithms=["ES256"],
        ),
        "alg_none": ".".join(
            [
                _b64({"typ": "dbsc+jwt", "alg": "none", "jwk": client.key.as_dict(private=False)}),
                _b64({"jti": challenge}),
                "",
            ]
        ),
        "no_jwk": client.proof(challenge, jwk=False),
        "wrong_aud": client.proof(challenge, jwk=True, aud="https://evil.example.com/register"),
    }
    r = await client.register(callback, proofs[bad])
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith("dbsc_")
    assert (await browser.get("/bff/user", csrf=True)).json()["device_binding"]["state"] == "unbound"


def _b64(value: dict[str, Any]) -> str:
    import base64

    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


async def test_a_registration_proof_replayed_on_another_session_is_refused(make_bff):
    app, first = await make_bff(**OPTIONAL)
    callback = await first.login()
    client = DbscClient(first)
    _, challenge = client.offer(callback)
    proof = client.proof(challenge, jwk=True)
    assert (await client.register(callback, proof)).status_code == 200
    second = await make_bff.new_browser(app)
    other_callback = await second.login()
    r = await DbscClient(second).register(other_callback, proof)  # the first session's challenge
    assert r.status_code == 400 and r.json()["error"] == "dbsc_challenge"
    assert "bff_bound" not in second.cookies
    assert (await second.get("/bff/user", csrf=True)).json()["device_binding"]["state"] == "unbound"


async def test_requests_sent_while_the_registration_was_in_flight_still_pass(make_bff):
    """For a few seconds after the binding, a request without any bound cookie passes (the
    browser sent it before it had one); a wrong bound cookie never does."""
    _, browser, _ = await bound(make_bff)
    good = browser.cookies.pop("bff_bound")
    assert (await browser.get("/bff/sessions", csrf=True)).status_code == 200
    browser.cookies["bff_bound"] = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
    assert (await browser.get("/bff/sessions", csrf=True)).status_code == 401


async def test_a_bound_session_needs_its_valid_bound_cookie_for_every_use(make_bff, app_session):
    app, browser, client = await bound(make_bff)
    app.services.binding.race_window = 0  # past the registration's few seconds
    session = await app_session(app, browser)
    good = browser.cookies.pop("bff_bound")
    bound_cookies = BoundCookies((SECRET,), 600)
    jkt = json.loads(session.dbsc_key)["jkt"]
    values = {
        "missing": None,
        "expired": bound_cookies.mint(session.id, jkt, now=0),
        "another key": bound_cookies.mint(session.id, "another-thumbprint"),
        "tampered": good[:-2] + ("AA" if not good.endswith("AA") else "BB"),
    }
    for name, value in values.items():
        if value is not None:
            browser.cookies["bff_bound"] = value
        else:
            browser.cookies.pop("bff_bound", None)
        for method, path in (("GET", "/bff/user"), ("GET", "/bff/sessions"), ("GET", "/api/echo")):
            r = await browser.request(method, path, csrf=True)
            assert r.status_code == 401, (name, path)
            assert r.json()["error"] == "device_binding_required", (name, path)
    browser.cookies["bff_bound"] = good
    assert (await browser.get("/api/echo", csrf=True)).status_code == 200
    browser.cookies.pop("bff_bound")
    session_cookie = browser.cookies["bff_session"]
    r = await browser.request("POST", "/bff/logout", csrf=True)  # ending the session is never gated
    assert r.status_code == 302
    assert "clear-site-data" not in r.headers  # it would clear the whole registrable domain
    assert any(c.startswith("bff_bound=") and "Max-Age=0" in c for c in browser.last_set_cookies)
    # The browser's DBSC session outlives the logout; its next refresh is refused, which ends
    # it, with or without the old session cookie.
    assert (await client.refresh()).status_code == 401
    browser.cookies["bff_session"] = session_cookie
    assert (await client.refresh()).status_code == 401


async def test_refresh_with_the_right_key_mints_a_new_bound_cookie_and_challenges_are_single_use(make_bff):
    app, browser, client = await bound(make_bff)
    app.services.binding.race_window = 0
    browser.cookies.pop("bff_bound")
    assert (await browser.get("/bff/user", csrf=True)).status_code == 401
    r = await client.refresh()
    assert r.status_code == 200, r.text
    assert "secure-session-challenge" in r.headers
    assert (await browser.get("/bff/user", csrf=True)).status_code == 200
    # A challenge is used once: the same proof again gets a new challenge, not a cookie.
    headers = {"sec-secure-session-id": client.identifier or ""}
    first = await browser.request("POST", "/bff/dbsc/refresh", headers=headers)
    ((c1, _),) = http_sf.parse(first.headers["secure-session-challenge"].encode(), tltype="list")
    proof = client.proof(str(c1), jwk=False)
    ok = await browser.request(
        "POST", "/bff/dbsc/refresh", headers={**headers, "secure-session-response": proof}
    )
    assert ok.status_code == 200
    again = await browser.request(
        "POST", "/bff/dbsc/refresh", headers={**headers, "secure-session-response": proof}
    )
    assert again.status_code == 403 and "secure-session-challenge" in again.headers


async def test_the_previous_challenge_still_counts_for_a_minute(make_bff):
    _, browser, client = await bound(make_bff)
    headers = {"sec-secure-session-id": client.identifier or ""}
    answers = [await browser.request("POST", "/bff/dbsc/refresh", headers=headers) for _ in range(2)]
    challenges = [
        str(http_sf.parse(a.headers["secure-session-challenge"].encode(), tltype="list")[0][0])
        for a in answers
    ]
    r = await browser.request(
        "POST",
        "/bff/dbsc/refresh",
        headers={**headers, "secure-session-response": client.proof(challenges[0], jwk=False)},
    )
    assert r.status_code == 200  # the one before the latest, within its minute


@pytest.mark.parametrize("variant", ["another_key", "own_jwk"])
async def test_a_refresh_proof_by_another_key_ends_the_session_as_suspected_theft(
    make_bff, idp, redis_server, caplog, variant
):
    _, browser, client = await bound(make_bff)
    thief = ECKey.generate_key("P-256")
    with caplog.at_level(logging.INFO, logger="bff.audit"):
        r = await (
            client.refresh(thief) if variant == "another_key" else client.refresh(thief, with_jwk=True)
        )
    assert r.status_code == 401
    assert r.json()["error"] == "session_theft_suspected"
    assert redis_server.cli("KEYS", "bff:s:*").split() == []
    assert idp.stats()["valid_refresh_tokens"] == 0  # revoked
    assert any(getattr(rec, "event", None) == "session_theft_suspected" for rec in caplog.records)


async def test_the_identifier_alone_opens_nothing(make_bff):
    _, browser, client = await bound(make_bff)
    r = await browser.request("POST", "/bff/dbsc/refresh", headers={"sec-secure-session-id": "dbsc-guess"})
    assert r.status_code == 401
    stranger = await make_bff.new_browser(browser.bff._transport.app)  # no session cookie
    r = await stranger.request(
        "POST", "/bff/dbsc/refresh", headers={"sec-secure-session-id": client.identifier}
    )
    assert r.status_code == 401
    assert (await browser.get("/bff/user", csrf=True)).status_code == 200


async def test_two_bff_processes_share_the_challenges(idp, redis_url, upstream, tmp_path):
    with bff_processes(idp, redis_url, upstream, tmp_path, **OPTIONAL) as procs:
        async with httpx.AsyncClient(timeout=30) as http:
            browser = Browser(http, procs[0].url)
            client = DbscClient(browser)
            assert (await client.register(await browser.login())).status_code == 200
            headers = {"sec-secure-session-id": client.identifier or "", **browser._cookie_header()}
            first = await http.post(f"{procs[0].url}/bff/dbsc/refresh", headers=headers)
            ((challenge, _),) = http_sf.parse(
                first.headers["secure-session-challenge"].encode(), tltype="list"
            )
            proof = client.proof(str(challenge), jwk=False)
            r = await http.post(
                f"{procs[1].url}/bff/dbsc/refresh", headers={**headers, "secure-session-response": proof}
            )
            assert r.status_code == 200, r.text
            await browser.aclose()


async def test_required_mode_ends_a_session_not_bound_within_the_grace(make_bff, redis_server):
    _, browser = await make_bff(BFF_DEVICE_BOUND_SESSIONS="required", BFF_DBSC_REGISTRATION_GRACE="5")
    await browser.login()
    state = (await browser.get("/bff/user", csrf=True)).json()["device_binding"]
    assert state["state"] == "unbound" and state["deadline"] > 0
    await asyncio.sleep(5.5)
    r = await browser.get("/bff/user", csrf=True)
    assert r.status_code == 401 and r.json()["error"] == "device_binding_required"
    assert redis_server.cli("KEYS", "bff:s:*").split() == []


async def test_optional_mode_keeps_browsers_without_dbsc_on_the_plain_cookie(make_bff):
    _, browser = await make_bff(**OPTIONAL)
    await browser.login()  # never registers
    assert (await browser.get("/api/echo", csrf=True)).status_code == 200


async def test_a_skipped_refresh_is_counted_and_the_request_still_gated(make_bff):
    app, browser, client = await bound(make_bff)
    app.services.binding.race_window = 0
    browser.cookies.pop("bff_bound")
    skipped = f'quota_exceeded;session_identifier="{client.identifier}"'
    r = await browser.get("/api/echo", csrf=True, headers={"secure-session-skipped": skipped})
    assert r.status_code == 401
    assert 'bff_dbsc_events_total{event="skipped_quota_exceeded"} 1.0' in (await browser.get("/metrics")).text


async def test_the_browser_change_policy_ends_a_session_whose_browser_family_changes(make_bff, caplog):
    _, browser = await make_bff(BFF_END_SESSION_ON_BROWSER_CHANGE="true")
    await browser.login()
    assert (await browser.get("/bff/user", csrf=True)).status_code == 200
    with caplog.at_level(logging.INFO, logger="bff.audit"):
        r = await browser.get("/api/echo", csrf=True, headers={"user-agent": WINDOWS_FIREFOX})
    assert r.status_code == 401 and r.json()["error"] == "session_browser_changed"
    assert (await browser.get("/bff/user", csrf=True)).status_code == 401
    assert any(getattr(rec, "event", None) == "session_browser_changed" for rec in caplog.records)


@pytest.mark.parametrize("path", ["/bff/user", "/api/echo"])
async def test_under_the_policy_a_call_without_a_user_agent_is_judged_alike_on_every_path(make_bff, path):
    """A replayed cookie sent without any User-Agent (curl -H "Cookie: ...") is a browser
    change wherever it is sent; the proxy path used to skip the check."""
    app, browser = await make_bff(BFF_END_SESSION_ON_BROWSER_CHANGE="true")
    await browser.login()
    request = browser.bff.build_request(
        "GET", f"{browser.public_url}{path}", headers={"x-csrf": "1", **browser._cookie_header()}
    )
    del request.headers["user-agent"]
    r = await browser.bff.send(request)
    assert r.status_code == 401 and r.json()["error"] == "session_browser_changed"


async def test_without_the_policy_a_browser_change_is_no_signal(make_bff):
    _, browser = await make_bff()
    await browser.login()
    assert (
        await browser.get("/bff/user", csrf=True, headers={"user-agent": WINDOWS_FIREFOX})
    ).status_code == 200
