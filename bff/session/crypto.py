"""Encryption at rest for session records (AES-256-GCM from ``cryptography``).

A record is ``version(1) | key id(4) | nonce(12) | ciphertext+tag``. The key id is
derived from the key itself, so keys can be listed in any order and rotated without
logging anyone out: the newest key encrypts, every listed key decrypts. The Redis key
name is bound in as associated data, so a record copied under another session's key
does not decrypt.

Without ``BFF_ENCRYPTION_KEYS`` the keys are derived (HKDF) from ``BFF_SECRET_KEY``,
so records are always encrypted and rotating the signing keys rotates these too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_VERSION = b"\x01"
_HEADER = 1 + 4 + 12


class DecryptionError(Exception):
    """The record was not written with any key we hold, or was tampered with."""


def parse_key(text: str) -> bytes:
    """A key is 32 random bytes, base64 or base64url encoded (``bff keygen`` makes one)."""
    padded = text.strip() + "=" * (-len(text.strip()) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded.replace("+", "-").replace("/", "_"))
    except (binascii.Error, ValueError):
        raise ValueError("each key must be base64 of 32 random bytes") from None
    if len(raw) != 32:
        raise ValueError(f"each key must be 32 bytes once decoded, got {len(raw)}")
    return raw


def derive_key(secret: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"bff session encryption v1")
    return hkdf.derive(secret.encode())


def new_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


class RecordCipher:
    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("at least one encryption key is needed")
        self._by_id = {self.key_id(k): AESGCM(k) for k in keys}
        self._current_id = self.key_id(keys[0])
        self._current = self._by_id[self._current_id]

    @staticmethod
    def key_id(key: bytes) -> bytes:
        return hashlib.sha256(key).digest()[:4]

    @classmethod
    def from_settings(cls, encryption_keys: tuple[str, ...], secret_keys: tuple[str, ...]) -> RecordCipher:
        if encryption_keys:
            return cls([parse_key(k) for k in encryption_keys])
        return cls([derive_key(s) for s in secret_keys])

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return _VERSION + self._current_id + nonce + self._current.encrypt(nonce, plaintext, aad)

    def decrypt(self, record: bytes, aad: bytes) -> bytes:
        if len(record) < _HEADER + 16 or record[:1] != _VERSION:
            raise DecryptionError("unknown record format")
        aead = self._by_id.get(record[1:5])
        if aead is None:
            raise DecryptionError("record encrypted with a key that is no longer configured")
        try:
            return aead.decrypt(record[5:17], record[17:], aad)
        except InvalidTag:
            raise DecryptionError("record failed authentication") from None
