"""Validation of ID tokens (OpenID Connect Core 1.0 §3.1.3.7, §12.2) and logout tokens
(OpenID Connect Back-Channel Logout 1.0 §2.6), with joserfc doing the cryptography.

Each failed rule raises ``OIDCError`` whose code names the rule, so tests and logs say
exactly which check refused a token.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import Key

from .errors import OIDCError
from .provider import Provider

BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
# A logout token is delivered the moment it is made; older ones are refused, and their
# jti is remembered this long, so a replay cannot outlive the memory of it.
LOGOUT_TOKEN_MAX_AGE = 600

_HASHES = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}


@dataclass(frozen=True, slots=True)
class Checks:
    """What the caller expects of a token; the explicit checks object of openid-client."""

    issuer: str
    client_id: str
    algorithms: Collection[str]
    now: int
    skew: int
    max_iat_age: int = 600  # how old an ID token fresh from the token endpoint may be


class Expectations:
    """Builds the Checks for this moment: our issuer and client, the algorithms we allow
    narrowed to those the IdP says it uses (nothing else can be forged in)."""

    def __init__(
        self,
        provider: Provider,
        issuer: str,
        client_id: str,
        allowed: Collection[str],
        skew: int,
        clock: Callable[[], float],
        max_iat_age: int = 600,
    ) -> None:
        self.provider = provider
        self.issuer = issuer
        self.client_id = client_id
        self.allowed = tuple(allowed)
        self.skew = skew
        self.clock = clock
        self.max_iat_age = max_iat_age

    async def __call__(self) -> Checks:
        meta = await self.provider.metadata()
        advertised = meta.id_token_signing_alg_values_supported
        return Checks(
            self.issuer,
            self.client_id,
            tuple(a for a in self.allowed if a in advertised),
            int(self.clock()),
            self.skew,
            self.max_iat_age,
        )


def _b64json(segment: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None


def _header(token: str) -> dict[str, Any]:
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) == 5:
        raise OIDCError("token_encrypted", "encrypted (JWE) tokens are not accepted")
    if len(parts) != 3:
        raise OIDCError("token_malformed", "not a JWS compact serialization")
    header = _b64json(parts[0])
    if not isinstance(header, dict):
        raise OIDCError("token_malformed", "the JOSE header is not a JSON object")
    return header


def _candidates(keys: list[Key], header: dict[str, Any], alg: str) -> list[Key]:
    kid = header.get("kid")
    usable = [k for k in keys if k.get("use", "sig") == "sig" and k.get("alg", alg) == alg]
    if kid is not None:
        return [k for k in usable if k.kid == kid]
    # No kid: OIDC Core §10.1 - one key is used as is; with several, each fitting key is tried.
    return usable


async def verify_signature(token: str, provider: Provider, algorithms: Collection[str]) -> dict[str, Any]:
    """Verify a JWS against the IdP's keys and return its claims."""
    header = _header(token)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg.lower() == "none":
        raise OIDCError("token_alg", "unsigned tokens (alg none) are refused")
    if alg not in algorithms:
        allowed = ", ".join(algorithms) or "none the IdP advertises"
        raise OIDCError(
            "token_alg",
            f"algorithm {alg} is not allowed (BFF_ID_TOKEN_ALGS, intersected with the IdP's metadata,"
            f" allows {allowed})",
        )
    if "crit" in header:
        raise OIDCError("token_crit", "critical header extensions are not supported")
    keys = list((await provider.keys()).keys)
    candidates = _candidates(keys, header, alg)
    if not candidates and header.get("kid") is not None:
        await provider.refetch_keys()
        fresh = provider.cached_keys()
        candidates = _candidates(list(fresh.keys) if fresh else [], header, alg)
        if not candidates:
            raise OIDCError("token_kid", "no IdP key matches the token's kid")
    if not candidates:
        raise OIDCError("token_kid", "no IdP key fits the token's algorithm")
    for key in candidates:
        try:
            obj = jws.deserialize_compact(token, key, algorithms=[alg])
        except JoseError:
            continue
        try:
            claims = json.loads(obj.payload)
        except ValueError:
            claims = None
        if not isinstance(claims, dict):
            raise OIDCError("token_malformed", "the claims are not a JSON object")
        return claims
    raise OIDCError("token_signature", "the signature does not verify with the IdP's keys")


def _number(claims: dict[str, Any], name: str, required: bool) -> int | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise OIDCError(f"token_{name}", f"the {name} claim is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OIDCError(f"token_{name}", f"the {name} claim is not a number")
    return int(value)


def _check_common(claims: dict[str, Any], checks: Checks, *, exp_required: bool) -> None:
    if claims.get("iss") != checks.issuer:
        raise OIDCError("token_iss", "the iss claim is not the configured issuer")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if checks.client_id not in audiences:
        raise OIDCError("token_aud", "the aud claim does not name this client")
    azp = claims.get("azp")
    if len(audiences) > 1 and azp is None:
        raise OIDCError("token_azp", "several audiences but no azp claim")
    if azp is not None and azp != checks.client_id:
        raise OIDCError("token_azp", "the azp claim is not this client")
    exp = _number(claims, "exp", exp_required)
    if exp is not None and checks.now > exp + checks.skew:
        raise OIDCError("token_exp", "the token has expired")
    iat = _number(claims, "iat", True)
    if iat is not None and iat > checks.now + checks.skew:
        raise OIDCError("token_iat", "the token is issued in the future")
    nbf = _number(claims, "nbf", False)
    if nbf is not None and nbf > checks.now + checks.skew:
        raise OIDCError("token_nbf", "the token is not valid yet")


def token_hash(value: str, alg: str) -> str:
    """at_hash / c_hash: the left half of the hash named by the JWS alg, base64url."""
    hasher = _HASHES.get(alg[-3:], hashlib.sha256)
    if alg in ("EdDSA", "Ed25519"):
        hasher = hashlib.sha512
    digest = hasher(value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).decode().rstrip("=")


def _audiences(claims: dict[str, Any]) -> set[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return {aud}
    return {a for a in aud if isinstance(a, str)} if isinstance(aud, list) else set()


def _check_refreshed(claims: dict[str, Any], previous: dict[str, Any]) -> None:
    """OIDC Core §12.2: an ID token from a refresh belongs to the original authentication."""
    if claims.get("sub") != previous.get("sub"):
        raise OIDCError("token_sub", "a refreshed ID token names a different subject")
    if claims.get("iss") != previous.get("iss"):
        raise OIDCError("token_iss", "a refreshed ID token names a different issuer")
    if _audiences(claims) != _audiences(previous):
        raise OIDCError("token_aud", "a refreshed ID token has a different audience")
    if claims.get("azp") != previous.get("azp"):
        raise OIDCError("token_azp", "a refreshed ID token has a different (or a new) azp")
    if "auth_time" in claims and "auth_time" in previous and claims["auth_time"] != previous["auth_time"]:
        raise OIDCError("token_auth_time", "a refreshed ID token carries another authentication time")
    if "nonce" in claims and "nonce" in previous and claims["nonce"] != previous["nonce"]:
        raise OIDCError("token_nonce", "a refreshed ID token carries another nonce")


async def validate_id_token(
    token: str,
    provider: Provider,
    checks: Checks,
    *,
    nonce: str | None,
    access_token: str | None = None,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate an ID token from the token endpoint; return its claims.

    ``nonce`` is the value sent at login (required to match). ``previous`` holds the
    claims of the session's current ID token when validating one from a refresh
    (OIDC Core §12.2: same iss, sub, aud, azp and auth_time). A token endpoint hands out
    ID tokens it has just made, so one whose ``iat`` is older than ``checks.max_iat_age``
    (plus the skew) is refused: it is a replay or comes from a broken IdP.
    """
    claims = await verify_signature(token, provider, checks.algorithms)
    _check_common(claims, checks, exp_required=True)
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise OIDCError("token_sub", "the sub claim is missing")
    if int(claims["iat"]) < checks.now - checks.max_iat_age - checks.skew:
        raise OIDCError("token_iat_stale", "the ID token was issued too long ago")
    if "events" in claims:
        raise OIDCError("token_type", "a logout token was presented as an ID token")
    if nonce is not None and claims.get("nonce") != nonce:
        raise OIDCError("token_nonce", "the nonce claim does not match the login request")
    if previous is not None:
        _check_refreshed(claims, previous)
    at_hash = claims.get("at_hash")
    if at_hash is not None and access_token is not None:
        alg = _header(token)["alg"]
        if at_hash != token_hash(access_token, alg):
            raise OIDCError("token_at_hash", "the at_hash claim does not match the access token")
    return claims


async def validate_userinfo(
    answer: dict[str, Any] | str, provider: Provider, checks: Checks, expected_sub: str
) -> dict[str, Any]:
    """UserInfo claims (OIDC Core §5.3.2, §5.3.4): a signed answer must verify with the IdP's
    keys and an allowed algorithm, and its ``iss`` and ``aud`` (when present) name the IdP
    and this client; either form must name the ID token's ``sub``."""
    if isinstance(answer, str):
        claims = await verify_signature(answer, provider, checks.algorithms)
        if "iss" in claims and claims["iss"] != checks.issuer:
            raise OIDCError("userinfo_iss", "the signed UserInfo names another issuer")
        if "aud" in claims and checks.client_id not in _audiences(claims):
            raise OIDCError("userinfo_aud", "the signed UserInfo is for another client")
    else:
        claims = answer
    if claims.get("sub") != expected_sub:
        raise OIDCError("userinfo_sub", "UserInfo names a different subject than the ID token")
    return {k: v for k, v in claims.items() if k not in ("iss", "aud", "iat", "exp", "nbf", "jti")}


async def validate_logout_token(token: str, provider: Provider, checks: Checks) -> dict[str, Any]:
    """Validate a Back-Channel Logout token (§2.6); the caller checks ``jti`` for replay."""
    header = _header(token)
    typ = header.get("typ")
    if typ is not None and str(typ).lower() not in ("logout+jwt", "application/logout+jwt", "jwt"):
        raise OIDCError("logout_typ", f"typ {typ!r} is not a logout token")
    claims = await verify_signature(token, provider, checks.algorithms)
    _check_common(claims, checks, exp_required=False)
    events = claims.get("events")
    if not isinstance(events, dict) or BACKCHANNEL_EVENT not in events:
        raise OIDCError("logout_events", "the events claim lacks the back-channel logout event")
    if not isinstance(events[BACKCHANNEL_EVENT], dict):
        raise OIDCError("logout_events", "the back-channel logout event is not a JSON object")
    if "nonce" in claims:
        raise OIDCError("logout_nonce", "a logout token must not contain a nonce")
    sub, sid = claims.get("sub"), claims.get("sid")
    if sub is None and sid is None:
        raise OIDCError("logout_sub_sid", "a logout token must name a sub, a sid or both")
    for name, value in (("sub", sub), ("sid", sid)):
        if value is not None and (not isinstance(value, str) or not value):
            raise OIDCError(f"logout_{name}", f"the {name} claim is not a string")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise OIDCError("logout_jti", "the jti claim is missing")
    if int(claims["iat"]) < checks.now - LOGOUT_TOKEN_MAX_AGE - checks.skew:
        raise OIDCError("token_iat", "the logout token was issued too long ago")
    return claims
