"""Tokens never leak: not in logs (ours or HTTP libraries'), not in Redis, not in answers."""

from __future__ import annotations

import io
import json
import logging

from bff.log import setup_logging


async def test_no_token_code_or_cookie_in_the_logs_of_login_refresh_and_logout(make_bff, idp, redis_server):
    stream = io.StringIO()
    setup_logging("json", "DEBUG", stream)
    for name in ("httpx", "httpcore", "aiohttp", "redis"):
        logging.getLogger(name).setLevel(logging.DEBUG)  # the libraries at their most talkative
    try:
        idp.configure(access_ttl=0)
        _, browser = await make_bff(BFF_TOKEN_REFRESH_SKEW="60", BFF_LOG_LEVEL="debug")
        await browser.login()
        assert (await browser.get("/api/echo", csrf=True)).status_code == 200  # refresh + proxy
        await browser.get("/bff/user", csrf=True)
        await browser.get("/bff/sessions", csrf=True)
        logout_url = (await browser.get("/bff/user", csrf=True)).json()["logout_url"]
        await browser.get(logout_url)
        await browser.login()
        await browser.request("POST", "/bff/backchannel-logout", data={"logout_token": idp.logout_token()})
    finally:
        setup_logging("json", "WARNING", io.StringIO())
    text = stream.getvalue()
    assert '"logger":"bff.audit"' in text and '"logger":"bff.access"' in text  # logs were captured
    secrets = idp.issued()
    assert len(secrets) >= 6
    leaked = [s for s in secrets if s in text]
    assert leaked == [], f"{len(leaked)} token(s) in the logs"
    assert "test-secret" not in text  # the client secret
    for part in (browser.cookies.get("bff_session", "x.y").split(".")[0], "bff_session=ey"):
        assert part not in text


async def test_no_dpop_private_key_or_proof_in_the_logs(make_bff, app_session, idp):
    stream = io.StringIO()
    setup_logging("json", "DEBUG", stream)
    for name in ("httpx", "httpcore", "redis"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        idp.configure(dpop=True, dpop_required=True, access_ttl=0)
        app, browser = await make_bff(BFF_DPOP="true", BFF_TOKEN_REFRESH_SKEW="60", BFF_LOG_LEVEL="debug")
        await browser.login()
        private = json.loads((await app_session(app, browser)).dpop_key)["d"]
        echo = (await browser.get("/api/echo", csrf=True)).json()  # a refresh and a bound call
        proof = echo["headers"]["dpop"][0]
        assert (await browser.request("POST", "/bff/logout", csrf=True)).status_code == 302
    finally:
        setup_logging("json", "WARNING", io.StringIO())
    text = stream.getvalue()
    assert '"logger":"bff.access"' in text
    assert private not in text and proof not in text and proof.split(".")[1] not in text
    assert [s for s in idp.issued() if s in text] == []


async def test_a_redis_dump_after_login_holds_no_token_claim_or_email(bff, idp, redis_server):
    _, browser = bff
    await browser.login()
    await browser.get("/api/echo", csrf=True)
    dump = []
    for key in redis_server.cli("--scan").split():
        kind = redis_server.cli("TYPE", key).strip()
        dump.append(key)
        if kind == "string":
            dump.append(redis_server.cli("--no-raw", "GET", key))
        elif kind == "zset":
            dump.append(redis_server.cli("ZRANGE", key, "0", "-1"))
    text = "\n".join(dump)
    assert any(k.startswith("bff:s:") for k in text.split())
    for needle in ["eyJ", "alice@example.com", "Alice Example", "user-alice-0001", "alice", *idp.issued()]:
        assert needle not in text, needle


async def test_no_token_in_any_answer_to_the_browser(bff, idp):
    """Only the logout redirect carries a token (id_token_hint), because the IdP needs it."""
    _, browser = bff
    responses = [await browser.start_login()]
    r = await browser.authorize(responses[0].headers["location"])
    responses.append(await browser.get(r.headers["location"]))
    for path in ("/bff/user", "/bff/sessions"):
        responses.append(await browser.get(path, csrf=True))
    responses.append(await browser.get("/api/echo"))  # refused: no CSRF header
    secrets = idp.issued()
    for r in responses:
        blob = r.text + "\n".join(f"{k}: {v}" for k, v in r.headers.items())
        assert not [s for s in secrets if s in blob], r.request.url
        assert "eyJ" not in blob
