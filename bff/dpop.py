"""DPoP (RFC 9449): the keys that bind the BFF's tokens, the proofs it sends with every
token request and every call with a bound token, and the server nonces it has been given.

A key is parsed once: a ``DPoPKey`` holds the joserfc key, its algorithm and the encoded
proof header (``typ``, ``alg``, ``jwk``), so a proof costs one JSON claims set, one
signature and two base64 steps. The signature is joserfc's (its algorithm object, which also
turns ECDSA's DER into JOSE's r||s); only the compact serialization (RFC 7515 §7.1:
header.payload.signature, base64url without padding) is put together here, because
joserfc's ``serialize_compact`` would encode the same header again for every proof.

Per-session keys live encrypted in the session record (``Session.dpop_key``, the private
JWK); ``KeyCache`` keeps their parsed form for the process, so no request parses a key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey, import_key
from joserfc.jws import JWSRegistry

from .keys import load_private_key

# In order of preference; the first one the IdP lists in dpop_signing_alg_values_supported.
PREFERRED_ALGS = ("ES256", "EdDSA", "PS256", "ES384", "RS256")
FAPI_ALGS = ("PS256", "ES256", "EdDSA")
_HTTP_SCHEME = {"ws": "http", "wss": "https"}


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _generate(alg: str) -> Key:
    if alg in ("ES256", "ES384"):
        return ECKey.generate_key("P-256" if alg == "ES256" else "P-384")
    if alg == "EdDSA":
        return OKPKey.generate_key("Ed25519")
    return RSAKey.generate_key(2048)


class DPoPKey:
    """One DPoP key pair, ready to sign proofs."""

    def __init__(self, key: Key, alg: str) -> None:
        self.key = key
        self.alg = alg
        self._signer = JWSRegistry.algorithms[alg]
        public = key.as_dict(private=False)
        header = {"typ": "dpop+jwt", "alg": alg, "jwk": public}
        self._header = _b64(json.dumps(header, separators=(",", ":")).encode())
        self.jkt = key.thumbprint()  # RFC 7638 SHA-256 thumbprint: dpop_jkt, cnf.jkt

    def __repr__(self) -> str:  # the private part never appears
        return f"DPoPKey(alg={self.alg}, jkt={self.jkt})"

    @classmethod
    def generate(cls, alg: str = "ES256") -> DPoPKey:
        return cls(_generate(alg), alg)

    @classmethod
    def load(cls, data: str) -> DPoPKey:
        """From ``export()``'s JSON (the private JWK with its ``alg``)."""
        jwk = json.loads(data)
        alg = jwk.pop("alg")
        return cls(import_key(jwk), alg)

    def export(self) -> str:
        return json.dumps({**self.key.as_dict(private=True), "alg": self.alg}, separators=(",", ":"))

    def proof(
        self,
        method: str,
        url: str,
        *,
        access_token: str | None = None,
        nonce: str | None = None,
        now: float | None = None,
    ) -> str:
        """A fresh proof (RFC 9449 §4.2): a new ``jti`` each time, ``htu`` without query and
        fragment, ``ath`` for a request that presents ``access_token``."""
        claims: dict[str, Any] = {
            "jti": secrets.token_urlsafe(16),
            "htm": method,
            "htu": htu(url),
            "iat": int(now if now is not None else time.time()),
        }
        if access_token is not None:
            claims["ath"] = ath(access_token)
        if nonce is not None:
            claims["nonce"] = nonce
        signing_input = self._header + b"." + _b64(json.dumps(claims, separators=(",", ":")).encode())
        return (signing_input + b"." + _b64(self._signer.sign(signing_input, self.key))).decode()


def htu(url: str) -> str:
    """The URL a proof is for: no query, no fragment (RFC 9449 §4.2)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def ath(access_token: str) -> str:
    return _b64(hashlib.sha256(access_token.encode("ascii")).digest()).decode()


def choose_alg(supported: Collection[str], allowed: Iterable[str] = PREFERRED_ALGS) -> str | None:
    """The preferred algorithm the IdP lists (ES256 first); None when none fits."""
    return next((a for a in allowed if a in supported), None)


def deployment_key(secret: str, configured: str | None) -> DPoPKey:
    """The key of the BFF's own (client-credentials) tokens: one per deployment, the same in
    every process. ``BFF_DPOP_CLIENT_KEY`` when set, else a P-256 key derived (HKDF) from the
    first BFF_SECRET_KEY, so rotating that key rotates this one too."""
    if configured:  # RSA keys sign with PS256 here: the one RSA algorithm FAPI 2.0 allows
        return DPoPKey(*load_private_key(configured, "BFF_DPOP_CLIENT_KEY", rsa_alg="PS256"))
    seed = HKDF(algorithm=hashes.SHA256(), length=48, salt=None, info=b"bff dpop deployment key v1")
    order = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)  # P-256 n
    scalar = int.from_bytes(seed.derive(secret.encode()), "big") % (order - 1) + 1
    private = ec.derive_private_key(scalar, ec.SECP256R1())
    return DPoPKey(ECKey.import_key(private), "ES256")


class KeyCache:
    """Parsed session keys, by the session's public handle, most recently used kept (a
    bounded LRU). A key is dropped as soon as its session ends anywhere (the session notices,
    ``forget``); a session that simply times out leaves its key until the LRU evicts it."""

    def __init__(self, size: int = 20000) -> None:
        self.size = size
        self._keys: OrderedDict[str, tuple[str, DPoPKey]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, handle: str, exported: str) -> DPoPKey:
        entry = self._keys.get(handle)
        if entry is not None and entry[0] == exported:
            self._keys.move_to_end(handle)
            return entry[1]
        key = DPoPKey.load(exported)
        self._keys[handle] = (exported, key)
        if len(self._keys) > self.size:
            self._keys.popitem(last=False)
        return key

    def forget(self, handle: str) -> None:
        self._keys.pop(handle, None)


class Nonces:
    """The latest ``DPoP-Nonce`` each server (origin) sent: used in the next proofs to it,
    replaced whenever it sends another (RFC 9449 §8, §9)."""

    def __init__(self) -> None:
        self._by_origin: dict[str, str] = {}

    @staticmethod
    def origin(url: str) -> str:
        """The server a URL names: a WebSocket URL names the same server as its HTTP one, so
        a nonce learnt on either serves both."""
        parts = urlsplit(url)
        return f"{_HTTP_SCHEME.get(parts.scheme, parts.scheme)}://{parts.netloc}"

    def get(self, url: str) -> str | None:
        return self._by_origin.get(self.origin(url))

    def update(self, url: str, header: Callable[[str], str | None]) -> bool:
        """Remember the server's new nonce from ``header("dpop-nonce")``; True if it changed."""
        value = header("dpop-nonce")
        if not value or len(value) > 512:
            return False
        origin = self.origin(url)
        changed = self._by_origin.get(origin) != value
        self._by_origin[origin] = value
        return changed
