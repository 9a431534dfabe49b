"""The DBSC proofs (``typ: dbsc+jwt``), verified with joserfc.

A registration proof carries its public key in the ``jwk`` header and is checked with it; a
refresh proof must not carry one and is checked with the key stored at registration. Only
ES256 and RS256 (what the BFF offers), never ``none``. The ``jti`` is the challenge. ``aud``
and ``iat`` are not required (Chrome sends neither by default); an ``aud``, when present,
must be the endpoint's URL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import Key, import_key
from joserfc.jws import JWSRegistry

from .headers import ALGORITHMS

# An RS256 registration proof's header (with its 2048-bit jwk) is ~700 bytes, over joserfc's
# default limit of 512.
_REGISTRY = JWSRegistry(algorithms=list(ALGORITHMS))
_REGISTRY.max_header_length = 4096


class ProofRefused(Exception):
    """``code`` names the rule; ``theft`` marks a proof signed by another key than the
    session's (or bringing its own) on refresh."""

    def __init__(self, code: str, message: str, theft: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.theft = theft


@dataclass(frozen=True, slots=True)
class Proof:
    claims: dict[str, Any]

    @property
    def challenge(self) -> str:
        return str(self.claims["jti"])


def _header(token: str) -> dict[str, Any]:
    try:
        header = jws.extract_compact(token.encode(), registry=_REGISTRY).protected
    except (JoseError, ValueError, UnicodeError) as exc:
        raise ProofRefused("dbsc_proof_malformed", f"the proof is not a compact JWS ({exc})") from exc
    if header.get("typ") != "dbsc+jwt":
        raise ProofRefused("dbsc_proof_typ", "the proof's typ is not dbsc+jwt")
    if header.get("alg") not in ALGORITHMS:
        raise ProofRefused("dbsc_proof_alg", f"algorithm {header.get('alg')!r} is not offered")
    return dict(header)


def _verify(token: str, header: dict[str, Any], key: Key, url: str, theft: bool) -> Proof:
    try:
        obj = jws.deserialize_compact(token, key, algorithms=[header["alg"]], registry=_REGISTRY)
        claims = json.loads(obj.payload)
    except (JoseError, ValueError) as exc:
        raise ProofRefused("dbsc_proof_signature", "the proof's signature does not verify", theft) from exc
    if not isinstance(claims, dict) or not isinstance(claims.get("jti"), str) or not claims["jti"]:
        raise ProofRefused("dbsc_proof_jti", "the proof names no challenge (jti)")
    if "aud" in claims and claims["aud"] != url:
        raise ProofRefused("dbsc_proof_aud", "the proof is for another endpoint (aud)")
    return Proof(claims)


def registration_proof(token: str, url: str) -> tuple[Proof, Key]:
    """A registration proof and the public key it brings (its ``jwk``, which signed it)."""
    header = _header(token)
    jwk = header.get("jwk")
    if not isinstance(jwk, dict) or "d" in jwk or jwk.get("kty") not in ("EC", "RSA"):
        raise ProofRefused("dbsc_proof_jwk", "a registration proof needs its public key (jwk)")
    try:
        key = import_key(jwk)
    except (JoseError, ValueError, TypeError) as exc:
        raise ProofRefused("dbsc_proof_jwk", f"the proof's jwk is not a usable key ({exc})") from exc
    return _verify(token, header, key, url, theft=False), key


def refresh_proof(token: str, url: str, stored_jwk: dict[str, Any]) -> Proof:
    """A refresh proof, which the session's registered key must have signed."""
    header = _header(token)
    if "jwk" in header:
        raise ProofRefused("dbsc_proof_jwk", "a refresh proof must not bring its own key", theft=True)
    return _verify(token, header, import_key(stored_jwk), url, theft=True)
