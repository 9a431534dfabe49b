"""ID token and logout token rules (OIDC Core §3.1.3.7, Back-Channel Logout §2.6), one per test.

The IdP here is an httpx MockTransport serving metadata and JWKS: these tests are about
the validation rules, the integration tests use the real provider process.
"""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from bff.oidc.errors import OIDCError
from bff.oidc.provider import Provider
from bff.oidc.validation import (
    BACKCHANNEL_EVENT,
    Checks,
    token_hash,
    validate_id_token,
    validate_logout_token,
)

ISSUER = "https://idp.example.com"
RSA = RSAKey.generate_key(2048, parameters={"kid": "r1", "use": "sig", "alg": "RS256"})
RSA2 = RSAKey.generate_key(2048, parameters={"kid": "r2", "use": "sig"})
EC = ECKey.generate_key("P-256", parameters={"kid": "e1", "use": "sig", "alg": "ES256"})


class Idp:
    def __init__(self, keys):
        self.keys = keys
        self.jwks_fetches = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("openid-configuration"):
            return httpx.Response(
                200,
                json={
                    "issuer": ISSUER,
                    "authorization_endpoint": f"{ISSUER}/a",
                    "token_endpoint": f"{ISSUER}/t",
                    "jwks_uri": f"{ISSUER}/jwks",
                    "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                },
            )
        self.jwks_fetches += 1
        return httpx.Response(200, json={"keys": [k.as_dict(private=False) for k in self.keys]})


def make_provider(keys, clock=time.monotonic):
    idp = Idp(keys)
    http = httpx.AsyncClient(transport=httpx.MockTransport(idp.handler))
    return Provider(http, f"{ISSUER}/.well-known/openid-configuration", ISSUER, clock=clock), idp


def checks(now=None, algs=("RS256", "ES256")):
    return Checks(ISSUER, "client", algs, int(now or time.time()), 60)


def claims(**over):
    now = int(time.time())
    base = {"iss": ISSUER, "sub": "u1", "aud": "client", "exp": now + 300, "iat": now, "nonce": "n1"}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def sign(c, key=RSA, header=None):
    h = {"alg": "RS256" if isinstance(key, RSAKey) else "ES256", "kid": key.kid}
    h.update(header or {})
    return jwt.encode(h, c, key, algorithms=[h["alg"]])


def raw_rs256(header, c, key=RSA):
    """Sign by hand, for headers a JOSE library refuses to produce."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signing_input = f"{b64(header)}.{b64(c)}"
    sig = key.private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{base64.urlsafe_b64encode(sig).decode().rstrip('=')}"


def b64(d):
    return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")


async def refused(token, code, provider=None, **kw):
    provider = provider or make_provider([RSA, EC])[0]
    with pytest.raises(OIDCError) as info:
        await validate_id_token(token, provider, checks(), nonce=kw.pop("nonce", "n1"), **kw)
    assert info.value.code == code, info.value


async def test_a_good_token_validates_with_rsa_and_ec():
    provider, _ = make_provider([RSA, EC])
    assert (await validate_id_token(sign(claims()), provider, checks(), nonce="n1"))["sub"] == "u1"
    assert (await validate_id_token(sign(claims(), EC), provider, checks(), nonce="n1"))["sub"] == "u1"


@pytest.mark.parametrize(
    "over,code",
    [
        ({"iss": "https://evil"}, "token_iss"),
        ({"iss": None}, "token_iss"),
        ({"aud": "other"}, "token_aud"),
        ({"aud": ["other", "x"]}, "token_aud"),
        ({"aud": ["client", "other"]}, "token_azp"),
        ({"aud": ["client", "other"], "azp": "other"}, "token_azp"),
        ({"azp": "other"}, "token_azp"),
        ({"exp": int(time.time()) - 120}, "token_exp"),
        ({"exp": None}, "token_exp"),
        ({"exp": "soon"}, "token_exp"),
        ({"iat": int(time.time()) + 3600}, "token_iat"),
        ({"iat": None}, "token_iat"),
        ({"nbf": int(time.time()) + 3600}, "token_nbf"),
        ({"nonce": "other"}, "token_nonce"),
        ({"nonce": None}, "token_nonce"),
        ({"sub": None}, "token_sub"),
        ({"sub": ""}, "token_sub"),
        ({"events": {BACKCHANNEL_EVENT: {}}}, "token_type"),
    ],
)
async def test_each_claim_rule_refuses(over, code):
    await refused(sign(claims(**over)), code)


async def test_multiple_audiences_with_our_azp_are_accepted():
    provider, _ = make_provider([RSA])
    token = sign(claims(aud=["client", "api"], azp="client"))
    assert (await validate_id_token(token, provider, checks(), nonce="n1"))["azp"] == "client"


async def test_clock_skew_is_tolerated_within_the_setting():
    provider, _ = make_provider([RSA])
    now = int(time.time())
    await validate_id_token(sign(claims(exp=now - 30, iat=now + 30)), provider, checks(), nonce="n1")


async def test_alg_none_hmac_and_unlisted_algorithms_are_refused():
    c = claims()
    await refused(f"{b64({'alg': 'none'})}.{b64(c)}.", "token_alg")
    await refused(f"{b64({'alg': 'HS256', 'kid': 'r1'})}.{b64(c)}.c2ln", "token_alg")
    provider, _ = make_provider([RSA])
    with pytest.raises(OIDCError) as info:
        await validate_id_token(sign(c), provider, checks(algs=("ES256",)), nonce="n1")
    assert info.value.code == "token_alg"


async def test_signature_and_key_rules():
    await refused(sign(claims(), RSA2, {"kid": "r1"}), "token_signature")  # claims r1, signed by another key
    token = sign(claims())
    head, body, sig = token.split(".")
    await refused(f"{head}.{b64(claims(sub='admin'))}.{sig}", "token_signature")  # payload swapped
    await refused("a.b", "token_malformed")
    await refused("a.b.c.d.e", "token_encrypted")
    await refused(raw_rs256({"alg": "RS256", "kid": "r1", "crit": ["x"], "x": 1}, claims()), "token_crit")
    assert await validate_id_token(
        raw_rs256({"alg": "RS256", "kid": "r1"}, claims()), make_provider([RSA])[0], checks(), nonce="n1"
    )


async def test_without_kid_a_single_key_is_used_and_several_are_each_tried():
    one, _ = make_provider([RSA])
    token = jwt.encode({"alg": "RS256"}, claims(), RSA, algorithms=["RS256"])
    assert (await validate_id_token(token, one, checks(), nonce="n1"))["sub"] == "u1"
    several, _ = make_provider([RSA2, RSA])
    assert (await validate_id_token(token, several, checks(), nonce="n1"))["sub"] == "u1"


async def test_unknown_kid_refetches_once_then_is_rate_limited():
    clock = [1000.0]
    provider, idp = make_provider([RSA], clock=lambda: clock[0])
    await provider.keys()
    assert idp.jwks_fetches == 1
    rogue = RSAKey.generate_key(2048, parameters={"kid": "rogue"})
    await refused(sign(claims(), rogue), "token_kid", provider)
    assert idp.jwks_fetches == 2
    await refused(sign(claims(), rogue), "token_kid", provider)
    assert idp.jwks_fetches == 2  # rate-limited
    # The IdP rotates in a new key; once the interval has passed the new kid is found.
    idp.keys = [RSA2, RSA]
    clock[0] += 11
    assert await validate_id_token(sign(claims(), RSA2, {"alg": "RS256"}), provider, checks(), nonce="n1")
    assert idp.jwks_fetches == 3


async def test_at_hash_is_checked_when_present():
    provider, _ = make_provider([RSA])
    good = sign(claims(at_hash=token_hash("the-access-token", "RS256")))
    await validate_id_token(good, provider, checks(), nonce="n1", access_token="the-access-token")
    await refused(good, "token_at_hash", provider, access_token="another-token")


async def test_a_refreshed_id_token_must_name_the_same_subject():
    provider, _ = make_provider([RSA])
    with pytest.raises(OIDCError) as info:
        await validate_id_token(
            sign(claims(sub="u2", nonce=None)), provider, checks(), nonce=None, previous={"sub": "u1"}
        )
    assert info.value.code == "token_sub"


def logout_claims(**over):
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": "client",
        "iat": now,
        "jti": "j1",
        "sub": "u1",
        "sid": "s1",
        "events": {BACKCHANNEL_EVENT: {}},
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize(
    "over,code",
    [
        ({"events": None}, "logout_events"),
        ({"events": {"x": {}}}, "logout_events"),
        ({"events": {BACKCHANNEL_EVENT: "x"}}, "logout_events"),
        ({"nonce": "n"}, "logout_nonce"),
        ({"sub": None, "sid": None}, "logout_sub_sid"),
        ({"jti": None}, "logout_jti"),
        ({"sid": 7}, "logout_sid"),
        ({"iat": int(time.time()) - 3600}, "token_iat"),
        ({"exp": int(time.time()) - 3600}, "token_exp"),
        ({"aud": "other"}, "token_aud"),
        ({"iss": "https://evil"}, "token_iss"),
    ],
)
async def test_logout_token_rules(over, code):
    provider, _ = make_provider([RSA])
    with pytest.raises(OIDCError) as info:
        await validate_logout_token(
            sign(logout_claims(**over), header={"typ": "logout+jwt"}), provider, checks()
        )
    assert info.value.code == code


async def test_logout_token_typ_and_valid_forms():
    provider, _ = make_provider([RSA])
    for c in (logout_claims(), logout_claims(sid=None), logout_claims(sub=None)):
        await validate_logout_token(sign(c, header={"typ": "logout+jwt"}), provider, checks())
    with pytest.raises(OIDCError):
        await validate_logout_token(sign(logout_claims(), header={"typ": "at+jwt"}), provider, checks())


def test_discovery_metadata_of_an_https_issuer_must_use_https_endpoints():
    from bff.oidc.provider import ProviderMetadata

    good = {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/a",
        "token_endpoint": f"{ISSUER}/t",
        "jwks_uri": f"{ISSUER}/j",
    }
    assert ProviderMetadata.parse(good, ISSUER).token_endpoint == f"{ISSUER}/t"
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri", "end_session_endpoint"):
        with pytest.raises(OIDCError) as info:
            ProviderMetadata.parse({**good, name: "http://idp.example.com/x"}, ISSUER)
        assert info.value.code == "discovery_invalid"
    with pytest.raises(OIDCError) as info:
        ProviderMetadata.parse({**good, "issuer": "https://other.example.com"}, ISSUER)
    assert info.value.code == "discovery_issuer_mismatch"
