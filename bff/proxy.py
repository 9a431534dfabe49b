"""/api/* forwarding: the BFF's hot path, written as plain ASGI.

A request reaches only its route's upstream: the raw path is checked before anything
is forwarded, because HTTP client libraries "normalise" ``..`` and friends on their own
and would otherwise turn ``/api/../admin`` into ``/admin``. Headers the upstream must
not see (the browser's cookies and Authorization, hop-by-hop headers, any spoofed
X-Forwarded-* in any spelling) are dropped; trusted ones are set. Bodies stream both
ways. The client is upstream_client.py, keep-alive connections per upstream origin with
responses parsed by httptools (a general-purpose client cost several times the CPU of everything
else on this path; see docs/benchmarks.md); WebSockets to upstreams use the websockets library
(websocket.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.types import Message, Receive, Scope, Send

from .challenges import challenge_error
from .dpop import Nonces
from .error_handlers import from_protocol_error
from .errors import (
    BadRequest,
    BFFError,
    CsrfRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .oidc.errors import OIDCError, TokenError
from .services import Services
from .session.models import Session
from .settings import ApiRoute
from .tokens import Credential
from .upstream_client import ReadTimeout, UpstreamError, UpstreamPool, UpstreamResponse

log = logging.getLogger("bff.proxy")

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_REQUEST_DROP = _HOP_BY_HOP | frozenset(
    {
        "host",
        "cookie",
        "cookie2",
        "authorization",
        "x-csrf",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-server",
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-original-host",
        "expect",
        "content-length",
        "x-request-id",
        "dpop",
    }
)
_RESPONSE_DROP = _HOP_BY_HOP | frozenset({"set-cookie", "set-cookie2", "content-length", "dpop-nonce"})
_CONTROL = re.compile(rb"[\x00-\x20\x7f]")
_BAD_RAW = (b"%2e", b"%2f", b"%5c", b"\\", b"//", b"%00", b"%25")


class PathRefused(BFFError):
    status = 400
    code = "path_refused"
    message = "The API path is not allowed (encoded or relative segments)."


@dataclass(frozen=True, slots=True)
class Route:
    config: ApiRoute
    prefix: bytes
    base_path: bytes
    origin: str
    latency: Any  # the route's child of the latency histogram, looked up once


def check_path(raw: bytes) -> None:
    """Refuse anything that could step out of the route's prefix once someone decodes it."""
    lowered = raw.lower()
    if any(marker in lowered for marker in _BAD_RAW) or _CONTROL.search(raw):
        raise PathRefused()
    for segment in raw.split(b"/"):
        bare = segment.split(b";", 1)[0]
        if bare in (b".", b".."):
            raise PathRefused()


def _json(status: int, code: str, message: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = json.dumps({"error": code, "message": message}).encode()
    return (
        status,
        [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ],
        body,
    )


class Proxy:
    def __init__(self, services: Services) -> None:
        self.svc = services
        self.origin = services.settings.public_url
        public = urlsplit(services.settings.public_url)
        self.forwarded_proto = public.scheme.encode()
        self.forwarded_host = public.netloc.encode()
        self.routes: list[Route] = []
        for r in services.settings.api_routes:
            up = urlsplit(r.upstream)
            self.routes.append(
                Route(
                    config=r,
                    prefix=r.prefix.encode(),
                    base_path=up.path.rstrip("/").encode(),
                    origin=f"{up.scheme}://{up.netloc}",
                    latency=services.metrics.proxy_latency.labels(r.prefix),
                )
            )
        self._pools: dict[str, UpstreamPool] = {}
        self.nonces = Nonces()  # the upstreams' DPoP nonces, by origin
        self._counters: dict[tuple[str, int], Any] = {}

    async def start(self) -> None:
        """One pool per upstream origin; routes sharing an origin share it, and its connect
        timeout is the shortest any of them allows (at most 10 s)."""
        timeouts: dict[str, float] = {}
        for route in self.routes:
            timeouts[route.origin] = min(timeouts.get(route.origin, 10.0), route.config.timeout)
        for origin, timeout in timeouts.items():
            if origin not in self._pools:
                self._pools[origin] = UpstreamPool(origin, connect_timeout=timeout)

    async def stop(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()

    def match(self, path: str) -> Route | None:
        for route in self.routes:
            p = route.config.prefix
            if path == p or (path.startswith(p) and path[len(p)] == "/"):
                return route
        return None

    def _count(self, route: Route, status: int) -> None:
        key = (route.config.prefix, status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.svc.metrics.proxied.labels(route.config.prefix, str(status))
        counter.inc()

    @staticmethod
    def _start(scope: Scope, status: int, headers: list[tuple[bytes, bytes]]) -> Message:
        """The response start, with the headers Edge handed over in ``state`` (request id,
        nosniff): added here rather than by wrapping ``send``, which costs the hot path."""
        present = {k for k, _ in headers}
        for name, value in scope.get("state", {}).get("response_headers", ()):
            if name not in present:
                headers.append((name, value))
        return {"type": "http.response.start", "status": status, "headers": headers}

    async def _respond(
        self, scope: Scope, send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        await send(self._start(scope, status, headers))
        await send({"type": "http.response.body", "body": body})

    async def handle(self, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            try:
                status = await self._forward(route, scope, receive, send)
            except (OIDCError, TokenError) as exc:
                raise from_protocol_error(exc) from exc
        except BFFError as exc:
            if exc.status >= 500:  # the same warning the other endpoints log for their 5xx
                log.warning("request failed", extra={"code": exc.code, "route": route.config.prefix})
            await self._respond(scope, send, *_json(exc.status, exc.code, exc.message))
            status = exc.status
        self._count(route, status)
        if "state" in scope:
            scope["state"]["status"] = status

    def headers(self, scope: Scope) -> list[tuple[str, str]]:
        """The browser's headers the upstream may see, plus the forwarding headers we vouch
        for; the credential is added per attempt (``_call``)."""
        raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        connection_listed: set[str] = set()
        for k, v in raw_headers:
            if k == b"connection":
                connection_listed.update(t.strip().lower() for t in v.decode("latin-1").split(","))
        out: list[tuple[str, str]] = []
        for k, v in raw_headers:
            name = k.decode("latin-1").lower()
            canonical = name.replace("_", "-")
            if (
                canonical in _REQUEST_DROP
                or canonical in connection_listed
                or canonical.startswith("x-forwarded-")
            ):
                continue
            out.append((name, v.decode("latin-1")))
        state = scope.get("state", {})
        client_ip = state.get("client_ip") or (scope.get("client") or ("",))[0]
        out.append(("x-forwarded-for", client_ip))
        out.append(("x-forwarded-proto", self.forwarded_proto.decode()))
        out.append(("x-forwarded-host", self.forwarded_host.decode()))
        if "request_id" in state:
            out.append(("x-request-id", state["request_id"]))
        return out

    async def credential(self, route: Route, scope: Scope) -> tuple[Session | None, Credential | None]:
        """The caller's session (where the policy looks for one) and the credential this
        route's upstream gets (its token policy, tokens/route.py)."""
        policy = route.config.token
        session = None
        if policy not in ("none", "client"):
            cookies = []
            skipped, user_agent = None, ""
            for k, v in scope["headers"]:
                if k == b"cookie":
                    cookies.append(v.decode("latin-1"))
                elif k == b"secure-session-skipped":
                    skipped = v.decode("latin-1")
                elif k == b"user-agent":
                    user_agent = v.decode("latin-1")
            session = await self.svc.gate.session("; ".join(cookies), skipped=skipped, user_agent=user_agent)
        return session, await self.svc.route_tokens.credential(route.config, session)

    def target(self, route: Route, scope: Scope) -> str:
        """The upstream URL of the request; 400 for a path that could leave the route."""
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        check_path(raw_path)
        rest = raw_path[len(route.prefix) :] if route.config.strip_prefix else raw_path
        target = route.origin + ((route.base_path + rest) or b"/").decode("latin-1")
        query: bytes = scope.get("query_string", b"")
        if query:
            target += "?" + query.decode("latin-1")
        return target

    async def _body(self, receive: Receive, content_length: bytes | None, chunked: bool) -> tuple[Any, bool]:
        """(the body to send, whether the request can be sent again). A body of known length
        up to BFF_RETRY_BODY_LIMIT is read first, so a refused token can be retried; a
        larger or chunked one streams through and is never sent twice."""
        if content_length is None:
            return (self._stream(receive), False) if chunked else (None, True)
        if not content_length.isdigit():
            raise BadRequest("Invalid Content-Length.")
        if content_length == b"0":
            return b"", True
        if int(content_length) > self.svc.settings.retry_body_limit:
            return self._stream(receive), False
        return b"".join([chunk async for chunk in self._stream(receive)]), True

    async def _forward(self, route: Route, scope: Scope, receive: Receive, send: Send) -> int:
        csrf = content_length = None
        chunked = False
        for k, v in scope["headers"]:  # one pass for everything this request needs
            if k == b"x-csrf":
                csrf = v
            elif k == b"content-length":
                content_length = v
            elif k == b"transfer-encoding":
                chunked = True
        if csrf != b"1":
            raise CsrfRejected()
        target = self.target(route, scope)
        _, credential = await self.credential(route, scope)
        headers = self.headers(scope)
        if content_length is not None and content_length.isdigit():
            headers.append(("content-length", content_length.decode()))
        body, replayable = await self._body(receive, content_length, chunked)
        response = await self._call(route, scope["method"], target, headers, credential, body)
        if replayable and response.status == 401 and credential is not None:
            response = await self._retry(route, scope["method"], target, headers, credential, body, response)
        try:
            return await self._relay(route, scope, send, response)
        finally:
            response.release()

    async def _retry(
        self,
        route: Route,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        credential: Credential,
        body: Any,
        response: UpstreamResponse,
    ) -> UpstreamResponse:
        """One more try of a replayable call the upstream refused with 401: with the nonce it
        asked for (RFC 9449 §9 ``use_dpop_nonce``), or after a refresh of a token it called
        invalid (RFC 6750 ``invalid_token``). Otherwise its answer goes to the SPA as it is."""
        challenges = response.getall("www-authenticate")
        if (
            credential.key is not None
            and response.get("dpop-nonce")
            and (challenge_error(challenges, "dpop") == "use_dpop_nonce")
        ):
            response.release()
            return await self._call(route, method, target, headers, credential, body)
        if (
            credential.session is not None
            and challenge_error(challenges, credential.scheme.lower()) == "invalid_token"
        ):
            renewed = await self.svc.tokens.after_refusal(credential.session)
            if renewed is not None:
                response.release()
                credential = self.svc.route_tokens.session_credential(renewed)
                return await self._call(route, method, target, headers, credential, body)
        return response

    async def _call(
        self,
        route: Route,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        credential: Credential | None,
        body: Any,
    ) -> UpstreamResponse:
        if credential is not None:
            headers = [*headers, ("authorization", f"{credential.scheme} {credential.token}")]
            if credential.key is not None:  # a DPoP-bound token: a fresh proof for this call
                proof = credential.key.proof(
                    method, target, access_token=credential.token, nonce=self.nonces.get(target)
                )
                headers.append(("dpop", proof))
        started = time.perf_counter()
        try:
            response = await self._pools[route.origin].request(
                method, target[len(route.origin) :], headers, body, read_timeout=route.config.timeout
            )
        except ReadTimeout as exc:
            raise UpstreamTimeout() from exc
        except UpstreamError as exc:
            log.warning(
                "upstream unreachable", extra={"route": route.config.prefix, "error": type(exc).__name__}
            )
            raise UpstreamUnavailable() from exc
        except ValueError as exc:  # a header or length the upstream must not be sent
            raise BadRequest("The request cannot be forwarded as it is.") from exc
        route.latency.observe(time.perf_counter() - started)
        if credential is not None and credential.key is not None:
            self.nonces.update(target, response.get)  # RFC 9449 §9: any answer may rotate it
        return response

    async def _relay(self, route: Route, scope: Scope, send: Send, response: UpstreamResponse) -> int:
        out_headers = [
            (k.lower(), v)
            for k, v in response.raw_headers
            if k.decode("latin-1").lower() not in _RESPONSE_DROP
        ]
        length = response.content_length
        if scope["method"] == "HEAD" or response.status in (204, 304):
            if length is not None and response.status != 204:
                out_headers.append((b"content-length", str(length).encode()))
            await self._respond(scope, send, response.status, out_headers, b"")
            return response.status
        if length is not None and length <= 65536:
            try:
                data = await response.read()
            except ReadTimeout as exc:
                raise UpstreamTimeout() from exc
            except UpstreamError as exc:
                raise UpstreamUnavailable() from exc
            out_headers.append((b"content-length", str(len(data)).encode()))
            await self._respond(scope, send, response.status, out_headers, data)
            return response.status
        if length is not None:
            out_headers.append((b"content-length", str(length).encode()))
        await send(self._start(scope, response.status, out_headers))
        try:
            async for chunk in response.iter_chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError:
            # Headers are gone already: the only honest signal left is a cut connection.
            log.warning("upstream failed mid-response", extra={"route": route.config.prefix})
            raise
        await send({"type": "http.response.body", "body": b""})
        return response.status

    @staticmethod
    async def _stream(receive: Receive) -> AsyncIterator[bytes]:
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                raise asyncio.CancelledError("client went away")
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return
