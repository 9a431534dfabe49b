"""The user's own sessions: list, end one, end all. Handles shown to the user are
one-way hashes of the real ids, so this list never leaks a usable session id, and a
handle only matches among the caller's own sessions.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import NotFound
from ..session.models import Session, public_handle
from .common import require_session, revoke_tokens, services

audit = logging.getLogger("bff.audit")


def _describe(s: Session, current: Session, idle: int) -> dict[str, object]:
    return {
        "id": public_handle(s.id),
        "created_at": s.created_at,
        "last_seen": s.last_seen,
        "expires_at": s.idle_expires_at(idle),
        "user_agent": s.user_agent,  # summarised at login: the raw string is never stored
        "ip": s.ip,
        "current": s.id == current.id,
    }


async def list_sessions(request: Request) -> Response:
    svc = services(request)
    current = await require_session(request)
    mine = await svc.store.sessions_of(current.sub)
    idle = svc.settings.session_idle_timeout
    return JSONResponse({"sessions": [_describe(s, current, idle) for s in mine]})


async def end_session(request: Request) -> Response:
    svc = services(request)
    current = await require_session(request)
    handle = request.path_params["handle"]
    for s in await svc.store.sessions_of(current.sub):
        if public_handle(s.id) == handle:
            await svc.store.delete(s.id)
            svc.metrics.logouts.labels("ended_by_user").inc()
            # Sessions of one IdP session share a grant: revoking would end the caller's too.
            if s.id == current.id or s.idp_sid is None or s.idp_sid != current.idp_sid:
                await revoke_tokens(svc, s)
            audit.info(
                "session ended", extra={"event": "session_ended", "reason": "ended by user", "sub": s.sub}
            )
            response = Response(status_code=204)
            if s.id == current.id:
                response.headers.append("set-cookie", svc.cookies.clear_session())
            return response
    raise NotFound("No such session among yours.", code="session_not_found")


async def end_all_sessions(request: Request) -> Response:
    svc = services(request)
    current = await require_session(request)
    mine = await svc.store.sessions_of(current.sub)
    if all(s.id != current.id for s in mine):
        mine.append(current)
    for s in mine:
        await svc.store.delete(s.id)
        svc.metrics.logouts.labels("ended_everywhere").inc()
        await revoke_tokens(svc, s)
    audit.info(
        "all sessions ended",
        extra={
            "event": "session_ended",
            "reason": "log out everywhere",
            "sub": current.sub,
            "count": len(mine),
        },
    )
    response = Response(status_code=204)
    response.headers.append("set-cookie", svc.cookies.clear_session())
    return response


async def sessions_collection(request: Request) -> Response:
    """/bff/sessions: GET lists them, DELETE ends them all (one route, so a 405 names both)."""
    if request.method == "DELETE":
        return await end_all_sessions(request)
    return await list_sessions(request)
