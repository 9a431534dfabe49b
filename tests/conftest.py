"""Shared fixtures: one redis-server, one test provider and one upstream per test run
(real processes), and a factory for BFF apps configured against them.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bff.app import BFFApp, create_app
from bff.settings import load_settings
from tests.support import ROOT, SECRET, Browser, ProviderProc, RedisServer, UpstreamProc, bff_env

ARTIFACTS = ROOT / "test-artifacts"
PUBLIC_URL = "http://localhost:8080"


def pytest_configure(config: pytest.Config) -> None:
    if shutil.which("redis-server") is None:
        raise pytest.UsageError("redis-server is not installed: run ./scripts/test, which installs it")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def provider() -> Iterator[ProviderProc]:
    proc = ProviderProc(log=ARTIFACTS / "logs" / "provider.log")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def upstream() -> Iterator[UpstreamProc]:
    proc = UpstreamProc()
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def idp(provider: ProviderProc) -> Iterator[ProviderProc]:
    """The provider, reset to good behaviour before and after the test."""
    provider.reset()
    yield provider
    provider.reset()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    redis_server.cli("FLUSHALL")
    return redis_server.url


AppFactory = Callable[..., Awaitable[tuple[BFFApp, Browser]]]


@pytest.fixture
async def make_bff(idp: ProviderProc, redis_url: str, upstream: UpstreamProc) -> AsyncIterator[AppFactory]:
    """make_bff(**BFF_* overrides) -> (app, browser): an in-process BFF against the real parts."""
    apps: list[BFFApp] = []
    browsers: list[Browser] = []
    clients: list[httpx.AsyncClient] = []

    async def factory(store: str = "redis", wait: bool = True, **overrides: str) -> tuple[BFFApp, Browser]:
        settings = {"BFF_API_ROUTES": f"/api={upstream.url}", **overrides}
        env = bff_env(idp, redis_url if store == "redis" else None, PUBLIC_URL, **settings)
        app = create_app(load_settings(env))
        await app.startup()
        if wait:
            await app.services.provider.metadata()
            await app.services.provider.keys()
        apps.append(app)
        browser = await new_browser(app)
        return app, browser

    async def new_browser(app: BFFApp, ip: str = "127.0.0.1", **kw: Any) -> Browser:
        transport = httpx.ASGITransport(app=app, client=(ip, 40000))
        client = httpx.AsyncClient(transport=transport, timeout=30)
        clients.append(client)
        browser = Browser(client, PUBLIC_URL, **kw)
        browsers.append(browser)
        return browser

    factory.new_browser = new_browser  # type: ignore[attr-defined]
    yield factory
    for b in browsers:
        await b.aclose()
    for c in clients:
        await c.aclose()
    for a in apps:
        await a.shutdown()


@pytest.fixture
async def bff(make_bff: AppFactory) -> tuple[BFFApp, Browser]:
    return await make_bff()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


__all__ = ["PUBLIC_URL", "SECRET"]
