"""The session gate: every use of a session (the /bff endpoints, the proxy, WebSockets, a
host app's local APIs) finds it here, from the request's Cookie header, so each check that
applies to every use is made in one place: the device binding (DBSC: a bound session needs
its bound cookie) and the optional browser-change policy.
"""

from __future__ import annotations

import logging

from .dbsc.binding import DeviceBinding
from .errors import NotAuthenticated
from .security.cookies import Cookies
from .security.user_agents import user_agent_summary
from .session.models import Session
from .session.store import SessionStore
from .tokens import TokenManager

audit = logging.getLogger("bff.audit")


class SessionGate:
    def __init__(
        self,
        cookies: Cookies,
        store: SessionStore,
        binding: DeviceBinding,
        tokens: TokenManager,
        browser_change_ends_session: bool = False,
    ) -> None:
        self.cookies = cookies
        self.store = store
        self.binding = binding
        self.tokens = tokens
        self.browser_change_ends_session = browser_change_ends_session

    async def session(
        self,
        cookie_header: str,
        touch: bool = True,
        *,
        enforce: bool = True,
        skipped: str | None = None,
        user_agent: str = "",
    ) -> Session | None:
        """The caller's live session, or None (no cookie, bad signature, ended or expired).
        With ``enforce`` (every use but logout and the DBSC endpoints) a bound session without
        its bound cookie is refused (401 device_binding_required)."""
        session_id = self.cookies.session_id(cookie_header)
        if session_id is None:
            return None
        session = await self.store.load(session_id, touch=touch)
        if session is None or not enforce:
            return session
        if self.binding.enabled:
            await self.binding.admit(session, cookie_header, skipped)
        if self.browser_change_ends_session:  # a missing User-Agent is "", on every path
            await self._same_browser(session, user_agent)
        return session

    async def _same_browser(self, session: Session, user_agent: str) -> None:
        """A weak hijack signal (a stolen cookie replayed from another browser family): the
        user-agent summary the session started with must not change."""
        now = user_agent_summary(user_agent)
        if session.user_agent in ("", "unknown") or now == session.user_agent:
            return
        audit.warning(
            "browser changed: session ended",
            extra={
                "event": "session_browser_changed",
                "sub": session.sub,
                "was": session.user_agent,
                "now": now,
            },
        )
        await self.tokens.end(session, "the browser changed")
        raise NotAuthenticated("This session was started in another browser.", code="session_browser_changed")
