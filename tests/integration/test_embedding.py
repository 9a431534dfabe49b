"""The BFF embedded in a host FastAPI / Starlette app (bff.embed), against real Redis, the
test provider and the upstream: its endpoints and proxy served by the host, local API
endpoints guarded like proxied routes, the host's own routes untouched; and the example
host app (examples/fastapi_host) as a real uvicorn process."""

# No "from __future__ import annotations" here: FastAPI reads the endpoints' annotations at
# run time, and they name the local ``bff`` of fastapi_host().

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bff.embed import BFF, User
from bff.settings import load_settings
from tests.conftest import PUBLIC_URL
from tests.support import ROOT, Browser, Proc, bff_env, free_port

pytestmark = pytest.mark.smoke


def fastapi_host(bff: BFF) -> FastAPI:
    app = FastAPI(lifespan=bff.lifespan)
    bff.mount(app)

    @app.get("/local/me")
    async def me(user: Annotated[User, Depends(bff.user)]) -> dict[str, Any]:
        return {"sub": user.sub, "email": user.claims.get("email"), "token": await user.access_token()}

    @app.get("/local/maybe")
    async def maybe(user: Annotated[User | None, Depends(bff.optional_user)]) -> dict[str, Any]:
        return {"sub": user.sub if user else None}

    @app.post("/host/items")
    async def items() -> dict[str, bool]:  # the host's own: no session, no CSRF asked
        return {"created": True}

    return app


@pytest.fixture
async def embedded(idp, redis_url, upstream) -> AsyncIterator[tuple[BFF, Browser]]:
    env = bff_env(
        idp, redis_url, PUBLIC_URL, BFF_API_ROUTES=f"/api={upstream.url}", BFF_TOKEN_REFRESH_SKEW="60"
    )
    bff = BFF(load_settings(env))
    host = fastapi_host(bff)
    async with bff.running():
        await bff.app.services.provider.keys()
        transport = httpx.ASGITransport(app=host, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, timeout=30) as client:
            browser = Browser(client, PUBLIC_URL)
            yield bff, browser
            await browser.aclose()


async def test_the_host_serves_the_bff_endpoints_and_its_proxy(embedded):
    _, browser = embedded
    assert (await browser.login()).status_code == 302
    assert (await browser.get("/bff/user", csrf=True)).json()["sub"] == "user-alice-0001"
    echo = (await browser.get("/api/echo", csrf=True)).json()
    assert echo["headers"]["authorization"][0].startswith("Bearer eyJ")
    assert "cookie" not in echo["headers"]
    r = await browser.request("PUT", "/bff/user", csrf=True)
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


async def test_a_local_endpoint_gets_the_claims_and_a_token(embedded):
    _, browser = embedded
    await browser.login()
    r = await browser.get("/local/me", csrf=True)
    assert r.status_code == 200, r.text
    assert r.json()["sub"] == "user-alice-0001" and r.json()["email"] == "alice@example.com"
    assert r.json()["token"].startswith("eyJ")


async def test_a_local_endpoint_refuses_cross_site_calls_and_calls_without_x_csrf(embedded):
    _, browser = embedded
    await browser.login()
    for headers in ({"sec-fetch-site": "cross-site"}, {"origin": "https://evil.example.com"}):
        r = await browser.get("/local/me", csrf=True, headers=headers)
        assert r.status_code == 403 and r.json()["error"] == "csrf_rejected", headers
    r = await browser.get("/local/me")
    assert r.status_code == 403 and r.json()["error"] == "csrf_rejected"


async def test_a_local_endpoint_answers_an_anonymous_call_with_401_json_never_a_redirect(embedded):
    _, browser = embedded
    r = await browser.get("/local/me", csrf=True, headers={"accept": "text/html"})
    assert r.status_code == 401
    assert r.json()["error"] == "not_authenticated"
    assert "location" not in r.headers
    assert (await browser.get("/local/maybe", csrf=True)).json() == {"sub": None}


async def test_a_local_endpoint_gets_a_refreshed_token_when_the_access_token_is_due(embedded, idp):
    bff, browser = embedded
    idp.configure(access_ttl=0, refresh_access_ttl=3600)  # the login's token is due at once
    await browser.login()
    svc = bff.app.services
    session = await svc.gate.session(f"bff_session={browser.cookies['bff_session']}", touch=False)
    before = idp.stats()["stats"]["refresh_token"]
    token = (await browser.get("/local/me", csrf=True)).json()["token"]
    assert token != session.access_token
    assert idp.stats()["stats"]["refresh_token"] == before + 1
    # The refreshed token is the session's now: the proxy uses it without another refresh.
    echo = (await browser.get("/api/echo", csrf=True)).json()
    assert echo["headers"]["authorization"][0] == f"Bearer {token}"
    assert idp.stats()["stats"]["refresh_token"] == before + 1


async def test_the_host_apps_own_routes_are_untouched_by_the_bff(embedded):
    _, browser = embedded
    r = await browser.request("POST", "/host/items")  # no X-CSRF, no session: the host's business
    assert r.status_code == 200 and r.json() == {"created": True}
    assert "cache-control" not in r.headers  # the BFF's response headers are its own
    r = await browser.get("/nothing-here")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}  # FastAPI's, not the BFF's


async def test_a_starlette_host_uses_the_request_helper_and_the_decorator(idp, redis_url, upstream):
    env = bff_env(idp, redis_url, PUBLIC_URL, BFF_API_ROUTES=f"/api={upstream.url}")
    bff = BFF(load_settings(env))

    @bff.requires_user
    async def decorated(request: Request) -> Response:
        return JSONResponse({"sub": request.state.user.sub})

    async def helper(request: Request) -> Response:
        user = await bff.user(request)
        return JSONResponse({"sub": user.sub})

    host = Starlette(routes=[Route("/a", decorated), Route("/b", helper)], lifespan=bff.lifespan)
    bff.mount(host)
    async with bff.running():
        transport = httpx.ASGITransport(app=host)
        async with httpx.AsyncClient(transport=transport, timeout=30) as client:
            browser = Browser(client, PUBLIC_URL)
            assert (await browser.get("/a", csrf=True)).status_code == 401
            await browser.login()
            for path in ("/a", "/b"):
                assert (await browser.get(path, csrf=True)).json() == {"sub": "user-alice-0001"}
            await browser.aclose()


async def test_a_local_endpoint_before_the_bff_started_says_how_to_start_it(idp, redis_url):
    bff = BFF(load_settings(bff_env(idp, redis_url, PUBLIC_URL)))
    with pytest.raises(RuntimeError, match=r"lifespan=bff\.lifespan"):
        await bff.user(Request({"type": "http", "headers": [], "method": "GET", "path": "/"}))


def test_the_example_host_app_serves_login_user_a_local_call_and_a_proxied_call(
    idp, redis_url, upstream, tmp_path
):
    """examples/fastapi_host/main.py as documented: uvicorn, BFF_* settings from the environment."""
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    env = bff_env(
        idp,
        redis_url,
        public,
        BFF_API_ROUTES=f"/api={upstream.url}",
        EXAMPLE_UPSTREAM_URL=f"{upstream.url}/echo",
        BFF_ENV_FILE="/dev/null",
    )
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "examples" / "fastapi_host")]
    proc = Proc([*cmd, "main:app", "--port", str(port)], port, env=env, log=tmp_path / "example.log")
    proc.env = {k: v for k, v in proc.env.items() if not k.startswith("BFF_") or k in env}
    proc.start()
    try:

        async def drive() -> None:
            async with httpx.AsyncClient(timeout=30) as client:
                browser = Browser(client, public)
                assert (await browser.login()).status_code == 302
                assert (await browser.get("/bff/user", csrf=True)).json()["sub"] == "user-alice-0001"
                summary = (await browser.get("/local/summary", csrf=True)).json()
                assert summary["sub"] == "user-alice-0001"
                upstream_auth = summary["upstream"]["body"]["headers"]["authorization"][0]
                assert upstream_auth.startswith("Bearer eyJ")
                proxied = (await browser.get("/api/echo", csrf=True)).json()
                assert proxied["headers"]["authorization"][0] == upstream_auth
                assert (await browser.get("/local/health")).json() == {"status": "ok"}
                assert (await browser.get("/local/summary")).status_code == 403
                await browser.aclose()

        asyncio.run(drive())
    finally:
        proc.stop()


def test_the_lifespan_starts_the_bff_and_the_hosts_middleware_never_touches_its_answers(
    idp, redis_url, upstream
):
    """``lifespan=bff.lifespan`` run by a real lifespan (Starlette's TestClient sends the
    events), and a host CORS layer that opens everything to every origin: it answers for the
    host's routes, never for the BFF's, which stay same-origin."""
    from fastapi.middleware.cors import CORSMiddleware
    from starlette.testclient import TestClient

    bff = BFF(load_settings(bff_env(idp, redis_url, PUBLIC_URL, BFF_API_ROUTES=f"/api={upstream.url}")))
    host = FastAPI(lifespan=bff.lifespan)
    bff.mount(host)  # and a middleware added afterwards, as apps grow
    host.add_middleware(CORSMiddleware, allow_origins=["*"], allow_headers=["*"], allow_methods=["*"])

    @host.get("/host/ping")
    async def ping() -> dict[str, bool]:
        return {"pong": True}

    foreign = {"origin": "https://other.example", "x-csrf": "1"}
    with TestClient(host, base_url=PUBLIC_URL, follow_redirects=False) as client:
        login = client.get("/bff/login")
        assert login.status_code == 302 and login.headers["location"].startswith(idp.issuer)  # started
        assert client.get("/host/ping", headers=foreign).headers["access-control-allow-origin"] == "*"
        for method, path in (("GET", "/bff/user"), ("OPTIONS", "/bff/user"), ("GET", "/api/echo")):
            r = client.request(method, path, headers={**foreign, "access-control-request-method": "GET"})
            assert r.status_code in (401, 403, 405), (method, path, r.status_code)
            assert "access-control-allow-origin" not in r.headers, (method, path)
