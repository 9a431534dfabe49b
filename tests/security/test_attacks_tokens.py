"""Forged and broken tokens from a misbehaving provider (the real test provider process,
told how to misbehave): each must end in a refusal with no session and a clear message.
"""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "misbehave",
    [
        "wrong_nonce",
        "missing_nonce",
        "bad_signature",
        "wrong_key",
        "unknown_kid",
        "expired",
        "future_iat",
        "stale_iat",
        "wrong_aud",
        "multi_aud_no_azp",
        "wrong_azp",
        "wrong_iss",
        "alg_none",
        "hs256_public_key",
        "missing_sub",
        "bad_at_hash",
        "missing_exp",
        "no_id_token",
    ],
)
async def test_forged_or_broken_id_token_is_refused_and_no_session_is_created(
    bff, idp, redis_server, misbehave
):
    _, browser = bff
    idp.configure(misbehave=misbehave)
    r = await browser.login()
    assert r.status_code == 400, misbehave
    assert r.json()["error"] != "internal_error"
    assert "bff_session" not in browser.cookies
    assert redis_server.cli("KEYS", "bff:s:*").split() == []


async def test_unknown_kid_after_a_refetch_is_refused(bff, idp):
    _, browser = bff
    idp.configure(misbehave="unknown_kid")
    first = await browser.login()
    second = await browser.login()
    for r in (first, second):
        assert r.status_code == 400
        assert r.json()["error"] == "token_kid"


async def test_ssrf_the_route_prefix_cannot_be_stretched_to_another_host(bff):
    _, browser = bff
    await browser.login()
    for path in ("/api@evil.example.com/x", "/api.evil.example.com/x", "/apix", "/api:80@evil/x"):
        r = await browser.get(path, csrf=True)
        assert r.status_code in (404, 405), path
        assert "raw_path" not in r.text
