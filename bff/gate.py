"""The session gate: every use of a session (the /bff endpoints, the proxy, WebSockets, a
host app's local APIs) finds it here, from the request's Cookie header, so each check that
applies to every use is made in one place.
"""

from __future__ import annotations

from .security.cookies import Cookies
from .session.models import Session
from .session.store import SessionStore


class SessionGate:
    def __init__(self, cookies: Cookies, store: SessionStore) -> None:
        self.cookies = cookies
        self.store = store

    async def session(self, cookie_header: str, touch: bool = True) -> Session | None:
        """The caller's live session, or None (no cookie, bad signature, ended or expired)."""
        session_id = self.cookies.session_id(cookie_header)
        if session_id is None:
            return None
        return await self.store.load(session_id, touch=touch)
