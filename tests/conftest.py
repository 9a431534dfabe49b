"""Shared fixtures: one redis-server, one test provider and one upstream per test run
(real processes), and a factory for BFF apps configured against them.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bff.app import BFFApp
from tests.support import (
    ROOT,
    SECRET,
    Browser,
    InProcessBffs,
    ProviderProc,
    RedisServer,
    UpstreamProc,
    bff_env,
)

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
    """make_bff(**BFF_* overrides) -> (app, browser): an in-process BFF against the real parts;
    make_bff.new_browser(app, ip=..., user_agent=...) -> another browser of that app."""
    running = InProcessBffs(PUBLIC_URL)

    async def factory(store: str = "redis", wait: bool = True, **overrides: str) -> tuple[BFFApp, Browser]:
        settings = {"BFF_API_ROUTES": f"/api={upstream.url}", **overrides}
        env = bff_env(idp, redis_url if store == "redis" else None, PUBLIC_URL, **settings)
        app = await running.app(env, wait=wait)
        return app, await running.browser(app)

    factory.new_browser = running.browser  # type: ignore[attr-defined]
    yield factory
    await running.close()


@pytest.fixture
async def bff(make_bff: AppFactory) -> tuple[BFFApp, Browser]:
    return await make_bff()


@pytest.fixture
def app_session() -> Callable[[BFFApp, Browser], Awaitable[Any]]:
    """app_session(app, browser) -> the browser's session as the app's store holds it."""

    async def load(app: BFFApp, browser: Browser) -> Any:
        session_id = app.services.cookies.session_id(browser._cookie_header().get("cookie", ""))
        return await app.services.store.load(session_id, touch=False) if session_id else None

    return load


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


__all__ = ["PUBLIC_URL", "SECRET"]
