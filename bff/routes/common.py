"""Helpers shared by the endpoints: the services, the caller's session."""

from __future__ import annotations

from starlette.requests import Request

from ..errors import NotAuthenticated
from ..security.csrf import check_csrf
from ..services import Services
from ..session.models import Session
from ..tokens import revoke_token


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def client_ip(request: Request) -> str:
    ip: str = request.scope.get("state", {}).get("client_ip", "")
    return ip


async def current_session(request: Request, touch: bool = True, enforce: bool = True) -> Session | None:
    """The caller's live session, or None (no cookie, bad signature, ended or expired); with
    ``enforce``, refused when its device binding or browser check fails (gate.py)."""
    headers = request.headers
    return await services(request).gate.session(
        headers.get("cookie", ""),
        touch,
        enforce=enforce,
        skipped=headers.get("secure-session-skipped"),
        user_agent=headers.get("user-agent", ""),
    )


async def require_session(request: Request) -> Session:
    """For XHR endpoints: X-CSRF checked, then the session or 401."""
    svc = services(request)
    check_csrf(request.headers, svc.settings.public_url)
    session = await current_session(request)
    if session is None:
        raise NotAuthenticated()
    return session


async def revoke_tokens(svc: Services, session: Session) -> None:
    """Revoke an ended session's refresh token (or, without one, its access token) at the
    IdP (RFC 7009), best effort: the local session is gone already either way."""
    token, hint = (
        (session.refresh_token, "refresh_token")
        if session.refresh_token
        else (session.access_token, "access_token")
    )
    await revoke_token(svc.client, token, hint, svc.settings.revoke_on_logout)
