"""Session records are encrypted and authenticated; keys rotate without logging anyone out."""

from __future__ import annotations

import pytest

from bff.session.crypto import DecryptionError, RecordCipher, new_key, parse_key


def test_encrypt_decrypt_and_bound_to_its_redis_key():
    c = RecordCipher([parse_key(new_key())])
    record = c.encrypt(b"secret tokens", b"bff:s:one")
    assert b"secret" not in record
    assert c.decrypt(record, b"bff:s:one") == b"secret tokens"
    with pytest.raises(DecryptionError):
        c.decrypt(record, b"bff:s:two")  # copied under another session's key


def test_rotation_new_key_first_old_still_decrypts():
    old, new = parse_key(new_key()), parse_key(new_key())
    record = RecordCipher([old]).encrypt(b"x", b"k")
    rotated = RecordCipher([new, old])
    assert rotated.decrypt(record, b"k") == b"x"
    assert rotated.encrypt(b"x", b"k")[1:5] == RecordCipher.key_id(new)  # the newest key encrypts
    with pytest.raises(DecryptionError):
        RecordCipher([new]).decrypt(record, b"k")


def test_tampering_is_detected():
    c = RecordCipher([parse_key(new_key())])
    record = bytearray(c.encrypt(b"payload", b"k"))
    record[-1] ^= 1
    with pytest.raises(DecryptionError):
        c.decrypt(bytes(record), b"k")


def test_derived_keys_differ_per_secret():
    a = RecordCipher.from_settings((), ("a" * 32,))
    b = RecordCipher.from_settings((), ("b" * 32,))
    with pytest.raises(DecryptionError):
        b.decrypt(a.encrypt(b"x", b"k"), b"k")
