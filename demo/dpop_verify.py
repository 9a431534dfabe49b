"""The receiving side of DPoP (RFC 9449 §4.3, §7.1), as an API or an authorization server
checks a proof: used by the demo's sample API and by the test provider and upstream.

Every rule is checked with joserfc doing the cryptography: ``typ`` ``dpop+jwt``, an
asymmetric ``alg``, a public ``jwk`` that verifies the signature, ``htm`` and ``htu`` equal to
the request, a recent ``iat``, a ``jti`` not seen before, ``ath`` equal to the hash of the
presented access token, the key's thumbprint equal to the token's ``cnf.jkt``, and the
server's current nonce when it asks for one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Collection
from typing import Any
from urllib.parse import urlsplit

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import import_key
from joserfc.jws import JWSRegistry

ALGS = ("ES256", "ES384", "PS256", "EdDSA", "Ed25519", "RS256")


class ProofError(Exception):
    """``error`` is what goes into the answer: invalid_dpop_proof or use_dpop_nonce."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error
        self.message = message


def thumbprint_of(token: str) -> str | None:
    """``cnf.jkt`` of a JWT access token (its signature is the caller's business)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    cnf = claims.get("cnf") if isinstance(claims, dict) else None
    return cnf.get("jkt") if isinstance(cnf, dict) else None


def _htu(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower(), parts.path or "/"


class ProofVerifier:
    def __init__(
        self, algorithms: Collection[str] = ALGS, max_age: int = 60, require_nonce: bool = False
    ) -> None:
        self.algorithms = list(algorithms)
        self.max_age = max_age
        self.require_nonce = require_nonce
        self.nonce = secrets.token_urlsafe(16)
        self._seen: dict[str, float] = {}
        # RSA keys make headers longer than joserfc's default limit of 512 bytes.
        self._registry = JWSRegistry(algorithms=self.algorithms)
        self._registry.max_header_length = 4096

    def rotate_nonce(self) -> str:
        self.nonce = secrets.token_urlsafe(16)
        return self.nonce

    def verify(
        self,
        proof: str | None,
        method: str,
        url: str,
        *,
        access_token: str | None = None,
        jkt: str | None = None,
    ) -> dict[str, Any]:
        """The proof's claims and its key's thumbprint (``claims["_jkt"]``), or ProofError."""
        if not proof:
            raise ProofError("invalid_dpop_proof", "DPoP proof missing")
        try:
            header = jws.extract_compact(proof.encode(), registry=self._registry).protected
            if header.get("typ") != "dpop+jwt":
                raise ProofError("invalid_dpop_proof", "typ is not dpop+jwt")
            if header.get("alg") not in self.algorithms:
                raise ProofError("invalid_dpop_proof", f"alg {header.get('alg')!r} not allowed")
            jwk = header.get("jwk")
            if not isinstance(jwk, dict) or "d" in jwk:
                raise ProofError("invalid_dpop_proof", "jwk missing or private")
            key = import_key(jwk)
            obj = jws.deserialize_compact(proof, key, algorithms=[header["alg"]], registry=self._registry)
            claims: dict[str, Any] = json.loads(obj.payload)
        except JoseError as exc:
            raise ProofError("invalid_dpop_proof", f"proof does not verify ({exc})") from exc
        except ValueError as exc:
            raise ProofError("invalid_dpop_proof", f"proof is malformed ({exc})") from exc
        self._check_claims(claims, method, url, access_token)
        claims["_jkt"] = key.thumbprint()
        if jkt is not None and claims["_jkt"] != jkt:
            raise ProofError("invalid_dpop_proof", "the proof's key is not the token's (cnf.jkt)")
        return claims

    def _check_claims(self, claims: dict[str, Any], method: str, url: str, access_token: str | None) -> None:
        now = time.time()
        if claims.get("htm") != method:
            raise ProofError("invalid_dpop_proof", "htm does not match the request")
        if not isinstance(claims.get("htu"), str) or _htu(claims["htu"]) != _htu(url) or "?" in claims["htu"]:
            raise ProofError("invalid_dpop_proof", f"htu {claims.get('htu')!r} does not match {url}")
        iat = claims.get("iat")
        if not isinstance(iat, int | float) or abs(now - iat) > self.max_age:
            raise ProofError("invalid_dpop_proof", "iat is not recent")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise ProofError("invalid_dpop_proof", "jti missing")
        self._seen = {j: t for j, t in self._seen.items() if t > now - 2 * self.max_age}
        if jti in self._seen:
            raise ProofError("invalid_dpop_proof", "jti replayed")
        self._seen[jti] = now
        if access_token is not None:
            expected = base64.urlsafe_b64encode(hashlib.sha256(access_token.encode()).digest()).rstrip(b"=")
            if claims.get("ath") != expected.decode():
                raise ProofError("invalid_dpop_proof", "ath does not match the access token")
        if self.require_nonce and claims.get("nonce") != self.nonce:
            raise ProofError("use_dpop_nonce", "a fresh server nonce is required")
