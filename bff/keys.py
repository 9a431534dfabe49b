"""Private keys given in settings (a PEM or a JWK): the client assertion key and the DPoP key
of the BFF's own tokens. One loader, so both take the same forms and fail the same way."""

from __future__ import annotations

import json

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey, import_key

_EC_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


def load_private_key(text: str, setting: str, rsa_alg: str = "RS256") -> tuple[Key, str]:
    """The key and its algorithm: the JWK's own ``alg``, else by key type (``rsa_alg`` for
    RSA). Anything unreadable, public or of another type is a ValueError naming ``setting``."""
    try:
        key = _parse(text.strip())
    except (ValueError, TypeError, KeyError, UnsupportedAlgorithm, JoseError) as exc:
        raise ValueError(f"{setting} is not a readable private key (PEM or JWK)") from exc
    if not key.is_private:
        raise ValueError(f"{setting} holds a public key; a private key is needed")
    alg = key.get("alg")
    if not alg:
        if isinstance(key, RSAKey):
            alg = rsa_alg
        elif isinstance(key, ECKey) and key.curve_name in _EC_ALGS:
            alg = _EC_ALGS[key.curve_name]
        elif isinstance(key, OKPKey):
            alg = "EdDSA"
        else:
            raise ValueError(f"{setting} must be an RSA, EC (P-256/384/521) or Ed25519 key")
    if not key.kid:
        key.ensure_kid()
    return key, str(alg)


def _parse(text: str) -> Key:
    if text.startswith("{"):
        return import_key(json.loads(text))
    loaded = serialization.load_pem_private_key(text.encode(), password=None)
    if isinstance(loaded, rsa.RSAPrivateKey):
        return import_key(text, "RSA")
    if isinstance(loaded, ec.EllipticCurvePrivateKey):
        return import_key(text, "EC")
    return import_key(text, "OKP")
