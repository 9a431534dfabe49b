"""The BFF inside an existing Starlette or FastAPI application.

    from fastapi import Depends, FastAPI
    from bff.embed import BFF, User

    bff = BFF()                                  # settings from BFF_* variables, or BFF(settings)
    app = FastAPI(lifespan=bff.lifespan)         # or: async with bff.running(): in your lifespan
    bff.mount(app)                               # /bff/* and the BFF_API_ROUTES prefixes

    @app.get("/local/orders")
    async def orders(user: Annotated[User, Depends(bff.user)]):
        token = await user.access_token()        # fresh: refreshed first when due
        ...

Why this shape: Starlette does not run a mounted sub-application's lifespan, so the BFF
joins the host's (``lifespan=bff.lifespan``, or ``bff.running()`` nested in the host's own)
instead of starting a second app lifecycle. ``mount`` puts one ASGI layer in front of all
of the host's middleware and its router: it hands exactly the BFF's paths to the same ASGI app
the standalone gateway runs (its edge checks, proxy and endpoints, unchanged) and everything
else to the host. In front, because the host's middleware has no business on the BFF's
answers (a host CORS middleware must not make /bff/user readable cross-site) and because
the host's router and exception layers cost the proxied call a third more. Local endpoints
ask for the session the FastAPI way, as a dependency (``Depends(bff.user)``), or in
Starlette with ``await bff.user(request)`` or the ``@bff.requires_user`` decorator; the
BFF's errors become its usual JSON answers through the exception handler ``mount``
registers on the host.

Everything outside this module (and ``bff.settings``) is private to the package.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .app import BFFApp, create_app
from .error_handlers import handle_bff_error, handle_protocol_error
from .errors import BFFError, NotAuthenticated
from .oidc.errors import OIDCError, TokenError
from .security.csrf import check_csrf
from .session.models import Session, public_handle
from .settings import Settings, load_settings

__all__ = ["BFF", "User"]


@dataclass(frozen=True)
class User:
    """The signed-in user of a request: their claims, and a fresh access token on demand."""

    sub: str
    claims: Mapping[str, Any]
    session_id: str  # the public handle shown in /bff/sessions, not the session's secret id
    _token: Callable[[], Awaitable[str]] = field(repr=False, compare=False)

    async def access_token(self) -> str:
        """The session's access token, refreshed first (once for all concurrent callers,
        across processes) when it is about to expire."""
        return await self._token()


class _Front:
    """The middleware ``mount`` adds: the BFF's paths (/bff and the API route prefixes, HTTP
    and WebSocket) to the BFF, the rest to the host."""

    def __init__(self, app: ASGIApp, bff: BFFApp) -> None:
        self.app = app
        self.bff = bff

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self.bff.owns(scope["path"]):
            await self.bff(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class BFF:
    """One BFF in a host application: its endpoints, proxy routes and local-API guards."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.app = create_app(self.settings)
        self._started = False

    # --- wiring into the host -----------------------------------------------------------
    def mount(self, host: Starlette) -> None:
        """Serve /bff/* and the proxy routes from ``host`` (ahead of all its middleware and
        routes) and map the BFF's errors to its JSON answers for the host's endpoints too.
        Call it before the host serves its first request (Starlette builds its stack then)."""
        build = host.build_middleware_stack
        # Outermost, ahead of the host's error, telemetry and body-limit layers too: the BFF
        # maps its own errors and limits its own bodies, as the gateway does.
        host.build_middleware_stack = lambda: _Front(build(), self.app)  # type: ignore[method-assign]
        host.add_exception_handler(BFFError, handle_bff_error)
        host.add_exception_handler(OIDCError, handle_protocol_error)
        host.add_exception_handler(TokenError, handle_protocol_error)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Start the BFF (Redis pool, HTTP clients, IdP metadata) for as long as the block runs."""
        await self.app.startup()
        self._started = True
        try:
            yield
        finally:
            self._started = False
            await self.app.shutdown()

    def lifespan(self, host: Any) -> contextlib.AbstractAsyncContextManager[None]:
        """For ``Starlette(lifespan=bff.lifespan)`` / ``FastAPI(lifespan=bff.lifespan)``."""
        return self.running()

    # --- local APIs -----------------------------------------------------------------------
    async def user(self, request: Request) -> User:
        """The caller's session for a local API, with the same rules as proxied routes:
        X-CSRF, Fetch Metadata and Origin checked, 401 JSON (never a redirect) without one."""
        user = await self._user(request, required=True)
        assert user is not None
        return user

    async def optional_user(self, request: Request) -> User | None:
        """Like ``user``, but None instead of 401 when nobody is signed in."""
        return await self._user(request, required=False)

    def requires_user(
        self, endpoint: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """Starlette endpoint decorator: the user is in ``request.state.user``."""

        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            request.state.user = await self.user(request)
            return await endpoint(request)

        return guarded

    async def _user(self, request: Request, required: bool) -> User | None:
        if not self._started:
            raise RuntimeError("the BFF is not started: pass lifespan=bff.lifespan to the host app")
        svc = self.app.services
        check_csrf(request.headers, svc.settings.public_url)
        session = await svc.gate.session(
            request.headers.get("cookie", ""),
            skipped=request.headers.get("secure-session-skipped"),
            user_agent=request.headers.get("user-agent", ""),
        )
        if session is None:
            if required:
                raise NotAuthenticated()
            return None
        return User(session.sub, session.claims, public_handle(session.id), self._token_of(session))

    def _token_of(self, session: Session) -> Callable[[], Awaitable[str]]:
        tokens = self.app.services.tokens

        async def token() -> str:
            return await tokens.access_token(session)

        return token
