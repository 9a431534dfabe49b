"""Liveness, readiness and metrics."""

from __future__ import annotations

import contextlib

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import StoreUnavailable
from .common import services


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    svc = services(request)
    checks: dict[str, str] = {}
    try:
        await svc.store.ping()
        checks["session_store"] = "ok"
    except StoreUnavailable:
        checks["session_store"] = "unavailable"
    checks["idp_metadata"] = "ok" if svc.provider.loaded and svc.provider.cached_keys() else "not loaded"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
        headers={"Cache-Control": "no-store"},
    )


async def metrics(request: Request) -> Response:
    svc = services(request)
    # Without the store, the store-error counter says why; the other metrics are still useful.
    with contextlib.suppress(StoreUnavailable):
        svc.metrics.sessions.set(await svc.store.count_sessions())
    return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
