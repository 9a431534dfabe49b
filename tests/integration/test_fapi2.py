"""BFF_PROFILE=fapi2: every unmet rule of the configuration and of the IdP's metadata is one
line and the BFF does not start; against a compliant provider (PAR required, iss, ES256
tokens, private_key_jwt, DPoP with nonces) the whole flow works."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from joserfc.jwk import ECKey, RSAKey

from bff.errors import ConfigError
from bff.settings import load_settings
from tests.support import bff_env, free_port


def fapi_key() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": "bff-fapi", "alg": "ES256", "use": "sig"})


def fapi_env(idp, redis_url, key, **extra: str) -> dict[str, str]:
    env = bff_env(
        idp,
        redis_url,
        "http://localhost:8080",
        BFF_PROFILE="fapi2",
        BFF_CLIENT_PRIVATE_KEY=json.dumps(key.as_dict(private=True)),
        BFF_ID_TOKEN_ALGS="ES256",
        **extra,
    )
    del env["BFF_CLIENT_SECRET"]
    return env


COMPLIANT = {
    "algs": ["ES256"],
    "signing_alg": "ES256",
    "require_par": True,
    "dpop": True,
    "dpop_required": True,
    "dpop_nonce": True,
    "auth_methods": ["private_key_jwt"],
}


def test_every_unmet_configuration_rule_is_one_line():
    env = {
        "BFF_ISSUER": "https://idp.example.com",
        "BFF_CLIENT_ID": "c",
        "BFF_CLIENT_SECRET": "s",
        "BFF_PUBLIC_URL": "https://app.example.com",
        "BFF_SECRET_KEY": "k" * 32,
        "BFF_PROFILE": "fapi2",
        "BFF_USE_PAR": "false",
        "BFF_DPOP": "false",
        "BFF_CLIENT_AUTH_METHOD": "client_secret_basic",
    }
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    problems = info.value.problems
    assert len(problems) == 5, problems
    for needle in ("BFF_CLIENT_PRIVATE_KEY", "BFF_CLIENT_AUTH_METHOD", "BFF_ID_TOKEN_ALGS", "PAR", "DPoP"):
        assert any(needle in p for p in problems), needle
    rsa = RSAKey.generate_key(2048, parameters={"alg": "RS256"})
    env.update(BFF_CLIENT_PRIVATE_KEY=json.dumps(rsa.as_dict(private=True)), BFF_ID_TOKEN_ALGS="ES256")
    del env["BFF_USE_PAR"], env["BFF_DPOP"], env["BFF_CLIENT_AUTH_METHOD"]
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert info.value.problems == [
        "BFF_PROFILE=fapi2 needs a BFF_CLIENT_PRIVATE_KEY for PS256, ES256 or EdDSA, got RS256"
    ]


def _start(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "BFF_PORT": str(free_port()), **env}
    return subprocess.run(
        [sys.executable, "-m", "bff"], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_a_provider_without_par_or_with_rs256_only_makes_the_bff_refuse_to_start(idp, redis_url):
    key = fapi_key()
    idp.configure(
        **{
            **COMPLIANT,
            "advertise_par": False,
            "advertise_iss": False,
            "algs": ["RS256"],
            "dpop_algs": ["RS256"],
        }
    )
    result = _start(fapi_env(idp, redis_url, key))
    assert result.returncode == 2, result.stdout + result.stderr
    lead = "bff: configuration error: BFF_PROFILE=fapi2: the IdP"
    assert result.stderr.splitlines() == [
        f"{lead} has no pushed_authorization_request_endpoint (PAR is required)",
        f"{lead} does not send iss in authorization responses (RFC 9207 is required)",
        f"{lead} offers no DPoP proof algorithm among PS256, ES256, EdDSA",
        f"{lead} signs ID tokens with none of BFF_ID_TOKEN_ALGS (ES256); it offers RS256",
    ]


def test_check_config_lists_the_same_rules(idp, redis_url, tmp_path):
    key = fapi_key()
    idp.configure(**{**COMPLIANT, "advertise_par": False})
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **fapi_env(idp, redis_url, key)}
    result = subprocess.run(
        [sys.executable, "-m", "bff", "check-config"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "FAIL  BFF_PROFILE=fapi2: the IdP has no pushed_authorization_request_endpoint" in result.stdout


async def test_against_a_compliant_provider_the_whole_flow_works(make_bff, app_session, idp, redis_server):
    key = fapi_key()
    idp.configure(**COMPLIANT, client_jwk=key.as_dict(private=False), access_ttl=0)
    env = fapi_env(idp, redis_server.url, key, BFF_TOKEN_REFRESH_SKEW="60")
    overrides = {
        k: v
        for k, v in env.items()
        if k.startswith("BFF_PROFILE")
        or k in ("BFF_CLIENT_PRIVATE_KEY", "BFF_ID_TOKEN_ALGS", "BFF_TOKEN_REFRESH_SKEW")
    }
    app, browser = await make_bff(**overrides, BFF_CLIENT_SECRET="")
    assert app.services.settings.dpop and app.services.settings.use_par
    r = await browser.start_login()
    assert "request_uri" in r.headers["location"]  # PAR
    assert (
        await browser.get((await browser.authorize(r.headers["location"])).headers["location"])
    ).status_code == 302
    session = await app_session(app, browser)
    assert session.access_token_type == "DPoP"
    for _ in range(2):  # each call refreshes (0 s tokens), with proofs and the IdP's nonce
        echo = (await browser.get("/api/echo", csrf=True)).json()
        assert echo["headers"]["authorization"][0].startswith("DPoP ") and echo["dpop"]["jkt"]
    stats = idp.stats()
    assert set(stats["client_auth"]) == {"private_key_jwt"}
    assert stats["dpop_nonce_challenges"] >= 1 and all(p["nonce"] for p in stats["dpop_proofs"])
    assert (await browser.request("POST", "/bff/logout", csrf=True)).status_code == 302
    assert (await browser.get("/bff/user", csrf=True)).status_code == 401
    stats = idp.stats()
    assert stats["revoked"]  # the logout revoked the refresh token, authenticated too
    seen = {(a["endpoint"], a["aud"]) for a in stats["assertion_audiences"]}
    assert {e for e, _ in seen} >= {"/par", "/token", "/revoke"}, seen
    assert {aud for _, aud in seen} == {idp.issuer}  # the issuer as a string, at every endpoint


async def test_under_the_profile_a_bearer_token_despite_the_proof_is_refused(make_bff, idp, redis_server):
    key = fapi_key()
    idp.configure(**{**COMPLIANT, "dpop_ignore": True}, client_jwk=key.as_dict(private=False))
    env = fapi_env(idp, redis_server.url, key)
    _, browser = await make_bff(
        BFF_PROFILE="fapi2",
        BFF_CLIENT_PRIVATE_KEY=env["BFF_CLIENT_PRIVATE_KEY"],
        BFF_ID_TOKEN_ALGS="ES256",
        BFF_CLIENT_SECRET="",
    )
    r = await browser.login()
    assert r.status_code == 400
    assert r.json()["error"] == "code_exchange"
    assert "bff_session" not in browser.cookies
