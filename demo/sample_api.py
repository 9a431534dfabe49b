"""A small upstream API for the demo: it trusts nothing but a valid bearer access token.

It is two APIs in one process, each with its own audience: ``/api/*`` (audience
``demo-api``, the user's own token) and ``/reports/*`` and ``/status/*`` (audience
``demo-reports``: a token the BFF obtained for this API by token exchange, or its own
client-credentials token). Every request must carry ``Authorization: Bearer <JWT>`` (or, for
a DPoP-bound token, ``Authorization: DPoP <JWT>`` with a ``DPoP`` proof of the token's
``cnf.jkt`` key, checked as RFC 9449 §7 says: signature, ``htm``, ``htu``, ``iat``, ``ath``,
``jti`` not replayed); the token is validated against the realm's JWKS (signature,
``iss``, the API's ``aud``, ``exp``; RS/PS/ES algorithms only) before anything is answered.
Valid tokens are answered with the user's identity and the token's facts; anything else
gets a 401 JSON error with a ``WWW-Authenticate`` header (RFC 6750, RFC 9449).

With ``DEMO_API_DEBUG=1`` it also serves ``GET /debug/seen``: the tokens it accepted
(``jti``, ``sub``, ``iat``, ``exp``, ...), never the tokens themselves, so a test can
prove which token reached it. The BFF only forwards ``/api/*``, so ``/debug`` is reachable
only on the API's own port.

Settings (environment):
    DEMO_API_HOST      interface to listen on            127.0.0.1
    DEMO_API_PORT      port                              9000
    DEMO_API_ISSUER    issuer the tokens must carry      http://localhost:8081/realms/demo
    DEMO_API_JWKS_URL  where to fetch the signing keys   {issuer}/protocol/openid-connect/certs
    DEMO_API_AUDIENCE  audience of /api/* tokens         demo-api
    DEMO_API_REPORTS_AUDIENCE  audience of /reports/* and /status/* tokens   demo-reports
    DEMO_API_LEEWAY    clock skew tolerance in seconds   5
    DEMO_API_DEBUG     serve /debug/seen when 1/true     off

Run: ``python -m demo.sample_api``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from joserfc import jws, jwt
from joserfc.errors import ExpiredTokenError, JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from demo.dpop_verify import ProofError, ProofVerifier

log = logging.getLogger("demo.api")

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]
JWKS_MIN_REFRESH = 10.0  # seconds between JWKS fetches caused by an unknown key id


@dataclass(frozen=True)
class ApiConfig:
    issuer: str = "http://localhost:8081/realms/demo"
    jwks_url: str = ""
    audience: str = "demo-api"
    reports_audience: str = "demo-reports"
    leeway: int = 5
    debug: bool = False
    host: str = "127.0.0.1"
    port: int = 9000

    @property
    def jwks(self) -> str:
        return self.jwks_url or f"{self.issuer.rstrip('/')}/protocol/openid-connect/certs"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ApiConfig:
        e = dict(os.environ if env is None else env)
        return cls(
            issuer=e.get("DEMO_API_ISSUER") or cls.issuer,
            jwks_url=e.get("DEMO_API_JWKS_URL", ""),
            audience=e.get("DEMO_API_AUDIENCE") or cls.audience,
            reports_audience=e.get("DEMO_API_REPORTS_AUDIENCE") or cls.reports_audience,
            leeway=int(e.get("DEMO_API_LEEWAY") or cls.leeway),
            debug=(e.get("DEMO_API_DEBUG", "").lower() in ("1", "true", "yes", "on")),
            host=e.get("DEMO_API_HOST") or cls.host,
            port=int(e.get("DEMO_API_PORT") or cls.port),
        )


class Unauthorized(Exception):
    def __init__(self, error: str, message: str, scheme: str = "Bearer") -> None:
        super().__init__(message)
        self.error = error
        self.message = message
        self.scheme = scheme


@dataclass
class Keys:
    """The realm's public keys, fetched on first use and again when an unknown kid shows up."""

    url: str
    http: httpx.AsyncClient
    keyset: KeySet | None = None
    fetched_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self, kid: str | None) -> KeySet:
        async with self.lock:
            known = self.keyset is not None and (kid is None or any(k.kid == kid for k in self.keyset.keys))
            stale = time.monotonic() - self.fetched_at > JWKS_MIN_REFRESH
            if self.keyset is None or (not known and stale):
                try:
                    response = await self.http.get(self.url)
                    response.raise_for_status()
                    data = response.json()
                    # Only signing keys; Keycloak also publishes encryption keys (use=enc).
                    data["keys"] = [k for k in data.get("keys", []) if k.get("use", "sig") == "sig"]
                    self.keyset = KeySet.import_key_set(data)
                    self.fetched_at = time.monotonic()
                except (httpx.HTTPError, ValueError, JoseError) as exc:
                    log.warning("JWKS fetch from %s failed: %s", self.url, exc)
                    if self.keyset is None:
                        raise Unauthorized(
                            "temporarily_unavailable", "The signing keys are unavailable."
                        ) from exc
            assert self.keyset is not None
            return self.keyset


class Api:
    def __init__(self, config: ApiConfig) -> None:
        self.config = config
        self.http = httpx.AsyncClient(timeout=10.0)
        self.keys = Keys(config.jwks, self.http)
        self.dpop = ProofVerifier()
        self.calls: collections.Counter[str] = collections.Counter()
        self.seen: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)
        self.rejected: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)

    def audience_of(self, path: str) -> str:
        """Each API its own audience: /reports and /status are the reports API."""
        if path.startswith(("/reports/", "/status/")):
            return self.config.reports_audience
        return self.config.audience

    async def validate(self, request: HTTPConnection, method: str | None = None) -> dict[str, Any]:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() not in ("bearer", "dpop") or not token.strip():
            raise Unauthorized("invalid_request", "A bearer or DPoP access token is required.")
        token = token.strip()
        try:
            kid = jws.extract_compact(token.encode()).protected.get("kid")
        except (JoseError, ValueError, UnicodeError):
            kid = None
        keyset = await self.keys.get(kid)
        try:
            decoded = jwt.decode(token, keyset, algorithms=ALGORITHMS)
        except (JoseError, ValueError) as exc:
            raise Unauthorized(
                "invalid_token", f"The token's signature or format is invalid ({exc})."
            ) from exc
        claims: dict[str, Any] = dict(decoded.claims)
        registry = JWTClaimsRegistry(
            leeway=self.config.leeway,
            iss={"essential": True, "value": self.config.issuer},
            aud={"essential": True, "value": self.audience_of(request.url.path)},
            exp={"essential": True},
            sub={"essential": True},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError as exc:
            raise Unauthorized("invalid_token", "The access token has expired.") from exc
        except JoseError as exc:
            raise Unauthorized("invalid_token", f"The token's claims are not acceptable ({exc}).") from exc
        if claims.get("typ") not in (
            None,
            "Bearer",
            "DPoP",
        ):  # Keycloak marks ID and refresh tokens otherwise
            raise Unauthorized("invalid_token", "This is not an access token.")
        self.check_binding(request, scheme, token, claims, method)
        return claims

    def check_binding(
        self, request: HTTPConnection, scheme: str, token: str, claims: dict[str, Any], method: str | None
    ) -> None:
        """A DPoP-bound token (``cnf.jkt``, RFC 9449 §6) comes with the DPoP scheme and a valid
        proof of that key for this request; a bearer token without either."""
        cnf = claims.get("cnf")
        jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
        if jkt is None:
            if scheme.lower() == "dpop":
                raise Unauthorized("invalid_token", "A DPoP scheme with a token that is not DPoP-bound.")
            return
        if scheme.lower() != "dpop":
            raise Unauthorized(
                "invalid_token", "A DPoP-bound token must be sent with the DPoP scheme.", "DPoP"
            )
        try:
            proof = self.dpop.verify(
                request.headers.get("dpop"),
                method or request.scope.get("method", "GET"),
                str(request.url),
                access_token=token,
                jkt=jkt,
            )
        except ProofError as exc:
            raise Unauthorized(exc.error, exc.message, "DPoP") from exc
        claims["_dpop_jkt"] = proof["_jkt"]

    def record(self, claims: dict[str, Any], path: str) -> None:
        self.seen.append(
            {
                "jti": claims.get("jti"),
                "sub": claims.get("sub"),
                "preferred_username": claims.get("preferred_username"),
                "azp": claims.get("azp"),
                "sid": claims.get("sid"),
                "aud": claims.get("aud"),
                "iat": claims.get("iat"),
                "exp": claims.get("exp"),
                "dpop_jkt": claims.get("_dpop_jkt"),  # the proof's key, for DPoP-bound tokens
                "path": path,
                "seen_at": int(time.time()),
            }
        )


def _error(status: int, error: str, message: str, scheme: str = "Bearer") -> JSONResponse:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = f'{scheme} error="{error}"' if error != "invalid_request" else scheme
    return JSONResponse({"error": error, "message": message}, status_code=status, headers=headers)


def create_app(config: ApiConfig | None = None) -> Starlette:
    config = config or ApiConfig.from_env()
    api = Api(config)

    async def guarded(request: Request) -> dict[str, Any] | JSONResponse:
        try:
            claims = await api.validate(request)
        except Unauthorized as exc:
            api.rejected.append({"error": exc.error, "message": exc.message, "at": int(time.time())})
            status = 503 if exc.error == "temporarily_unavailable" else 401
            return _error(status, exc.error, exc.message, exc.scheme)
        api.record(claims, request.url.path)
        return claims

    async def whoami(request: Request) -> Response:
        claims = await guarded(request)
        if isinstance(claims, Response):
            return claims
        sub = claims["sub"]
        api.calls[sub] += 1
        now = int(time.time())
        exp = int(claims["exp"])
        return JSONResponse(
            {
                "sub": sub,
                "preferred_username": claims.get("preferred_username"),
                "name": claims.get("name"),
                "email": claims.get("email"),
                "aud": claims.get("aud"),
                "azp": claims.get("azp"),
                "scope": claims.get("scope"),
                "api": request.url.path.split("/")[1],
                "token": {
                    "jti": claims.get("jti"),
                    "iat": claims.get("iat"),
                    "exp": exp,
                    "expires_in": exp - now,
                    "dpop_bound": claims.get("_dpop_jkt") is not None,
                },
                "calls": api.calls[sub],
                "server_time": now,
                "message": f"Hello {claims.get('preferred_username') or sub}, the API accepted your token.",
            },
            headers={"Cache-Control": "no-store"},
        )

    async def live(websocket: WebSocket) -> None:
        """A live feed for the example SPA: the server time and the token's expiry, every second.
        The token is validated at the handshake (the BFF sent it; the browser never had it)."""
        try:
            claims = await api.validate(websocket, "GET")
        except Unauthorized as exc:
            api.rejected.append({"error": exc.error, "message": exc.message, "at": int(time.time())})
            await websocket.close(code=1008, reason=exc.error)
            return
        api.record(claims, websocket.url.path)
        await websocket.accept()
        try:
            while True:
                now = int(time.time())
                await websocket.send_json(
                    {"server_time": now, "sub": claims["sub"], "token_expires_in": int(claims["exp"]) - now}
                )
                await asyncio.sleep(1.0)
        except WebSocketDisconnect:
            return

    async def not_found(request: Request) -> Response:
        claims = await guarded(request)
        if isinstance(claims, Response):
            return claims
        return _error(404, "not_found", f"No API endpoint at {request.url.path}.")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def debug_seen(request: Request) -> Response:
        return JSONResponse(
            {"seen": list(api.seen), "rejected": list(api.rejected)}, headers={"Cache-Control": "no-store"}
        )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await api.http.aclose()

    routes = [
        Route("/api/whoami", whoami, methods=["GET"]),
        Route("/reports/whoami", whoami, methods=["GET"]),
        Route("/status/whoami", whoami, methods=["GET"]),
        WebSocketRoute("/api/live", live),
        Route("/api/{rest:path}", not_found),
        Route("/reports/{rest:path}", not_found),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    if config.debug:
        routes.append(Route("/debug/seen", debug_seen, methods=["GET"]))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.api = api
    return app


def main() -> None:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ApiConfig.from_env()
    log.info("sample API: issuer %s, audience %s, JWKS %s", config.issuer, config.audience, config.jwks)
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="info")


if __name__ == "__main__":
    main()
