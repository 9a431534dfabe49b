"""The only code that writes cookies.

The session cookie holds nothing but the signed session id. Signing keys come from
``BFF_SECRET_KEY``: the first signs, every key verifies, so keys rotate without
logging anyone out. A second, short-lived cookie binds a login transaction to the
browser that started it.
"""

from __future__ import annotations

import hashlib
import secrets
from http.cookies import SimpleCookie
from typing import Any

from itsdangerous import BadData, BadSignature, Signer, want_bytes
from itsdangerous.encoding import base64_decode, base64_encode

from ..settings import Settings

_SESSION_SALT = "bff.session"
_LOGIN_SALT = "bff.login-binding"
_LOGOUT_SALT = "bff.logout-state"


class _Signer(Signer):
    """itsdangerous derives the HMAC key from the secret on every call; it never changes,
    so derive it once per key (this runs on every proxied request)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._derived: dict[bytes, bytes] = {}

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        raw = want_bytes(secret_key if secret_key is not None else self.secret_keys[-1])
        key = self._derived.get(raw)
        if key is None:
            key = self._derived[raw] = super().derive_key(secret_key)
        return key

    def verify_signature(self, value: str | bytes, sig: str | bytes) -> bool:
        """Only the one spelling we write is valid. itsdangerous's base64 decoding skips
        characters outside the alphabet, accepts padding and ignores the spare bits of the
        last character, so without this one signature had many accepted spellings."""
        try:
            canonical = base64_encode(base64_decode(sig)) == want_bytes(sig)
        except BadData:
            return False
        return canonical and super().verify_signature(value, sig)


_MEMO_SIZE = 10000


class CookieCodec:
    def __init__(self, secret_keys: tuple[str, ...], salt: str) -> None:
        # itsdangerous signs with the *last* key and verifies with all of them.
        self._signer = _Signer(list(reversed(secret_keys)), salt=salt, digest_method=hashlib.sha256)
        # Values whose signature checked out: the keys never change while the process runs,
        # so a value valid once is valid for good, and the same cookie comes back on every
        # request (an HMAC and two base64 passes saved on the hot path). Only signed values
        # get in, so filling it needs cookies we issued; it is emptied when full.
        self._verified: dict[str, str] = {}

    def encode(self, value: str) -> str:
        return self._signer.sign(value).decode()

    def decode(self, cookie: str | None) -> str | None:
        if not cookie or len(cookie) > 256:
            return None
        known = self._verified.get(cookie)
        if known is not None:
            return known
        try:
            value = self._signer.unsign(cookie).decode()
        except (BadSignature, UnicodeError):
            return None
        if len(self._verified) >= _MEMO_SIZE:
            self._verified.clear()
        self._verified[cookie] = value
        return value


def read_cookie(header: str, name: str) -> str | None:
    """The value of cookie ``name`` in a Cookie header (first one wins, as browsers send)."""
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip().strip('"')
    return None


class Cookies:
    def __init__(self, settings: Settings) -> None:
        self.session_name = settings.cookie_name
        secure = settings.secure_cookies
        self.login_name = ("__Host-Http-" if secure else "") + "bff_login"
        self.logout_name = ("__Host-Http-" if secure else "") + "bff_logout"
        # ``__Host-``, not ``__Host-Http-``: Chromium (156) refuses DBSC credentials whose
        # cookie carries the ``__Host-Http-`` prefix on a named host (its cookie craving keeps
        # the Domain only ``__Host-`` drops), and the bound cookie exists for DBSC browsers.
        # Still HttpOnly, Secure, Path=/ and host-only; its value is checked server-side.
        self.bound_name = ("__Host-" if secure else "") + "bff_bound"
        self._bound_max_age = settings.dbsc_cookie_ttl
        self._secure = secure
        self._samesite = settings.cookie_samesite
        self._max_age = settings.session_absolute_timeout
        self._login_max_age = settings.login_timeout
        self.session = CookieCodec(settings.secret_keys, _SESSION_SALT)
        self.login = CookieCodec(settings.secret_keys, _LOGIN_SALT)
        self.logout = CookieCodec(settings.secret_keys, _LOGOUT_SALT)

    def _header(self, name: str, value: str, max_age: int, samesite: str) -> str:
        c: SimpleCookie = SimpleCookie()
        c[name] = value
        morsel = c[name]
        morsel["path"] = "/"
        morsel["httponly"] = True
        morsel["samesite"] = samesite.capitalize()
        morsel["max-age"] = max_age
        if self._secure:
            morsel["secure"] = True
        return morsel.OutputString()

    def session_id(self, cookie_header: str) -> str | None:
        return self.session.decode(read_cookie(cookie_header, self.session_name))

    def set_session(self, session_id: str) -> str:
        return self._header(self.session_name, self.session.encode(session_id), self._max_age, self._samesite)

    def clear_session(self) -> str:
        return self._header(self.session_name, "", 0, self._samesite)

    def clear_login(self) -> str:
        return self._header(self.login_name, "", 0, "lax")

    def login_binding(self, cookie_header: str) -> str | None:
        return self.login.decode(read_cookie(cookie_header, self.login_name))

    def new_login_binding(self) -> tuple[str, str]:
        """A fresh binding value and its Set-Cookie header. Lax: it must ride the IdP's redirect."""
        value = secrets.token_urlsafe(24)
        return value, self._header(self.login_name, self.login.encode(value), self._login_max_age, "lax")

    def logout_state(self, cookie_header: str) -> str | None:
        return self.logout.decode(read_cookie(cookie_header, self.logout_name))

    def new_logout_state(self) -> tuple[str, str]:
        """A fresh RP-initiated logout ``state`` and the cookie that remembers it until the
        IdP sends the browser back (Lax: it rides that top-level navigation)."""
        value = secrets.token_urlsafe(24)
        return value, self._header(self.logout_name, self.logout.encode(value), self._login_max_age, "lax")

    def clear_logout(self) -> str:
        return self._header(self.logout_name, "", 0, "lax")

    def bound_value(self, cookie_header: str) -> str | None:
        return read_cookie(cookie_header, self.bound_name)

    def set_bound(self, value: str) -> str:
        """The DBSC bound cookie: HttpOnly, Secure on https, SameSite as the session cookie."""
        return self._header(self.bound_name, value, self._bound_max_age, self._samesite)

    def clear_bound(self) -> str:
        return self._header(self.bound_name, "", 0, self._samesite)

    def bound_attributes(self) -> str:
        """The bound cookie's Set-Cookie attributes, as DBSC session instructions name them.

        Without Max-Age: Chrome refuses session instructions whose cookie attributes name
        a lifetime (``InvalidCredentialsCookieUnpermittedAttribute``); lifetime is ours to
        set on each refresh, the instructions only say which cookie to expect."""
        attributes = self.set_bound("x").split(";")[1:]
        return "; ".join(a.strip() for a in attributes if not a.strip().lower().startswith("max-age"))


def binding_hash(value: str) -> str:
    """What the store keeps of the binding cookie: enough to compare, useless to replay."""
    return hashlib.sha256(value.encode()).hexdigest()[:32]
