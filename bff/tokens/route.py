"""Tokens of a route's own (SPEC "Per-route token policy"): for a route with an
``audience``, ``resource`` or ``scope``, the user's access token is exchanged (RFC 8693) for
one meant for that API; a ``client`` route gets the BFF's own client-credentials token.

Cached under a key made of everything that shapes the token (kind, audience, resources,
scope; the session for exchanged tokens, the client for client tokens), so two routes never
share a token unless every parameter is the same. Exchanged tokens live in the session's
encrypted record (no extra round trip on a hit; gone with the session), written under the
session's one lock so they never race a refresh; their lifetime is capped at the session's
remaining life and at the subject token's expiry (an exchanged token must not outlive what
it was exchanged from: Keycloak's CVE-2026-96460 renews exchanged tokens past it). Client
tokens are shared by all callers and processes: in this process's memory and, encrypted, in
the store.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..dpop import DPoPKey
from ..errors import (
    IdPError,
    IdPUnavailable,
    NotAuthenticated,
    RouteTokenRefused,
    ServiceUnavailable,
    SessionEnded,
)
from ..metrics import Metrics
from ..oidc.client import OIDCClient, TokenResponse
from ..oidc.errors import TokenError
from ..session.models import RouteToken, Session
from ..session.store import SessionStore, locked
from ..settings import ApiRoute
from .flight import LOCK_TIMEOUT, LOCK_WAIT, SingleFlight, renewing
from .user import TokenManager, renewal_skew

log = logging.getLogger("bff.tokens")


@dataclass(frozen=True, slots=True)
class Credential:
    """What an upstream call carries: the token and its scheme."""

    token: str
    scheme: str = "Bearer"
    session: Session | None = None  # the session's own access token (retried on invalid_token)
    key: DPoPKey | None = None  # with scheme DPoP: the key whose proofs go with the token

    def __repr__(self) -> str:  # never print tokens
        return f"Credential(scheme={self.scheme}, user={self.session is not None})"


def _credential(
    token: str, token_type: str, key: DPoPKey | None, session: Session | None = None
) -> Credential:
    """A DPoP-bound token goes with its key's proofs, a Bearer token alone."""
    if token_type == "DPoP" and key is not None:  # noqa: S105 - a scheme name
        return Credential(token, "DPoP", session, key)
    return Credential(token, "Bearer", session)


@functools.lru_cache(maxsize=256)
def route_key(kind: str, route: ApiRoute, owner: str = "") -> str:
    """A short key for everything that shapes a route's token (routes share a cached token
    only when all of it is equal). Memoised: routes and owners are few and fixed."""
    shape = json.dumps([kind, owner, route.audience, list(route.resource), route.scope])
    return hashlib.sha256(shape.encode()).hexdigest()[:24]


class RouteTokens:
    def __init__(
        self,
        store: SessionStore,
        client: OIDCClient,
        users: TokenManager,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        deployment_key: DPoPKey | None = None,
    ) -> None:
        self.store = store
        self.deployment_key = deployment_key  # DPoP key of the BFF's own tokens (BFF_DPOP)
        self.client = client
        self.users = users
        self.metrics = metrics
        self.clock = clock
        # Whose client tokens these are: the client, and the DPoP key they are bound to.
        self._client_owner = client.settings.client_id + (f"#{deployment_key.jkt}" if deployment_key else "")
        self._client_tokens: dict[str, RouteToken] = {}
        self._flight: SingleFlight[tuple[str, str], RouteToken] = SingleFlight()
        self._hits = {kind: metrics.route_token_cache.labels(kind, "hit") for kind in ("exchange", "client")}

    def fresh(self, token: RouteToken) -> bool:
        """The user-token rule (``renewal_skew``): usable until within the refresh skew of
        its expiry; a route token can always be asked for again."""
        skew = renewal_skew(self.users.skew, token.lifetime, renewable=True)
        return token.expires_at - skew > self.clock()

    async def credential(self, route: ApiRoute, session: Session | None) -> Credential | None:
        """The token this route's upstream gets, per its policy; 401 for a ``user`` route
        without a session, None where the policy sends none."""
        policy = route.token
        if policy == "none":
            return None
        if session is not None and policy != "client":
            return await self.for_user(route, session)
        if policy in ("client", "user-or-client"):
            return await self.for_client(route)
        if policy == "user":
            raise NotAuthenticated()
        return None

    async def for_user(self, route: ApiRoute, session: Session) -> Credential:
        if not self.users.is_fresh(session):
            session = await self.users.fresh_session(session)
        if not route.shapes_token:
            return self.session_credential(session)
        dpop = self.users.dpop_key(session)
        key = route_key("exchange", route)
        cached = session.route_tokens.get(key)
        if cached is not None and self.fresh(cached):
            self._hits["exchange"].inc()
            return _credential(cached.token, cached.token_type, dpop)
        token = await self._flight.run((session.id, key), lambda: self._exchange(route, session, key))
        return _credential(token.token, token.token_type, dpop)

    def session_credential(self, session: Session) -> Credential:
        """The session's own access token, with its DPoP key when it is bound."""
        return _credential(
            session.access_token, session.access_token_type, self.users.dpop_key(session), session
        )

    async def _exchange(self, route: ApiRoute, session: Session, key: str) -> RouteToken:
        # The session's lock: the one writer of its record at a time (refreshes take it too).
        lock = self.store.lock(f"refresh:{session.id}", LOCK_TIMEOUT)
        async with locked(lock, LOCK_WAIT) as held:
            if not held:
                raise ServiceUnavailable(
                    "Another token request of this session is taking too long; try again."
                )
            current = await self.store.load(session.id, touch=False)
            if current is None:
                raise SessionEnded("The session has ended.")
            cached = current.route_tokens.get(key)
            if cached is not None and self.fresh(cached):  # another process got it meanwhile
                self.metrics.route_token_cache.labels("exchange", "shared").inc()
                return cached
            self.metrics.route_token_cache.labels("exchange", "miss").inc()
            async with renewing(lock):
                tokens = await self._obtain(
                    "exchange",
                    lambda: self.client.exchange_token(
                        current.access_token,
                        audience=route.audience,
                        resource=route.resource,
                        scope=route.scope,
                        dpop=self.users.dpop_key(current),
                    ),
                )
            caps = [current.expires_at] + ([current.access_expires_at] if current.access_expires_at else [])
            token = self._token(tokens, min(caps))
            if not await self.store.update_tokens(current.with_route_token(key, token, int(self.clock()))):
                raise SessionEnded("The session ended while its token was exchanged.")
            return token

    async def for_client(self, route: ApiRoute) -> Credential:
        key = route_key("client", route, self._client_owner)
        cached = self._client_tokens.get(key)
        if cached is not None and self.fresh(cached):
            self._hits["client"].inc()
            return _credential(cached.token, cached.token_type, self.deployment_key)
        token = await self._flight.run(("client", key), lambda: self._client_token(route, key))
        return _credential(token.token, token.token_type, self.deployment_key)

    async def _client_token(self, route: ApiRoute, key: str) -> RouteToken:
        name = f"client-token:{key}"
        token = await self._stored(name)
        if token is None:
            async with locked(self.store.lock(f"client:{key}", LOCK_TIMEOUT), LOCK_WAIT) as held:
                if not held:
                    raise ServiceUnavailable(
                        "Another request for this API's token is taking too long; try again."
                    )
                token = await self._stored(name)  # another process may have stored one meanwhile
                if token is None:
                    self.metrics.route_token_cache.labels("client", "miss").inc()
                    tokens = await self._obtain(
                        "client_credentials",
                        lambda: self.client.client_credentials(
                            audience=route.audience,
                            resource=route.resource,
                            scope=route.scope,
                            dpop=self.deployment_key,
                        ),
                    )
                    token = self._token(tokens, None)
                    ttl = token.expires_at - int(self.clock())
                    await self.store.save_shared(name, json.dumps(token.encode()).encode(), ttl)
                else:
                    self.metrics.route_token_cache.labels("client", "shared").inc()
        self._client_tokens[key] = token
        return token

    async def _stored(self, name: str) -> RouteToken | None:
        raw = await self.store.load_shared(name)
        if raw is None:
            return None
        token = RouteToken.decode(json.loads(raw))
        return token if self.fresh(token) else None

    def _token(self, tokens: TokenResponse, cap: int | None) -> RouteToken:
        now = int(self.clock())
        expires_at = min(tokens.expires_at, cap) if cap is not None else tokens.expires_at
        return RouteToken(tokens.access_token, expires_at, max(expires_at - now, 0), tokens.token_type)

    async def _obtain(self, kind: str, request: Callable[[], Awaitable[TokenResponse]]) -> TokenResponse:
        """One token request, its outcome counted; the IdP's refusal becomes 403
        route_token_refused (the SPA must not take it as signed out), a malformed answer 502,
        an IdP down 503."""
        try:
            tokens = await request()
        except TokenError as exc:
            if exc.error == "invalid_response":
                self.metrics.route_tokens.labels(kind, "invalid_response").inc()
                raise IdPError(
                    f"The identity provider's token answer could not be used ({exc.description})."
                ) from exc
            self.metrics.route_tokens.labels(kind, "refused").inc()
            log.warning("route token refused", extra={"kind": kind, "error": exc.error})
            detail = f"{exc.error}: {exc.description}" if exc.description else exc.error
            raise RouteTokenRefused(
                f"The identity provider refused a token for this API ({detail}).", code="route_token_refused"
            ) from exc
        except IdPUnavailable:
            self.metrics.route_tokens.labels(kind, "idp_unavailable").inc()
            raise
        self.metrics.route_tokens.labels(kind, "ok").inc()
        return tokens
