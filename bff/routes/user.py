"""GET /bff/user: who is signed in, for the SPA."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..session.models import logout_sid, public_handle
from .common import require_session, services


async def user(request: Request) -> Response:
    svc = services(request)
    session = await require_session(request)
    idle = svc.settings.session_idle_timeout
    response = JSONResponse(
        {
            "sub": session.sub,
            "claims": session.claims,
            "session": {
                "id": public_handle(session.id),
                "created_at": session.created_at,
                "expires_at": session.expires_at,
                "idle_expires_at": session.idle_expires_at(idle),
                "idle_timeout": idle,
                "access_token_expires_at": session.access_expires_at or None,
            },
            "logout_url": f"/bff/logout?sid={logout_sid(session.id)}",
            **({"device_binding": svc.binding.state(session)} if svc.binding.enabled else {}),
        }
    )
    offer = await svc.binding.offer(session)  # DBSC: repeated while the session is unbound
    if offer is not None:
        response.headers["secure-session-registration"] = offer
    return response
