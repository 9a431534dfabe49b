"""TokenManager: a fresh access token for a session, or a clear failure.

Single flight at two levels: concurrent requests of one session in this process share
one task, and processes sharing the store share one refresh through a store lock. The
lock holder re-reads the session first (another process may have refreshed already),
renews the lock while the IdP is slow, and on ``invalid_grant`` re-reads once more
before ending the session, because a refresh by someone else rotates the token under us.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..dpop import DPoPKey, KeyCache
from ..errors import IdPUnavailable, NotAuthenticated, ServiceUnavailable, SessionEnded
from ..metrics import Metrics
from ..oidc.client import OIDCClient, TokenResponse
from ..oidc.errors import OIDCError, TokenError
from ..oidc.validation import Expectations, validate_id_token
from ..session.models import Session, jwt_claims, public_handle
from ..session.store import SessionStore, locked
from .flight import LOCK_TIMEOUT, LOCK_WAIT, SingleFlight, renewing

log = logging.getLogger("bff.tokens")
audit = logging.getLogger("bff.audit")

# An access token an upstream refuses this soon after it was obtained is not refreshed
# again: an upstream that refuses every token must not cause one refresh per request.
REFUSED_MIN_AGE = 2


def renewal_skew(skew: int, lifetime: int, renewable: bool) -> int:
    """How long before its expiry a token is renewed, for user and route tokens alike: the
    configured skew; none for a token that cannot be renewed (used until it really expires);
    half the lifetime when the skew is as long as the whole lifetime (else every call would
    renew it)."""
    if not renewable:
        return 0
    if lifetime and skew >= lifetime:
        return lifetime // 2
    return skew


class TokenManager:
    def __init__(
        self,
        store: SessionStore,
        client: OIDCClient,
        checks: Expectations,
        refresh_skew: int,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        revoke: bool = True,
    ) -> None:
        self.store = store
        self.client = client
        self.checks = checks
        self.skew = refresh_skew
        self.metrics = metrics
        self.clock = clock
        self.revoke = revoke  # BFF_REVOKE_ON_LOGOUT: revoke the grants of sessions we end
        self.keys = KeyCache()
        store.notices.on_ended(self.keys.forget)  # no private key outlives its session here
        self._flight: SingleFlight[str, Session] = SingleFlight()

    def dpop_key(self, session: Session) -> DPoPKey | None:
        """The session's DPoP key, parsed once per process (None without DPoP)."""
        return self.keys.get(public_handle(session.id), session.dpop_key) if session.dpop_key else None

    def is_fresh(self, session: Session) -> bool:
        """Usable without a refresh: not within the skew of its expiry.

        Without a refresh token there is nothing to gain by giving up early, so the token is
        used until it really expires; and a skew as long as the token's whole lifetime would
        refresh on every call, so it is capped at half the lifetime.
        """
        if session.access_expires_at == 0:
            return True
        skew = renewal_skew(self.skew, session.access_lifetime, renewable=bool(session.refresh_token))
        return session.access_expires_at - skew > self.clock()

    async def access_token(self, session: Session) -> str:
        """The session's access token, refreshed first when it expires within the skew."""
        if self.is_fresh(session):
            return session.access_token
        return (await self.fresh_session(session)).access_token

    async def after_refusal(self, session: Session) -> Session | None:
        """An upstream refused the session's access token as invalid (RFC 6750
        ``invalid_token``) before its expiry: the session with a new one, refreshed once and
        shared like any refresh; None when a refresh cannot help (no refresh token, or the
        token is only seconds old)."""
        if not session.refresh_token:
            return None
        obtained = session.access_expires_at - session.access_lifetime
        if session.access_expires_at and self.clock() - obtained < REFUSED_MIN_AGE:
            return None
        self.metrics.refreshes.labels("upstream_refused").inc()
        return await self.fresh_session(session, force=True)

    async def fresh_session(self, session: Session, force: bool = False) -> Session:
        """The session with a refreshed token; one refresh task per session in this process.
        ``force`` refreshes a token that has not reached its skew yet.

        The refresh runs in a task of its own, so a caller that goes away (a closed
        browser tab) does not cancel it for the other requests waiting on it.
        """
        return await self._flight.run(session.id, lambda: self._refresh_shared(session, force))

    async def _refresh_shared(self, session: Session, force: bool) -> Session:
        lock = self.store.lock(f"refresh:{session.id}", LOCK_TIMEOUT)
        async with locked(lock, LOCK_WAIT) as held:
            if not held:
                self.metrics.refreshes.labels("lock_timeout").inc()
                raise ServiceUnavailable("Another refresh of this session is taking too long; try again.")
            current = await self.store.load(session.id, touch=False)
            if current is None:
                raise NotAuthenticated("The session has ended.")
            if current.access_token != session.access_token or (not force and self.is_fresh(current)):
                # Someone else refreshed while we waited for the lock: use their result.
                self.metrics.refreshes.labels("shared").inc()
                return current
            async with renewing(lock):
                return await self._refresh(current)

    async def _refresh(self, session: Session) -> Session:
        if not session.refresh_token:
            await self._end(session, "access token expired and no refresh token")
            raise SessionEnded("The session's access token expired and it cannot be refreshed.")
        try:
            tokens = await self.client.refresh(session.refresh_token, self.dpop_key(session))
        except TokenError as exc:
            if exc.error == "invalid_grant":
                again = await self.store.load(session.id, touch=False)
                if (
                    again is not None
                    and again.refresh_token != session.refresh_token
                    and self.is_fresh(again)
                ):
                    self.metrics.refreshes.labels("shared").inc()
                    return again
                self.metrics.refreshes.labels("invalid_grant").inc()
                await self._end(session, "refresh token rejected (invalid_grant)")
                raise SessionEnded("The session has ended at the identity provider.") from exc
            self.metrics.refreshes.labels("error").inc()
            audit.warning(
                "refresh failed", extra={"event": "refresh_failed", "error": exc.error, "sub": session.sub}
            )
            raise IdPUnavailable(f"The identity provider refused the refresh ({exc.error}).") from exc
        except IdPUnavailable:
            self.metrics.refreshes.labels("idp_unavailable").inc()
            raise
        try:
            updated = await self._apply(session, tokens)
        except OIDCError as exc:
            await self._refuse(session, tokens, exc)
            raise SessionEnded(
                "The identity provider's refresh answer could not be trusted; the session has ended."
            ) from exc
        if not await self.store.update_tokens(updated):
            raise NotAuthenticated("The session ended during the refresh.")
        self.metrics.refreshes.labels("ok").inc()
        return updated

    async def _apply(self, session: Session, tokens: TokenResponse) -> Session:
        """The session with the refresh's tokens, all or nothing: an ID token that fails
        validation (OIDC Core §12.2: another subject, issuer, audience, a bad signature, a
        stale iat) raises OIDCError and nothing of the answer is used."""
        if tokens.id_token:
            await validate_id_token(
                tokens.id_token,
                self.client.provider,
                await self.checks(),
                nonce=None,
                access_token=tokens.access_token,
                previous=jwt_claims(session.id_token),
            )
        return session.with_tokens(
            tokens.access_token,
            tokens.expires_at,
            tokens.refresh_token or session.refresh_token,
            tokens.id_token,
            tokens.lifetime,
            tokens.token_type,
        )

    async def _refuse(self, session: Session, tokens: TokenResponse, exc: OIDCError) -> None:
        """A refresh answer we do not trust: end the session and revoke both grants' tokens
        (the new refresh token, and the old one in case the IdP did not rotate it)."""
        self.metrics.refreshes.labels("refused").inc()
        await self.store.delete(session.id)
        audit.warning(
            "refresh answer refused; session ended",
            extra={"event": "refresh_refused", "reason": exc.code, "sub": session.sub},
        )
        for token in {t for t in (tokens.refresh_token, session.refresh_token) if t}:
            await revoke_token(self.client, token, "refresh_token", self.revoke)

    async def _end(self, session: Session, why: str) -> None:
        await self.store.delete(session.id)
        audit.info("session ended", extra={"event": "session_ended", "reason": why, "sub": session.sub})

    async def end(self, session: Session, why: str) -> None:
        """End a session like a logout does: gone from the store, its grant revoked (RFC
        7009, unless BFF_REVOKE_ON_LOGOUT=false), an audit event saying why."""
        await self._end(session, why)
        token, hint = (
            (session.refresh_token, "refresh_token")
            if session.refresh_token
            else (session.access_token, "access_token")
        )
        await revoke_token(self.client, token, hint, self.revoke)


async def revoke_token(client: OIDCClient, token: str, hint: str, enabled: bool = True) -> None:
    """RFC 7009, best effort: the session is gone locally whatever the IdP answers."""
    if not enabled:
        return
    try:
        await client.revoke(token, hint)
    except (IdPUnavailable, TokenError, OIDCError) as exc:
        log.warning("token revocation failed", extra={"error": str(exc)})
