"""An existing FastAPI application with the BFF embedded in it.

It serves the example SPA (spa-example/dist), its own local API endpoints and, through the
embedded BFF, /bff/* and the proxied routes of BFF_API_ROUTES, all from one process:

    GET  /local/summary   a local API endpoint that needs the session (X-CSRF: 1): it calls
                          EXAMPLE_UPSTREAM_URL with the user's fresh access token and says
                          what came back
    GET  /local/health    the host's own endpoint: no session, no X-CSRF
    /bff/*, /api/*        the BFF (login, callback, user, logout, sessions; the proxy)

Run (from the repository root, with the BFF_* settings in the environment):

    uvicorn --app-dir examples/fastapi_host main:app --port 8082

Settings beyond the BFF's: EXAMPLE_UPSTREAM_URL (the API the local endpoint calls, e.g.
http://localhost:9000/api/whoami) and EXAMPLE_STATIC_DIR (the built SPA; default
spa-example/dist next to this file's repository, if it exists).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, HTTPException
from fastapi.staticfiles import StaticFiles

from bff.embed import BFF, User
from bff.log import setup_logging

bff = BFF()  # every BFF_* setting from the environment, as for the standalone gateway
UPSTREAM = os.environ.get("EXAMPLE_UPSTREAM_URL", "")
STATIC = Path(os.environ.get("EXAMPLE_STATIC_DIR") or Path(__file__).parents[2] / "spa-example" / "dist")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The host's own lifespan, with the BFF's nested in it: one event loop, one server."""
    # The BFF's JSON log lines, access log and redaction filter for the whole app.
    setup_logging(bff.settings.log_format, bff.settings.log_level)
    async with bff.running(), httpx.AsyncClient(timeout=10) as client:
        app.state.http = client
        yield


app = FastAPI(title="bff embedding example", lifespan=lifespan)
bff.mount(app)


@app.get("/local/summary")
async def summary(user: Annotated[User, Depends(bff.user)]) -> dict[str, Any]:
    """A local API endpoint: the signed-in user, and an upstream called with their token."""
    if not UPSTREAM:
        raise HTTPException(503, "EXAMPLE_UPSTREAM_URL is not set")
    token = await user.access_token()
    client: httpx.AsyncClient = app.state.http
    answer = await client.get(UPSTREAM, headers={"Authorization": f"Bearer {token}"})
    return {
        "sub": user.sub,
        "name": user.claims.get("name"),
        "upstream": {"status": answer.status_code, "body": answer.json()},
    }


@app.get("/local/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


if (STATIC / "index.html").is_file():
    app.mount("/", StaticFiles(directory=STATIC, html=True), name="spa")
