"""create_app(settings): the only place the BFF's objects are built.

Request flow: Edge (request id, limits, cross-site refusal, headers, access log) →
the API proxy for configured prefixes, else the Starlette router (/bff/*, health,
metrics, the SPA's static files).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from .dbsc import routes as dbsc
from .dbsc.binding import DeviceBinding
from .dpop import deployment_key
from .error_handlers import handle_bff_error, handle_http_exception, handle_protocol_error, handle_unexpected
from .errors import BFFError
from .gate import SessionGate
from .metrics import Metrics
from .middleware import Edge
from .oidc.client import OIDCClient
from .oidc.errors import OIDCError, TokenError
from .oidc.provider import Provider
from .oidc.validation import Expectations
from .profiles import metadata_problems
from .proxy import Proxy
from .routes import auth, health, sessions, user
from .security.cookies import Cookies
from .services import Services
from .session.crypto import RecordCipher
from .session.redis_store import RedisStore, connect, connect_listener
from .session.store import MemoryStore, SessionStore
from .settings import Settings, load_settings
from .tokens import RouteTokens, TokenManager
from .websocket import Sockets, WebSocketProxy

log = logging.getLogger("bff")


def build_store(settings: Settings, clock: Callable[[], float] = time.time) -> SessionStore:
    if settings.session_store == "memory":
        return MemoryStore(settings.session_idle_timeout, clock)
    cipher = RecordCipher.from_settings(settings.encryption_keys, settings.secret_keys)
    return RedisStore(
        connect(settings.redis_url, settings.redis_timeout),
        cipher,
        settings.session_idle_timeout,
        clock,
        timeout=settings.redis_timeout,
        listener=connect_listener(settings.redis_url, settings.redis_timeout),
        # A process trusts its copy of a session this long (the idle timeout slides as
        # often); at most a tenth of the idle timeout, so idle expiry stays precise.
        cache_ttl=min(float(settings.session_cache_ttl), settings.session_idle_timeout / 10),
        cache_size=settings.session_cache_size,
    )


class SpaFiles(StaticFiles):
    """The built SPA: files as they are, index.html for client-side routes."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:
            if exc.status_code != 404 or scope["method"] not in ("GET", "HEAD"):
                raise
            response = FileResponse(Path(str(self.directory)) / "index.html")
            response.headers["cache-control"] = "no-cache"
            return response
        if path.startswith("assets/"):
            response.headers.setdefault("cache-control", "public, max-age=31536000, immutable")
        else:
            response.headers.setdefault("cache-control", "no-cache")
        return response


class BFFApp:
    """The ASGI application: Edge → the API proxy or the router; its services are exposed
    for start-up, shutdown and tests."""

    def __init__(self, services: Services, proxy: Proxy, routes: list[Any]) -> None:
        self.services = services
        self.proxy = proxy
        settings = services.settings
        self.sockets = Sockets(
            services.store, services.metrics, settings.ws_max_per_session, settings.ws_max_per_process
        )
        self.websockets = WebSocketProxy(services, proxy, self.sockets)
        self.router = Starlette(
            routes=routes,
            exception_handlers={
                BFFError: handle_bff_error,
                OIDCError: handle_protocol_error,
                TokenError: handle_protocol_error,
                HTTPException: handle_http_exception,
                Exception: handle_unexpected,
            },
            lifespan=self._lifespan,
        )
        self.router.state.services = services
        self.edge = Edge(
            self.dispatch, services.settings, services.metrics, lambda path: proxy.match(path) is not None
        )
        self._loader: asyncio.Task[None] | None = None
        self._notices: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def _lifespan(self, _: Starlette) -> AsyncIterator[None]:
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    close_sockets_on_signal = False

    def _chain_stop_signals(self) -> None:
        """In a worker: on SIGINT/SIGTERM first close the WebSockets (1001, sent at once), then
        let the server's own handler (installed before the lifespan starts) stop it."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(sig)

            def handler(signum: int, frame: Any, previous: Any = previous) -> None:
                loop.call_soon_threadsafe(self.sockets.close_all)
                if callable(previous):
                    previous(signum, frame)

            signal.signal(sig, handler)

    async def startup(self) -> None:
        if self.close_sockets_on_signal:
            self._chain_stop_signals()
        await self.proxy.start()
        self._loader = asyncio.create_task(self.services.provider.load_with_retry())
        self._notices = asyncio.create_task(self.services.store.run_notices())
        self._sweeper = asyncio.create_task(self.sockets.sweep())

    async def shutdown(self) -> None:
        self.sockets.close_all()  # 1001, if the server has not closed them already
        await self.sockets.drain()
        await cancel_all([t for t in (self._loader, self._notices, self._sweeper) if t is not None])
        await self.proxy.stop()
        await self.services.http.aclose()
        await self.services.store.close()

    def owns(self, path: str) -> bool:
        """The paths this app answers when embedded in a host app: /bff and the API routes."""
        return path == "/bff" or path.startswith("/bff/") or self.proxy.match(path) is not None

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            route = self.proxy.match(scope["path"])
            if route is not None:
                if scope["type"] == "http":
                    await self.proxy.handle(route, scope, receive, send)
                else:
                    await self.websockets.handle(route, scope, receive, send)
                return
        await self.router(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.edge(scope, receive, send)


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel background tasks and wait for them, cancelling again those still running after
    a moment: redis-py's pub/sub read can swallow a cancellation that races its own read
    timeout, which left a shutdown waiting for ever."""
    for _ in range(10):
        pending = [t for t in tasks if not t.done()]
        if not pending:
            return
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.5)


def _idp_http(metrics: Metrics) -> httpx.AsyncClient:
    """The one HTTP client for IdP calls, timing each by its endpoint's last path segment."""
    idp_latency = metrics.idp_latency

    async def on_request(request: httpx.Request) -> None:
        request.extensions["bff_started"] = time.perf_counter()

    async def on_response(response: httpx.Response) -> None:
        started = response.request.extensions.get("bff_started")
        if started is not None:
            path = response.request.url.path.rsplit("/", 1)[-1] or "root"
            idp_latency.labels(path[:40]).observe(time.perf_counter() - started)

    return httpx.AsyncClient(
        timeout=httpx.Timeout(10.0, connect=5.0),
        follow_redirects=False,
        event_hooks={"request": [on_request], "response": [on_response]},
        headers={"User-Agent": "bff"},
    )


def _services(
    settings: Settings,
    store: SessionStore,
    clock: Callable[[], float],
    http: httpx.AsyncClient,
    metrics: Metrics,
) -> Services:
    """Everything a request may use, wired once per app (routes and the proxy depend on it,
    never the other way)."""
    provider = Provider(
        http, settings.discovery_url, settings.issuer, check=lambda meta: metadata_problems(settings, meta)
    )
    client = OIDCClient(settings, http, provider)
    checks = Expectations(
        provider,
        settings.issuer,
        settings.client_id,
        settings.id_token_algs,
        settings.clock_skew,
        clock,
        settings.id_token_max_iat_age,
    )
    cookies = Cookies(settings)
    tokens = TokenManager(
        store, client, checks, settings.token_refresh_skew, metrics, clock, settings.revoke_on_logout
    )
    binding = DeviceBinding(settings, store, cookies, metrics, tokens.end, clock)
    client_key = deployment_key(settings.secret_keys[0], settings.dpop_client_key) if settings.dpop else None
    return Services(
        settings=settings,
        store=store,
        http=http,
        provider=provider,
        client=client,
        tokens=tokens,
        route_tokens=RouteTokens(store, client, tokens, metrics, clock, client_key),
        cookies=cookies,
        metrics=metrics,
        checks=checks,
        gate=SessionGate(cookies, store, binding, tokens, settings.end_session_on_browser_change),
        binding=binding,
        clock=clock,
    )


def _routes(settings: Settings) -> list[Any]:
    """/bff/* in a router of its own: a known path called with another method is a 405 with
    Allow (Starlette's partial match), an unknown one a JSON 404, never the SPA's index."""
    bff_routes = [
        Route("/login", auth.login, methods=["GET"]),
        Route("/callback", auth.callback, methods=["GET"]),
        Route("/logout", auth.logout, methods=["GET", "POST"]),
        Route("/post-logout", auth.post_logout, methods=["GET"]),
        Route("/backchannel-logout", auth.backchannel_logout, methods=["POST"]),
        Route("/user", user.user, methods=["GET"]),
        Route("/sessions", sessions.sessions_collection, methods=["GET", "DELETE"]),
        Route("/sessions/{handle}", sessions.end_session, methods=["DELETE"]),
        Route("/dbsc/register", dbsc.register, methods=["POST"]),
        Route("/dbsc/refresh", dbsc.refresh, methods=["POST"]),
    ]
    routes: list[Any] = [
        Mount("/bff", routes=bff_routes),
        Route("/healthz", health.healthz, methods=["GET", "HEAD"]),
        Route("/readyz", health.readyz, methods=["GET", "HEAD"]),
    ]
    if settings.metrics_enabled:
        routes.append(Route("/metrics", health.metrics, methods=["GET"]))
    if settings.static_dir is not None:
        routes.append(Mount("/", SpaFiles(directory=settings.static_dir, html=True)))
    return routes


def create_app(
    settings: Settings,
    *,
    store: SessionStore | None = None,
    clock: Callable[[], float] = time.time,
    http: httpx.AsyncClient | None = None,
) -> BFFApp:
    metrics = Metrics()
    store = store or build_store(settings, clock)
    store.on_error = metrics.store_errors.inc
    services = _services(settings, store, clock, http or _idp_http(metrics), metrics)
    return BFFApp(services, Proxy(services), _routes(settings))


def app_from_env() -> BFFApp:
    """uvicorn factory for worker processes: each reads the same environment, and closes its
    WebSockets with 1001 when told to stop (uvicorn's own worker server would send 1012)."""
    from .log import setup_logging

    settings = load_settings()
    setup_logging(settings.log_format, settings.log_level)
    app = create_app(settings)
    app.close_sockets_on_signal = True
    return app
