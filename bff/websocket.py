"""WebSockets through the BFF (SPEC "WebSockets"), and their end with the session.

A handshake to a route prefix is checked before anything else happens and before any
connection to the upstream: ``Origin`` must be BFF_PUBLIC_URL (a browser cannot add X-CSRF
to a WebSocket, so this is the cross-site WebSocket hijacking defence; 403 otherwise), the
path passes the proxy's checks, the route's token policy applies (401 without a session on a
``user`` route), and the caps on sockets per session and per process (429 / 503). Then the
upstream handshake (``ws://`` for an http upstream, ``wss://`` for https) carries the route's
credential (``Authorization``, a DPoP proof for a bound token) and the browser's offered
subprotocols, never its cookies; the browser is accepted with the subprotocol the upstream
chose. Messages are relayed both ways one at a time: each side's send waits for its socket
to drain and the other side is not read meanwhile, so a slow reader makes the BFF hold at
most one message (up to BFF_WS_MAX_MESSAGE_SIZE), not a queue. Pings are answered on each hop
by the servers and clients themselves: towards the upstream the BFF sends no keepalive pings
(an idle upstream is never dropped for a missing pong), towards the browser uvicorn's own
keepalive applies (a ping every 20 s). Messages, not frames, are relayed, so
compression is a matter of each hop: the browser's hop negotiates permessage-deflate with the
server, the upstream hop goes without (the upstream client offers none). Close codes and
reasons pass through. The upstream client is the websockets library (its asyncio client).

When a session ends, wherever it ends, every process closes its sockets (both sides) with
code 4401: at once on the session notice (session/notices.py), and at the latest at the next
check of the open sockets' sessions (every SWEEP_INTERVAL seconds), which also catches the
idle and absolute timeouts and any missed notice. Messages from the browser count as use of
the session (its idle timeout slides, at most once a minute); messages from the upstream do
not, so an open socket alone does not keep a session alive.

Close codes the BFF itself sends: 4401 session ended, 1001 the BFF is shutting down, 1009 a
message over BFF_WS_MAX_MESSAGE_SIZE, 1011 the upstream failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
    WebSocketException,
)
from websockets.typing import Subprotocol

from .errors import (
    BadRequest,
    BFFError,
    Forbidden,
    ServiceUnavailable,
    TooManyRequests,
    UpstreamUnavailable,
)
from .proxy import Proxy, Route
from .services import Services
from .session.models import public_handle
from .session.store import SessionStore
from .tokens import Credential

log = logging.getLogger("bff.websocket")
# The upstream client's own logger, held at INFO: at DEBUG websockets logs every handshake
# header (the route's Authorization and DPoP proof) and every frame.
client_log = logging.getLogger("bff.websocket.upstream")
client_log.setLevel(logging.INFO)
REGISTRIES: weakref.WeakSet[Sockets] = weakref.WeakSet()  # every app's sockets (shutdown)

SESSION_ENDED = 4401
GOING_AWAY = 1001
TOO_BIG = 1009
UPSTREAM_FAILED = 1011
SWEEP_INTERVAL = 2.0  # seconds between checks of the open sockets' sessions
TOUCH_INTERVAL = 60  # a browser message slides the idle timeout at most this often
_UNSENDABLE = {1005, 1006, 1015}  # close codes that never go on the wire
CLOSE_TIMEOUT = 5.0  # seconds a close handshake with the upstream may take
# Frames the upstream connection holds before it stops reading from the socket (and resumes
# once they are all taken): with a slow browser the BFF holds about one message (each frame is
# at most BFF_WS_MAX_MESSAGE_SIZE) and the TCP window pushes back on the upstream.
UPSTREAM_QUEUE = (1, 0)


class Socket:
    """One proxied WebSocket: its session and how to end it."""

    def __init__(self, session_id: str | None, relay: asyncio.Task[None] | None = None) -> None:
        self.session_id = session_id
        self.handle = public_handle(session_id) if session_id else None
        self.relay = relay
        self.end: tuple[int, str] | None = None  # why the BFF closes it, set before cancelling

    def close(self, code: int, reason: str) -> None:
        if self.end is None and self.relay is not None:
            self.end = (code, reason)
            self.relay.cancel()


class Sockets:
    """The open sockets of this process, by session: closed on the session's end."""

    def __init__(self, store: SessionStore, metrics: Any, max_per_session: int, max_per_process: int) -> None:
        self.store = store
        self.metrics = metrics
        self.max_per_session = max_per_session
        self.max_per_process = max_per_process
        self._all: set[Socket] = set()
        self._by_handle: dict[str, set[Socket]] = {}
        store.notices.on_ended(self.session_ended)
        REGISTRIES.add(self)

    def admit(self, session_id: str | None) -> None:
        """Refuse a handshake over a cap, before anything is opened."""
        if len(self._all) >= self.max_per_process:
            raise ServiceUnavailable(
                "This server holds as many WebSockets as it may.", code="websocket_limit"
            )
        if (
            session_id is not None
            and len(self._by_handle.get(public_handle(session_id), ())) >= self.max_per_session
        ):
            raise TooManyRequests(
                "This session has as many WebSockets open as it may.", code="websocket_limit"
            )

    def add(self, socket: Socket) -> None:
        self._all.add(socket)
        if socket.handle is not None:
            self._by_handle.setdefault(socket.handle, set()).add(socket)
        self.metrics.websockets_open.inc()

    def remove(self, socket: Socket) -> None:
        if socket not in self._all:
            return
        self._all.discard(socket)
        if socket.handle is not None:
            mine = self._by_handle.get(socket.handle, set())
            mine.discard(socket)
            if not mine:
                self._by_handle.pop(socket.handle, None)
        self.metrics.websockets_open.dec()

    def session_ended(self, handle: str) -> None:
        for socket in list(self._by_handle.get(handle, ())):
            socket.close(SESSION_ENDED, "session ended")

    def close_all(self, code: int = GOING_AWAY, reason: str = "server shutting down") -> None:
        for socket in list(self._all):
            socket.close(code, reason)

    async def drain(self) -> None:
        """Wait (up to 5 s) for the closing sockets to finish their close handshakes."""
        tasks = [s.relay for s in self._all if s.relay is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    async def sweep(self) -> None:
        """Forever: close the sockets whose session is gone (ended unnoticed, idle, absolute)."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            ids = {s.session_id for s in self._all if s.session_id is not None}
            if not ids:
                continue
            order = list(ids)
            results = await asyncio.gather(
                *(self.store.load(i, touch=False) for i in order), return_exceptions=True
            )
            for session_id, found in zip(order, results, strict=True):
                if found is None:  # gone; a store error proves nothing and keeps the sockets
                    self.session_ended(public_handle(session_id))


async def deny(scope: Scope, send: Send, error: BFFError) -> None:
    """Refuse a handshake with the BFF's usual JSON error (ASGI WebSocket Denial Response);
    a server without that extension can only close, which the browser sees as 403."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps({"error": error.code, "message": error.message}).encode()
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
    await send({"type": "websocket.http.response.start", "status": error.status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


def check_origin(scope: Scope, own_origin: str) -> None:
    origins = [v for k, v in scope["headers"] if k == b"origin"]
    if len(origins) != 1 or origins[0].decode("latin-1") != own_origin:
        raise Forbidden(
            "WebSocket handshakes must come from the application's own origin.", code="websocket_origin"
        )


class Relay:
    """The two directions of one proxied socket, until either side closes or the BFF ends it."""

    def __init__(
        self,
        receive: Receive,
        send: Send,
        upstream: ClientConnection,
        max_size: int,
        metrics: Any,
        touch: Callable[[], Awaitable[bool]],
    ) -> None:
        self.receive = receive
        self.send = send
        self.upstream = upstream
        self.max_size = max_size
        self.metrics = metrics
        self.touch = touch
        self.browser_gone = False
        self.closed_by: str = "upstream"

    async def run(self, socket: Socket) -> None:
        to_upstream = asyncio.create_task(self._browser_to_upstream(socket))
        to_browser = asyncio.create_task(self._upstream_to_browser())
        try:
            done, _ = await asyncio.wait({to_upstream, to_browser}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (to_upstream, to_browser):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.gather(to_upstream, to_browser, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _browser_to_upstream(self, socket: Socket) -> None:
        last_touch = time.monotonic()
        while True:
            message = await self.receive()
            if message["type"] == "websocket.disconnect":
                self.browser_gone = True
                self.closed_by = "browser"
                code = message.get("code", 1000)
                await self.upstream.close(code=GOING_AWAY if code in _UNSENDABLE else code)
                return
            text, data = message.get("text"), message.get("bytes")
            size = len(text.encode()) if text is not None else len(data or b"")
            if size > self.max_size:
                socket.end = (TOO_BIG, "message too big")
                return
            self.metrics.websocket_messages.labels("to_upstream").inc()
            try:
                await self.upstream.send(text if text is not None else (data or b""))
            except ConnectionClosed as exc:  # the upstream closed first: its close is relayed
                await self._close_browser(*upstream_close(exc))
                return
            if time.monotonic() - last_touch > TOUCH_INTERVAL:
                last_touch = time.monotonic()
                if not await self.touch():
                    socket.end = (SESSION_ENDED, "session ended")
                    return

    async def _upstream_to_browser(self) -> None:
        while True:
            try:
                message = await self.upstream.recv()
            except ConnectionClosed as exc:
                await self._close_browser(*upstream_close(exc))
                return
            if isinstance(message, str):
                await self.send({"type": "websocket.send", "text": message})
            else:
                await self.send({"type": "websocket.send", "bytes": message})
            self.metrics.websocket_messages.labels("to_browser").inc()

    async def _close_browser(self, code: int, reason: str) -> None:
        if not self.browser_gone:
            self.browser_gone = True
            with contextlib.suppress(Exception):
                await self.send({"type": "websocket.close", "code": code, "reason": reason[:120]})

    async def end(self, code: int, reason: str) -> None:
        """The BFF closes both sides (session ended, shutdown, a message too big)."""
        self.closed_by = reason
        await self._close_browser(code, reason)
        with contextlib.suppress(Exception):
            await self.upstream.close(code, reason[:120])


def upstream_close(exc: ConnectionClosed) -> tuple[int, str]:
    """The close the browser gets once the upstream connection has ended: the upstream's own
    close code and reason when it closed first; 1009 when the BFF refused an upstream message
    over the limit (websockets closed it so); 1011 for anything else (connection lost,
    protocol error)."""
    if exc.rcvd is not None and (exc.sent is None or exc.rcvd_then_sent):
        code = exc.rcvd.code  # 1005 when the upstream's close frame had no code
        return (1000 if code in _UNSENDABLE else code), exc.rcvd.reason
    if exc.sent is not None and exc.sent.code == TOO_BIG:
        return TOO_BIG, "upstream message too big"
    return UPSTREAM_FAILED, "upstream connection lost"


def _first(headers: Headers) -> Callable[[str], str | None]:
    """A header getter over a refusal's headers: the first value (a repeated header is no
    error here, as with any other answer)."""
    return lambda name: next(iter(headers.get_all(name)), None)


async def connect_upstream(
    url: str,
    headers: Callable[[], list[tuple[str, str]]],
    protocols: list[str],
    max_size: int,
    open_timeout: float,
    on_answer: Callable[[Callable[[str], str | None]], bool],
) -> ClientConnection:
    """The upstream handshake, within ``open_timeout`` seconds; once more when ``on_answer``
    (given the refusal's headers) says a retry can succeed (a DPoP nonce). A refusal is 502, or
    the upstream's own 4xx; an unreachable upstream 502."""
    for attempt in (1, 2):
        try:
            return await connect(
                url,
                additional_headers=headers(),
                subprotocols=[Subprotocol(p) for p in protocols] or None,
                compression=None,  # no permessage-deflate on the upstream hop
                user_agent_header=None,  # the browser's User-Agent is among the forwarded headers
                proxy=None,  # never a proxy from the environment (HTTPS_PROXY and friends)
                open_timeout=open_timeout,
                ping_interval=None,  # no keepalive pings (the upstream's pings are still answered)
                close_timeout=CLOSE_TIMEOUT,
                max_size=max_size,  # a message of exactly max_size passes, one byte more is 1009
                max_queue=UPSTREAM_QUEUE,
                logger=client_log,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if attempt == 1 and status == 401 and on_answer(_first(exc.response.headers)):
                continue
            if 400 <= status < 500:
                error = BFFError(f"The upstream refused the WebSocket ({status}).", code="websocket_refused")
                error.status = status
                raise error from exc
            raise UpstreamUnavailable("The upstream refused the WebSocket.") from exc
        except InvalidMessage as exc:  # no HTTP answer, or the connection closed before one
            raise UpstreamUnavailable() from exc
        except InvalidHandshake as exc:  # a 101 that fails the handshake's checks
            raise UpstreamUnavailable("The upstream refused the WebSocket.") from exc
        except (OSError, TimeoutError, WebSocketException) as exc:  # unreachable, TLS, too slow
            raise UpstreamUnavailable() from exc
        except ValueError as exc:  # an offered subprotocol websockets will not send
            raise BadRequest("The WebSocket handshake cannot be forwarded as it is.") from exc
    raise UpstreamUnavailable()  # not reached: the second attempt returns or raises


async def close_everywhere(code: int = GOING_AWAY) -> None:
    """Graceful shutdown: close every socket of this process with ``code`` and wait for the
    close handshakes (the standalone server calls this before it stops)."""
    for sockets in list(REGISTRIES):
        sockets.close_all(code)
    await asyncio.gather(*(s.drain() for s in list(REGISTRIES)))


class WebSocketProxy:
    """Handshakes on route prefixes: checks, the upstream connection, then the relay."""

    def __init__(self, services: Services, proxy: Proxy, sockets: Sockets) -> None:
        self.svc = services
        self.proxy = proxy
        self.sockets = sockets
        self.max_size = services.settings.ws_max_message_size

    async def handle(self, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":  # ASGI: the handshake comes first
            return
        try:
            check_origin(scope, self.svc.settings.public_url)
            target = "ws" + self.proxy.target(route, scope).removeprefix("http")
            session, credential = await self.proxy.credential(route, scope)
            self.sockets.admit(session.id if session else None)
            upstream = await connect_upstream(
                target,
                lambda: self._headers(scope, target, credential),
                list(scope.get("subprotocols", [])),
                self.max_size,
                route.config.timeout,
                lambda header: (
                    credential is not None
                    and credential.key is not None
                    and self.proxy.nonces.update(target, header)
                ),
            )
        except BFFError as exc:
            self.svc.metrics.websocket_closes.labels(f"refused_{exc.status}").inc()
            await deny(scope, send, exc)
            return
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
        await self._relay(session.id if session else None, upstream, receive, send)

    def _headers(self, scope: Scope, target: str, credential: Credential | None) -> list[tuple[str, str]]:
        headers = [(k, v) for k, v in self.proxy.headers(scope) if not k.startswith("sec-websocket-")]
        if credential is not None:
            headers.append(("authorization", f"{credential.scheme} {credential.token}"))
            if credential.key is not None:
                nonce = self.proxy.nonces.get(target)
                proof = credential.key.proof("GET", target, access_token=credential.token, nonce=nonce)
                headers.append(("dpop", proof))
        return headers

    async def _relay(
        self, session_id: str | None, upstream: ClientConnection, receive: Receive, send: Send
    ) -> None:
        socket = Socket(session_id, asyncio.current_task())
        relay = Relay(
            receive, send, upstream, self.max_size, self.svc.metrics, lambda: self._touch(session_id)
        )
        self.sockets.add(socket)
        try:
            await relay.run(socket)
        except asyncio.CancelledError:
            if socket.end is None:
                raise  # the server cancelled us: not ours to swallow
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        except Exception as exc:  # the upstream side broke mid-message
            log.warning("websocket relay failed", extra={"error": type(exc).__name__})
            socket.end = (UPSTREAM_FAILED, "upstream failed")
        finally:
            if socket.end is not None:
                await relay.end(*socket.end)
            await upstream.close()
            self.sockets.remove(socket)
            self.svc.metrics.websocket_closes.labels(relay.closed_by).inc()

    async def _touch(self, session_id: str | None) -> bool:
        """Browser activity slides the session's idle timeout; False once the session is gone."""
        if session_id is None:
            return True
        return await self.svc.store.load(session_id, touch=True) is not None
