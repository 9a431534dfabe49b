"""POST /bff/dbsc/register and POST /bff/dbsc/refresh: the browser's own calls (no X-CSRF,
which it cannot add), same-origin only (Edge), never framed, never cached (Edge's /bff
headers). Both need the session cookie; neither is gated by the binding they establish."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import NotAuthenticated
from ..routes.common import current_session, services


async def register(request: Request) -> Response:
    svc = services(request)
    session = await current_session(request, touch=False, enforce=False)
    if session is None or not svc.binding.enabled:
        raise NotAuthenticated()
    instructions, cookie, challenge = await svc.binding.register(
        session, request.headers.get("secure-session-response")
    )
    response = JSONResponse(instructions)
    response.headers.append("set-cookie", cookie)
    response.headers["secure-session-challenge"] = challenge
    return response


async def refresh(request: Request) -> Response:
    svc = services(request)
    session = await current_session(request, touch=False, enforce=False)
    if session is None or not svc.binding.enabled:
        raise NotAuthenticated()  # the browser then ends its DBSC session
    status, headers = await svc.binding.refresh(
        session, request.headers.get("sec-secure-session-id"), request.headers.get("secure-session-response")
    )
    response = Response(status_code=status)
    for name, value in headers:
        response.headers.append(name, value)
    return response
