"""Plain ASGI middleware (Starlette's BaseHTTPMiddleware costs too much on the hot path).

``Edge`` runs first for every HTTP request and does what applies to all of them:
a request id, one access-log line, limits on header and body size, the cross-site
refusal (Fetch Metadata and Origin) for /bff/* and the API routes, and the response
headers (``Cache-Control: no-store`` on /bff/*, ``nosniff`` everywhere, the CSP and
``frame-ancestors`` on the served SPA).
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import secrets
import time
from collections.abc import Callable, Iterable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .error_handlers import json_error
from .errors import BFFError, HeadersTooLarge, PayloadTooLarge
from .log import access
from .metrics import Metrics
from .security.csrf import refuse_cross_site
from .settings import Settings

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

# Cross-site requests are expected here: the IdP redirects the browser to the callback and
# back after logout, and posts logout tokens to the back-channel endpoint.
CROSS_SITE_ALLOWED = frozenset({"/bff/callback", "/bff/post-logout", "/bff/backchannel-logout"})


class TrustedProxies:
    def __init__(self, networks: Iterable[str]) -> None:
        self._nets = [ipaddress.ip_network(n, strict=False) for n in networks]

    def _trusted(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in n for n in self._nets)

    def client_ip(self, scope: Scope) -> str:
        """The peer address, or (behind trusted proxies) the nearest untrusted X-Forwarded-For hop."""
        peer = scope.get("client")
        ip = peer[0] if peer else ""
        if not self._nets or not self._trusted(ip):
            return ip
        forwarded = Headers(scope=scope).get("x-forwarded-for", "")
        for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
            if not self._trusted(hop):
                return hop
            ip = hop
        return ip


class Edge:
    def __init__(
        self, app: ASGIApp, settings: Settings, metrics: Metrics, is_api: Callable[[str], bool]
    ) -> None:
        self.app = app
        self.is_api = is_api  # the proxy's own route matching
        self.origin = settings.public_url
        self.max_header = settings.max_header_size
        self.max_body = settings.max_body_size
        self.proxies = TrustedProxies(settings.trusted_proxies)
        spa_headers = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
        csp = settings.content_security_policy
        if settings.frame_ancestors and "frame-ancestors" not in csp:
            csp = (
                f"{csp}; frame-ancestors {settings.frame_ancestors}"
                if csp
                else (f"frame-ancestors {settings.frame_ancestors}")
            )
        if csp:
            spa_headers.append((b"content-security-policy", csp.encode()))
        self.spa_headers = spa_headers
        self.bff_headers = [
            (b"cache-control", b"no-store"),
            (b"pragma", b"no-cache"),
            (b"x-frame-options", b"DENY"),  # /bff/* is never framed (DBSC endpoints included)
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
        ]
        self.api_headers = [(b"x-content-type-options", b"nosniff")]
        self.metrics = metrics
        # Request ids: a random per-process prefix and a counter (no syscall per request).
        self._rid_prefix = secrets.token_hex(4) + "-"
        self._rid_counter = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope["path"]
        # One pass over the raw headers (ASGI names are lower-case): this runs on every request.
        size = 0
        rid = fetch_site = origin = content_length = None
        for k, v in scope["headers"]:
            size += len(k) + len(v) + 4
            if k == b"x-request-id":
                rid = v.decode("latin-1")
            elif k == b"sec-fetch-site":
                fetch_site = v.decode("latin-1")
            elif k == b"origin":
                origin = v.decode("latin-1")
            elif k == b"content-length":
                content_length = v
        if rid is None or not _REQUEST_ID.match(rid):
            rid = f"{self._rid_prefix}{next(self._rid_counter):x}"
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        client = state["client_ip"] = self.proxies.client_ip(scope)
        is_bff = path == "/bff" or path.startswith("/bff/")
        is_api = not is_bff and self.is_api(path)
        extra = self.bff_headers if is_bff else self.api_headers if is_api else self.spa_headers
        status_holder = [500]
        rid_header = (b"x-request-id", rid.encode("latin-1"))
        if is_api:  # the proxy adds these itself: no send wrapper on the hot path
            state["response_headers"] = (*extra, rid_header)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                raw = list(message.get("headers", ()))
                present = {k.lower() for k, _ in raw}
                raw.extend([h for h in extra if h[0] not in present])
                raw.append(rid_header)
                message["headers"] = raw
            await send(message)

        try:
            if size > self.max_header:
                raise HeadersTooLarge(f"Request headers exceed {self.max_header} bytes.")
            if (
                is_bff
                and content_length is not None
                and content_length.isdigit()
                and int(content_length) > self.max_body
            ):
                raise PayloadTooLarge(f"Request bodies to /bff are limited to {self.max_body} bytes.")
            if (is_bff and path not in CROSS_SITE_ALLOWED) or is_api:
                refuse_cross_site(fetch_site, origin, self.origin)
            if is_api:
                await self.app(scope, receive, send)
            else:
                await self.app(scope, self._limited(receive) if is_bff else receive, send_wrapper)
        except BFFError as exc:
            response = json_error(exc)
            await response(scope, receive, send_wrapper)
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            status = state.get("status") or status_holder[0]
            access(scope["method"], path, status, round(elapsed, 2), rid, client)

    def _limited(self, receive: Receive) -> Receive:
        limit = self.max_body
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"Request bodies to /bff are limited to {limit} bytes.")
            return message

        return wrapped
