"""The server-side session and the login transaction, with their compact encodings.

The stored record keeps each token once: the user's claims are read back from the
(already validated) ID token instead of being stored beside it, which keeps a
session close to the size of its tokens.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

# Protocol claims that say nothing about the user and are not shown to the SPA.
_PROTOCOL_CLAIMS = frozenset({"nonce", "at_hash", "c_hash", "s_hash"})


def new_session_id() -> str:
    """256 random bits; a fresh one at every login."""
    return secrets.token_urlsafe(32)


def _digest(label: str, value: str) -> str:
    return (
        base64.urlsafe_b64encode(hashlib.sha256(f"{label}:{value}".encode()).digest()[:16])
        .decode()
        .rstrip("=")
    )


@functools.lru_cache(maxsize=16384)
def public_handle(session_id: str) -> str:
    """The id a user sees for a session in /bff/sessions: unlinkable to the real id.
    Memoised: the bound-cookie check and the notices ask for it on the hot path."""
    return _digest("handle", session_id)


def logout_sid(session_id: str) -> str:
    """The session-bound value a GET /bff/logout must carry (known only to this session's SPA)."""
    return _digest("logout", session_id)


def jwt_claims(token: str) -> dict[str, Any]:
    """Claims of a JWT we validated earlier (no validation here)."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True, slots=True)
class RouteToken:
    """A token of a route's own (token exchange or client credentials), cached until due."""

    token: str
    expires_at: int
    lifetime: int
    token_type: str = "Bearer"  # noqa: S105 - a scheme name

    def __repr__(self) -> str:  # never print tokens
        return f"RouteToken(expires_at={self.expires_at}, type={self.token_type})"

    def encode(self) -> list[Any]:
        return [self.token, self.expires_at, self.lifetime, self.token_type]

    @classmethod
    def decode(cls, data: list[Any]) -> RouteToken:
        token, expires_at, lifetime, token_type = data
        return cls(token, expires_at, lifetime, token_type)


@dataclass(slots=True)
class Session:
    id: str
    sub: str
    id_token: str
    access_token: str
    access_expires_at: int
    refresh_token: str | None
    created_at: int
    expires_at: int
    last_seen: int
    idp_sid: str | None = None
    user_agent: str = ""
    ip: str = ""
    userinfo: dict[str, Any] | None = None
    access_lifetime: int = 0  # the access token's expires_in, 0 when unknown
    # Exchanged tokens of routes with an audience/resource/scope, by route-parameters key:
    # encrypted with the rest of the record and gone with the session.
    route_tokens: dict[str, RouteToken] = field(default_factory=dict, repr=False)
    # DPoP (RFC 9449): the session's private key (JWK JSON, encrypted with the record) and
    # the scheme its access token was issued for.
    dpop_key: str | None = field(default=None, repr=False)
    access_token_type: str = "Bearer"  # noqa: S105 - a scheme name
    # DBSC: the device key the browser registered (public JWK and thumbprint, JSON) and the
    # opaque DBSC session identifier handed to the browser; None while unbound.
    dbsc_key: str | None = field(default=None, repr=False)
    dbsc_id: str | None = None
    _claims: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:  # never print tokens
        return f"Session(handle={public_handle(self.id)}, sub={self.sub!r}, expires_at={self.expires_at})"

    @property
    def claims(self) -> dict[str, Any]:
        if self._claims is None:
            claims = {k: v for k, v in jwt_claims(self.id_token).items() if k not in _PROTOCOL_CLAIMS}
            if self.userinfo:
                claims.update({k: v for k, v in self.userinfo.items() if k not in claims})
            self._claims = claims
        return self._claims

    def idle_expires_at(self, idle_timeout: int) -> int:
        return min(self.last_seen + idle_timeout, self.expires_at)

    def with_tokens(
        self,
        access_token: str,
        access_expires_at: int,
        refresh_token: str | None,
        id_token: str | None,
        access_lifetime: int = 0,
        access_token_type: str = "Bearer",  # noqa: S107 - a scheme name
    ) -> Session:
        return replace(
            self,
            access_token=access_token,
            access_expires_at=access_expires_at,
            access_lifetime=access_lifetime,
            access_token_type=access_token_type,
            refresh_token=refresh_token,
            id_token=id_token or self.id_token,
            _claims=None,
        )

    def with_route_token(self, key: str, token: RouteToken, now: int) -> Session:
        """The session with ``token`` cached under ``key`` (expired ones dropped)."""
        kept = {k: t for k, t in self.route_tokens.items() if t.expires_at > now}
        return replace(self, route_tokens={**kept, key: token}, _claims=self._claims)

    def encode(self) -> bytes:
        """Compact JSON of everything but the id and the timestamps kept beside it in the store.
        Every field but the first few is optional, so records written before a field existed
        still load, and ones written by a newer version load in an older one."""
        body: dict[str, Any] = {
            "s": self.sub,
            "i": self.id_token,
            "a": self.access_token,
            "x": self.access_expires_at,
            "c": self.created_at,
        }
        if self.refresh_token:
            body["r"] = self.refresh_token
        if self.idp_sid:
            body["d"] = self.idp_sid
        if self.user_agent:
            body["u"] = self.user_agent
        if self.ip:
            body["p"] = self.ip
        if self.userinfo:
            body["n"] = self.userinfo
        if self.access_lifetime:
            body["l"] = self.access_lifetime
        if self.route_tokens:
            body["t"] = {k: t.encode() for k, t in self.route_tokens.items()}
        if self.dpop_key:
            body["k"] = self.dpop_key
        if self.access_token_type != "Bearer":  # noqa: S105
            body["y"] = self.access_token_type
        if self.dbsc_key:
            body["b"] = [self.dbsc_key, self.dbsc_id]
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, session_id: str, data: bytes, expires_at: int, last_seen: int) -> Session:
        body = json.loads(data)
        return cls(
            id=session_id,
            sub=body["s"],
            id_token=body["i"],
            access_token=body["a"],
            access_expires_at=body["x"],
            refresh_token=body.get("r"),
            created_at=body["c"],
            expires_at=expires_at,
            last_seen=last_seen,
            idp_sid=body.get("d"),
            user_agent=body.get("u", ""),
            ip=body.get("p", ""),
            userinfo=body.get("n"),
            access_lifetime=body.get("l", 0),
            route_tokens={k: RouteToken.decode(v) for k, v in body.get("t", {}).items()},
            dpop_key=body.get("k"),
            access_token_type=body.get("y", "Bearer"),
            dbsc_key=body["b"][0] if "b" in body else None,
            dbsc_id=body["b"][1] if "b" in body else None,
        )


@dataclass(frozen=True, slots=True)
class LoginTransaction:
    """What /bff/login remembers for /bff/callback: single-use, short-lived, browser-bound."""

    state: str
    nonce: str
    code_verifier: str
    return_to: str
    browser_binding: str  # hash of the browser's login-binding cookie
    created_at: int
    dpop_key: str | None = field(default=None, repr=False)  # made at login, moves to the session

    def encode(self) -> bytes:
        fields = [self.nonce, self.code_verifier, self.return_to, self.browser_binding, self.created_at]
        if self.dpop_key:
            fields.append(self.dpop_key)
        return json.dumps(fields, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, state: str, data: bytes) -> LoginTransaction:
        nonce, verifier, return_to, binding, created, *rest = json.loads(data)
        return cls(state, nonce, verifier, return_to, binding, created, rest[0] if rest else None)
