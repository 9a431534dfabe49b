"""The bound cookie: ``<session handle>~<key thumbprint>~<expiry>``, signed with the
BFF's cookie keys (itsdangerous, like the session cookie, another salt). Checking it needs
no store round trip: the signature, the session it names, the key it names (the session's
registered one) and its own expiry are all in the value and the session already loaded.
A value stays valid until its own expiry even after a refresh minted a newer one (browsers
race refreshes against requests).
"""

from __future__ import annotations

import time

from ..security.cookies import CookieCodec
from ..session.models import public_handle

SALT = "bff.dbsc-bound"


class BoundCookies:
    def __init__(self, secret_keys: tuple[str, ...], ttl: int) -> None:
        self.codec = CookieCodec(secret_keys, SALT)
        self.ttl = ttl

    def mint(self, session_id: str, jkt: str, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + self.ttl)
        return self.codec.encode(f"{public_handle(session_id)}~{jkt}~{expires}")

    def valid(self, value: str | None, session_id: str, jkt: str, now: float | None = None) -> bool:
        payload = self.codec.decode(value)
        if payload is None:
            return False
        handle, _, rest = payload.partition("~")
        key, _, expires = rest.partition("~")
        if not expires.isdigit():
            return False
        now = time.time() if now is None else now
        return handle == public_handle(session_id) and key == jkt and int(expires) > now
