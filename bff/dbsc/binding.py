"""DeviceBinding: offering DBSC, gating bound sessions, registration and refresh.

State lives with the session (its record holds the registered public key and the DBSC
session identifier, encrypted like the rest); challenges live in the store, single use and
shared by every BFF process, five minutes each, the previous one still good for a minute
after a new one is issued (browsers race refreshes). See the package docstring.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from ..errors import BadRequest, NotAuthenticated, ServiceUnavailable
from ..security.cookies import Cookies
from ..session.models import Session, public_handle
from ..session.store import SessionStore, locked
from ..settings import Settings
from ..tokens.flight import LOCK_TIMEOUT, LOCK_WAIT
from . import headers
from .cookie import BoundCookies
from .proofs import Proof, ProofRefused, refresh_proof, registration_proof

log = logging.getLogger("bff.dbsc")
audit = logging.getLogger("bff.audit")

REGISTER_PATH = "/bff/dbsc/register"
REFRESH_PATH = "/bff/dbsc/refresh"
CHALLENGE_TTL = 300  # seconds a challenge lives
PREVIOUS_TTL = 60  # seconds the previous challenge still counts once a new one is issued
# Requests the browser sent while its registration was in flight carry no bound cookie yet
# (Chrome 156 loads an SPA's next calls in parallel): those few seconds they still pass.
REGISTRATION_RACE = 10


@functools.lru_cache(maxsize=16384)
def _binding(dbsc_key: str) -> dict[str, Any]:
    """The stored binding (public JWK, thumbprint, time bound), parsed once per value: the
    gate reads it on every request of a bound session. Callers must not change it."""
    value = json.loads(dbsc_key)
    return value if isinstance(value, dict) else {}


class DeviceBindingRequired(NotAuthenticated):
    code = "device_binding_required"
    message = "This session is bound to a device: its bound cookie is missing or expired."


class DeviceBinding:
    def __init__(
        self,
        settings: Settings,
        store: SessionStore,
        cookies: Cookies,
        metrics: Any,
        end_session: Callable[[Session, str], Awaitable[None]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.mode = settings.device_bound_sessions
        self.grace = settings.dbsc_registration_grace
        self.origin = settings.public_url
        self.store = store
        self.cookies = cookies
        self.bound = BoundCookies(settings.secret_keys, settings.dbsc_cookie_ttl)
        self.metrics = metrics
        self.end_session = end_session  # ends a session like a logout (revocation included)
        self.clock = clock
        self.race_window = REGISTRATION_RACE

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def deadline(self, session: Session) -> int | None:
        if self.mode != "required" or session.dbsc_key:
            return None
        return session.created_at + self.grace

    def state(self, session: Session) -> dict[str, Any]:
        """What /bff/user shows."""
        return {"state": "bound" if session.dbsc_key else "unbound", "deadline": self.deadline(session)}

    # --- offers -----------------------------------------------------------------------
    async def offer(self, session: Session) -> str | None:
        """The ``Secure-Session-Registration`` header for an unbound session (a fresh challenge)."""
        if not self.enabled or session.dbsc_key:
            return None
        challenge = await self._challenge(session)
        return headers.registration(REGISTER_PATH, challenge)

    async def _challenge(self, session: Session) -> str:
        challenge = secrets.token_urlsafe(24)
        await self.store.issue_challenge(public_handle(session.id), challenge, CHALLENGE_TTL, PREVIOUS_TTL)
        return challenge

    # --- the gate -----------------------------------------------------------------------
    async def admit(self, session: Session, cookie_header: str, skipped: str | None) -> None:
        """Every use of a session passes here: a bound session needs its valid bound cookie;
        under ``required`` a session still unbound after the grace is ended."""
        if skipped:
            self._count_skips(skipped)
        if session.dbsc_key:
            value = self.cookies.bound_value(cookie_header)
            if self.bound.valid(value, session.id, self._jkt(session)):
                return
            if value is None and self.clock() < self._bound_at(session) + self.race_window:
                return  # sent before the browser had its first bound cookie
            self.metrics.dbsc.labels("refused").inc()
            raise DeviceBindingRequired()
        deadline = self.deadline(session)
        if deadline is not None and self.clock() > deadline:
            self.metrics.dbsc.labels("unbound_ended").inc()
            await self.end_session(session, "not bound to a device within the registration grace")
            raise DeviceBindingRequired("This session was not bound to a device in time; sign in again.")

    def _count_skips(self, header: str) -> None:
        for reason, _ in headers.skipped(header):
            self.metrics.dbsc.labels(f"skipped_{reason}"[:40]).inc()
            log.info("browser skipped a DBSC refresh", extra={"reason": reason})

    @staticmethod
    def _jkt(session: Session) -> str:
        return str(_binding(session.dbsc_key or "{}").get("jkt", ""))

    @staticmethod
    def _bound_at(session: Session) -> float:
        return float(_binding(session.dbsc_key or "{}").get("at", 0))

    # --- registration ---------------------------------------------------------------------
    async def register(
        self, session: Session, response_header: str | None
    ) -> tuple[dict[str, Any], str, str]:
        """Verify a registration proof and bind the session: (instructions, bound cookie, next challenge)."""
        if session.dbsc_key:
            raise BadRequest("This session is bound to a device already.", code="dbsc_already_bound")
        proof, key = self._registration_proof(response_header)
        if await self.store.take_challenge(proof.challenge) != public_handle(session.id):
            raise BadRequest("The proof answers no challenge issued to this session.", code="dbsc_challenge")
        public = {"jwk": key.as_dict(private=False), "jkt": key.thumbprint(), "at": int(self.clock())}
        identifier = "dbsc-" + secrets.token_urlsafe(12)  # opaque: not the session id
        bound = await self._save(session, json.dumps(public, separators=(",", ":")), identifier)
        self.metrics.dbsc.labels("registered").inc()
        audit.info("session bound to a device", extra={"event": "dbsc_registered", "sub": session.sub})
        cookie = self.cookies.set_bound(self.bound.mint(bound.id, key.thumbprint()))
        return self.instructions(identifier), cookie, await self._next(bound, identifier)

    def _registration_proof(self, response_header: str | None) -> tuple[Proof, Any]:
        token = headers.item_value(response_header)
        if token is None:
            raise BadRequest("Send the proof in Secure-Session-Response.", code="dbsc_proof_missing")
        try:
            return registration_proof(token, self.origin + REGISTER_PATH)
        except ProofRefused as exc:
            self.metrics.dbsc.labels("registration_refused").inc()
            raise BadRequest(f"The registration proof was refused: {exc.message}.", code=exc.code) from exc

    async def _save(self, session: Session, public_key: str, identifier: str) -> Session:
        """Store the key with the session record, under the session's one lock."""
        async with locked(self.store.lock(f"refresh:{session.id}", LOCK_TIMEOUT), LOCK_WAIT) as held:
            if not held:
                raise ServiceUnavailable("The session is busy; try again.")
            current = await self.store.load(session.id, touch=False)
            if current is None:
                raise NotAuthenticated("The session has ended.")
            if current.dbsc_key:
                raise BadRequest("This session is bound to a device already.", code="dbsc_already_bound")
            bound = replace(current, dbsc_key=public_key, dbsc_id=identifier)
            if not await self.store.update_tokens(bound):
                raise NotAuthenticated("The session has ended.")
            return bound

    def instructions(self, identifier: str) -> dict[str, Any]:
        """The session instructions (DBSC §format-session-instructions): scope = this origin,
        the DBSC endpoints and logout excluded, the bound cookie as the credential."""
        host = urlsplit(self.origin).hostname or ""  # a host pattern: no port
        return {
            "session_identifier": identifier,
            "refresh_url": REFRESH_PATH,
            "scope": {
                "origin": self.origin,
                "include_site": False,
                "scope_specification": [
                    {"type": "exclude", "domain": host, "path": "/bff/dbsc/"},
                    {"type": "exclude", "domain": host, "path": "/bff/logout"},
                ],
            },
            "credentials": [
                {
                    "type": "cookie",
                    "name": self.cookies.bound_name,
                    "attributes": self.cookies.bound_attributes(),
                }
            ],
        }

    async def _next(self, session: Session, identifier: str) -> str:
        """A challenge for the next refresh, sent ahead (the browser caches it: one round trip less)."""
        return headers.challenge(await self._challenge(session), identifier)

    # --- refresh ------------------------------------------------------------------------------
    async def refresh(
        self, session: Session, id_header: str | None, response_header: str | None
    ) -> tuple[int, list[tuple[str, str]]]:
        """(status, headers) of a refresh: 403 + a challenge without a usable proof, 200 with a
        new bound cookie for one signed by the session's key; a proof by any other key ends
        the session (suspected theft)."""
        if not session.dbsc_key or headers.item_value(id_header) != session.dbsc_id:
            raise NotAuthenticated("No device-bound session by that identifier.", code="dbsc_unknown_session")
        identifier = session.dbsc_id
        assert identifier is not None
        token = headers.item_value(response_header)
        if token is None:
            return 403, [("Secure-Session-Challenge", await self._next(session, identifier))]
        try:
            proof = refresh_proof(token, self.origin + REFRESH_PATH, _binding(session.dbsc_key)["jwk"])
        except ProofRefused as exc:
            if exc.theft:
                await self._theft(session, exc)
            raise BadRequest(f"The refresh proof was refused: {exc.message}.", code=exc.code) from exc
        if await self.store.take_challenge(proof.challenge) != public_handle(session.id):
            self.metrics.dbsc.labels("stale_challenge").inc()
            return 403, [("Secure-Session-Challenge", await self._next(session, identifier))]
        self.metrics.dbsc.labels("refreshed").inc()
        cookie = self.cookies.set_bound(self.bound.mint(session.id, self._jkt(session)))
        return 200, [
            ("Set-Cookie", cookie),
            ("Secure-Session-Challenge", await self._next(session, identifier)),
        ]

    async def _theft(self, session: Session, exc: ProofRefused) -> None:
        self.metrics.dbsc.labels("theft_suspected").inc()
        audit.warning(
            "a refresh proof by another key: session ended",
            extra={"event": "session_theft_suspected", "reason": exc.code, "sub": session.sub},
        )
        await self.end_session(session, "session theft suspected (DBSC proof by another key)")
        raise NotAuthenticated("This session has ended.", code="session_theft_suspected")
