"""A refresh answer is adopted whole or not at all (OIDC Core §12.2). The real test
provider answers the refresh with tokens it should not have issued: another user's, another
issuer's, a bad signature, a week-old ID token, a changed audience, azp or auth_time. None
of it may reach an upstream: the session ends (401 session_ended), its refresh tokens are
revoked at the IdP and the audit log says why.
"""

from __future__ import annotations

import logging

import pytest


@pytest.mark.parametrize(
    ("misbehave", "reason"),
    [
        ("other_user", "token_sub"),
        ("wrong_iss", "token_iss"),
        ("bad_signature", "token_signature"),
        ("wrong_key", "token_signature"),
        ("stale_iat", "token_iat_stale"),
        ("wrong_aud", "token_aud"),
        ("azp_added", "token_azp"),
        ("auth_time_changed", "token_auth_time"),
        ("bad_at_hash", "token_at_hash"),
        ("signed_es256", "token_alg"),  # advertised by the IdP, its key published, not registered
    ],
)
async def test_an_untrusted_refresh_answer_adopts_nothing_and_ends_the_session(
    make_bff, idp, redis_server, caplog, misbehave, reason
):
    es256 = {"publish_ec_key": True, "algs": ["RS256", "ES256"]} if misbehave == "signed_es256" else {}
    idp.configure(access_ttl=0, **es256)  # the first API call refreshes
    _, browser = await make_bff(BFF_TOKEN_REFRESH_SKEW="60")
    await browser.login("alice")
    idp.configure(refresh_misbehave=misbehave)
    issued_before = set(idp.issued())
    with caplog.at_level(logging.INFO, logger="bff.audit"):
        r = await browser.get("/api/echo", csrf=True)
    assert r.status_code == 401, r.text
    assert r.json()["error"] == "session_ended"
    assert "headers" not in r.json()  # the upstream was never called
    assert redis_server.cli("KEYS", "bff:s:*").split() == []
    assert (await browser.get("/bff/user", csrf=True)).status_code == 401
    # The refresh tokens of the refused answer and of the session are revoked at the IdP.
    stats = idp.stats()
    new_refresh = [t for t in set(idp.issued()) - issued_before if "." not in t]
    assert new_refresh and all(t in stats["revoked"] for t in new_refresh)
    assert stats["valid_refresh_tokens"] == 0
    events = [rec for rec in caplog.records if getattr(rec, "event", None) == "refresh_refused"]
    assert [e.reason for e in events] == [reason]  # type: ignore[attr-defined]


async def test_a_refresh_answer_without_an_id_token_is_adopted(make_bff, idp):
    idp.configure(access_ttl=0, id_token_on_refresh=False)
    _, browser = await make_bff(BFF_TOKEN_REFRESH_SKEW="60")
    await browser.login("alice")
    first = (await browser.get("/api/echo", csrf=True)).json()["headers"]["authorization"][0]
    second = (await browser.get("/api/echo", csrf=True)).json()["headers"]["authorization"][0]
    assert first != second
    assert (await browser.get("/bff/user", csrf=True)).json()["sub"] == "user-alice-0001"


async def test_a_valid_refreshed_id_token_replaces_the_old_one(make_bff, idp):
    idp.configure(access_ttl=0)
    app, browser = await make_bff(BFF_TOKEN_REFRESH_SKEW="60")
    await browser.login("alice")
    store = app.services.store
    cookie = browser.cookies["bff_session"]
    session_id = app.services.cookies.session_id(f"bff_session={cookie}")
    before = (await store.load(session_id, touch=False)).id_token
    assert (await browser.get("/api/echo", csrf=True)).status_code == 200
    after = (await store.load(session_id, touch=False)).id_token
    assert after != before
