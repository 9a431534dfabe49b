"""A lean asyncio HTTP/1.1 client for the proxy's hot path: keep-alive connections to one origin.

A general-purpose client session costs several times the CPU of everything else a forwarded
request needs; the proxy uses only a sliver of it (one origin, keep-alive, streaming both ways
with back-pressure, timeouts), so this client does just that. Responses are parsed by httptools
(llhttp); only the request head is serialised here. WebSockets use the websockets library
(websocket.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit

import httptools

__all__ = [
    "ConnectFailed",
    "ReadTimeout",
    "UpstreamDisconnected",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamResponse",
]

# A connection's exchange states; the two in flight are the lowest.
_HEADERS, _BODY, _DONE, _IDLE = range(4)
_HIGH_WATER = 64 * 1024  # unread body bytes above which the socket is not read any more
_ONE_WRITE = 64 * 1024  # a bytes body up to this size goes out in the same write as the head
_BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))
_IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"))
_WATCHED = frozenset(len(n) for n in ("host", "connection", "content-length", "transfer-encoding"))
_CLOSE_WAIT = 2.0  # seconds close() gives connections to shut down cleanly


class UpstreamError(Exception):
    """The upstream gave no complete response."""


class ConnectFailed(UpstreamError):
    """No connection (refused, DNS, TLS, connect timeout): nothing was sent."""


class UpstreamDisconnected(UpstreamError):
    """The connection closed, was reset or carried something that is not an HTTP response."""


class ReadTimeout(UpstreamError, TimeoutError):
    """The upstream sent nothing for read_timeout seconds."""


class _Conn(asyncio.Protocol):
    """One connection. httptools calls back into it; its state is that of the exchange in flight."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_closed",
        "_collect",
        "_error",
        "_head",
        "_headers",
        "_interim",
        "_keep_alive",
        "_last_rx",
        "_read_paused",
        "_read_timeout",
        "_req_keep",
        "_state",
        "_stream_wait",
        "_timer",
        "_until_eof",
        "_waiter",
        "_write_paused",
        "content_length",
        "idle_since",
        "loop",
        "lost",
        "parked",
        "parser",
        "pool",
        "raw_headers",
        "rx_any",
        "status",
        "transport",
    )
    transport: asyncio.Transport

    def __init__(self, pool: UpstreamPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.parked = False
        self.idle_since = 0.0
        self.rx_any = False
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self._state = _IDLE
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed: asyncio.Future[None] | None = None
        self._last_rx = 0.0
        self._read_timeout = 0.0
        self._stream_wait = self._write_paused = self._read_paused = self._collect = False
        self._head = self._interim = self._until_eof = self._keep_alive = False
        self._req_keep = True
        self._error: UpstreamError | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._buffered = 0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.pool._conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pool._forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._state <= _BODY:
            where = "before the response" if self._state == _HEADERS else "mid-body"
            reason = f" ({exc!r})" if exc is not None else ""
            self._fail(UpstreamDisconnected(f"upstream closed the connection {where}{reason}"))
        self._wake()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def eof_received(self) -> bool | None:
        """A close-delimited body ends at the upstream's EOF (httptools has no llhttp_finish()),
        never at our own close. (asyncio's TLS layer reports a TCP close without close_notify
        as an EOF too, so over TLS a cut cannot be told from the end; other clients are no better.)"""
        if self._state == _BODY and self._until_eof and not self.transport.is_closing():
            self._state = _DONE
            self._keep_alive = False
            self._wake()
        return None

    def data_received(self, data: bytes) -> None:
        self._last_rx = self.loop.time()
        if self._state > _BODY:
            self._fail(UpstreamDisconnected("upstream sent data outside a response"))
            return
        self.rx_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamDisconnected("upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamDisconnected(f"invalid response from upstream: {exc}"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake()

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._state != _HEADERS:  # a second response to one request: the stream is out of sync
            self._fail(UpstreamDisconnected("upstream sent more than one response"))
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._state != _HEADERS:
            return
        status = self.parser.get_status_code()
        if status < 200:
            if status == 101:  # upgrades are the WebSocket relay's business, not this client's
                self._fail(UpstreamDisconnected("upstream switched protocols (101)"))
            self._interim = True  # 100 Continue, 103 Early Hints: the real response follows
            return
        self.status = status
        self.raw_headers = self._headers
        self._framing()
        # httptools cannot tell llhttp that a HEAD response has no body: end it here, then close.
        self._keep_alive = self.parser.should_keep_alive() and not self._head
        self._state = _DONE if self._head else _BODY
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._state != _BODY:
            return  # the body a HEAD response announced: the connection closes after it
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._collect and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()
        if self._stream_wait:
            self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        elif self._state == _BODY:
            self._state = _DONE
            self._wake()

    def _framing(self) -> None:
        """Content-Length and whether the body ends at EOF, from headers llhttp already validated
        (it refuses a malformed or repeated Content-Length, and one next to Transfer-Encoding)."""
        length: int | None = None
        chunked = False
        for name, value in self._headers:
            if len(name) == 14 and name.lower() == b"content-length":
                length = int(value)
            elif len(name) == 17 and name.lower() == b"transfer-encoding":
                chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        self.content_length = length
        self._until_eof = length is None and not chunked

    # waiting

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: UpstreamError) -> None:
        """Record why the exchange failed and drop the connection: it can carry nothing more."""
        if self._state <= _BODY and self._error is None:
            self._error = exc
        self._keep_alive = False
        self._wake()
        self.abort()

    async def _wait(self, read_timeout: float) -> None:
        """Until a callback wakes us; ReadTimeout after `read_timeout` seconds without a byte.

        The connection keeps one timer across waits: it is moved only when it would fire too
        late, and re-armed when it fires early (data_received just notes the time). A call_at()
        and cancel() per wait, which is also what asyncio.timeout() does, cost ~2 µs on uvloop."""
        loop = self.loop
        self._waiter = waiter = loop.create_future()
        self._last_rx = now = loop.time()
        self._read_timeout = read_timeout
        timer = self._timer
        if timer is None or timer.when() > now + read_timeout:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(now + read_timeout, self._on_timer)
        try:
            await waiter
        finally:
            self._waiter = None
            self._stream_wait = False

    def _on_timer(self) -> None:
        self._timer = None
        if self._waiter is None or self._waiter.done():
            return  # not waiting: the next wait arms it again
        deadline = self._last_rx + self._read_timeout
        if deadline > self.loop.time():
            self._timer = self.loop.call_at(deadline, self._on_timer)
        else:
            self._fail(ReadTimeout(f"upstream sent nothing for {self._read_timeout:g} s"))

    # one exchange

    async def exchange(
        self,
        head: bytes,
        body: bytes | AsyncIterator[bytes] | None,
        declared: int | None,
        read_timeout: float,
        is_head: bool,
        keep: bool,
    ) -> UpstreamResponse:
        """Send one request; return once the final response's headers arrived. Any error drops
        the connection."""
        try:
            self._start(is_head, keep)
            if body is None:
                self.transport.write(head)
            elif isinstance(body, bytes):
                if len(body) <= _ONE_WRITE:
                    self.transport.write(head + body)
                else:
                    self.transport.write(head)
                    self.transport.write(body)
            else:
                self.transport.write(head)
                await self._send_stream(body, declared, read_timeout)
            while self._state == _HEADERS:
                if self._error is not None:
                    raise self._error
                await self._wait(read_timeout)
            return UpstreamResponse(self, read_timeout)
        except BaseException:
            self.abort()
            raise

    def _start(self, head: bool, keep: bool) -> None:
        if self.lost or self.transport.is_closing():
            raise UpstreamDisconnected("upstream closed the idle connection")
        self._state = _HEADERS
        self._head = head
        self._req_keep = keep
        self._error = None
        self.rx_any = self._interim = self._collect = False
        self._chunks = []
        self._buffered = 0

    async def _send_stream(self, body: AsyncIterator[bytes], length: int | None, read_timeout: float) -> None:
        """Send a streamed body (chunked unless its length was given), waiting while the socket's
        buffer is full; stop early if the response came first, or raise if the connection broke."""
        sent = 0
        async for chunk in body:
            while self._write_paused and self._state == _HEADERS and self._error is None:
                await self._wait(read_timeout)
            if self._state != _HEADERS:
                self._req_keep = False  # the response came before the whole body: not reusable
                return
            if self._error is not None:
                raise self._error
            if not chunk:
                continue
            sent += len(chunk)
            if length is None:
                self.transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            elif sent <= length:
                self.transport.write(chunk)
            else:
                raise ValueError("the body is longer than its Content-Length")
        if length is None:
            self.transport.write(b"0\r\n\r\n")
        elif sent != length:
            raise ValueError("the body is shorter than its Content-Length")

    def whole_body(self) -> bytes | None:
        """The body if it has all arrived, else None."""
        if self._state != _DONE:
            return None
        chunks, self._chunks = self._chunks, []
        self._buffered = 0
        return b"".join(chunks)

    async def read_all(self, read_timeout: float) -> bytes:
        self._collect = True  # the caller wants it all: no pausing
        self._resume()
        while self._state == _BODY:
            if self._error is not None:
                raise self._error
            await self._wait(read_timeout)
        return self.whole_body() or b""

    async def next_chunk(self, read_timeout: float) -> bytes | None:
        """What arrived since the last call (None at the end); the socket is read again once drained."""
        while not self._chunks:
            if self._state != _BODY:
                return None
            if self._error is not None:
                raise self._error
            self._stream_wait = True
            await self._wait(read_timeout)
        chunks, self._chunks = self._chunks, []
        self._buffered = 0
        self._resume()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _resume(self) -> None:
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()

    def finish(self) -> None:
        """Back to the pool if the exchange ended cleanly and both sides allow reuse, else close."""
        if self._state != _DONE or self._error is not None:
            self.abort()
        elif self._keep_alive and self._req_keep and not self.lost:
            self.pool._put(self)
        else:
            self.close()

    # pool bookkeeping

    def park(self) -> None:
        self._state = _IDLE
        self._chunks = []  # a complete body the caller did not want
        self._resume()
        self.parked = True
        self.idle_since = self.loop.time()

    def close(self) -> None:
        if not self.lost and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if not self.lost:  # also after close(): a TLS shutdown may be what we are cutting short
            self.transport.abort()

    def closed(self) -> asyncio.Future[None]:
        if self._closed is None:
            self._closed = self.loop.create_future()
            if self.lost:
                self._closed.set_result(None)
        return self._closed


class UpstreamResponse:
    """A response whose headers arrived; its body is read from the connection on demand.

    read() and an iter_chunks() run to its end release the connection themselves; release()
    is still safe to call (and needed when the body is not read to its end)."""

    __slots__ = ("_body", "_conn", "_timeout", "content_length", "raw_headers", "status")
    status: int
    raw_headers: list[tuple[bytes, bytes]]  # as received, name case preserved
    content_length: int | None  # the header's value (also for HEAD, 204, 304); None without one

    def __init__(self, conn: _Conn, timeout: float) -> None:
        self.status = conn.status
        self.raw_headers = conn.raw_headers
        self.content_length = conn.content_length
        self._conn: _Conn | None = conn
        self._timeout = timeout
        self._body: bytes | None = None

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header `name` (any case), latin-1 decoded."""
        key = name.lower().encode("latin-1")
        for k, v in self.raw_headers:
            if len(k) == len(key) and k.lower() == key:
                return v.decode("latin-1")
        return default

    def getall(self, name: str) -> list[str]:
        key = name.lower().encode("latin-1")
        return [v.decode("latin-1") for k, v in self.raw_headers if len(k) == len(key) and k.lower() == key]

    async def read(self) -> bytes:
        """The whole body."""
        if self._body is not None:
            return self._body
        conn = self._connection()
        try:
            body = conn.whole_body()
            if body is None:
                body = await conn.read_all(self._timeout)
        finally:
            self.release()
        self._body = body
        return body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; while the caller does not take it, at most ~64 KiB (plus one
        socket read) is buffered and the upstream is held back by TCP flow control."""
        if self._body is not None:
            if self._body:
                yield self._body
            return
        conn = self._connection()
        try:
            while (chunk := await conn.next_chunk(self._timeout)) is not None:
                yield chunk
        finally:
            self.release()

    def release(self) -> None:
        """The connection back to the pool if the response is complete and may be reused, else
        closed. Idempotent; safe without reading the body."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish()

    def _connection(self) -> _Conn:
        if self._conn is None:
            raise RuntimeError("the response was released before its body was read")
        return self._conn

    def __del__(self) -> None:
        if self._conn is not None:  # never released: do not leak the socket
            with contextlib.suppress(Exception):  # e.g. the loop is closed already
                self._conn.abort()


class UpstreamPool:
    """Keep-alive connections to one origin (scheme://host[:port]).

    Idle connections are a LIFO stack (the warmest is reused first, the coldest ages out),
    checked for age when taken and swept by one periodic timer. Busy connections are not
    limited: a limit is the caller's business."""

    def __init__(
        self,
        origin: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        max_idle: int = 512,
        keepalive: float = 30.0,
    ) -> None:
        self._origin = origin
        self._host, self._port, self._authority, tls = _parse_origin(origin)
        self._ssl = (ssl_context or ssl.create_default_context()) if tls else None
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle
        self._keepalive = keepalive
        self._sweep_every = min(keepalive, 1.0)
        self._idle: list[_Conn] = []
        self._conns: set[_Conn] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None,
        *,
        read_timeout: float,
    ) -> UpstreamResponse:
        """Send one request; return once the response's headers arrived.

        A reused connection that fails before any byte of the response (the upstream closed it
        while idle, as servers do at their keep-alive timeout) is retried once on a new one,
        for idempotent methods only (RFC 9110 §9.2.2: the upstream may have acted on a POST)
        and unless the body was streamed: that cannot be sent again."""
        head, keep, declared = self._serialise(method, target, headers, body)
        is_head = method == "HEAD"
        conn = self._take()
        if conn is not None:
            try:
                return await conn.exchange(head, body, declared, read_timeout, is_head, keep)
            except UpstreamDisconnected:
                if conn.rx_any or method not in _IDEMPOTENT or not (body is None or isinstance(body, bytes)):
                    raise
        conn = await self._connect()
        return await conn.exchange(head, body, declared, read_timeout, is_head, keep)

    async def close(self) -> None:
        """Close every connection, idle or busy (a busy one's reader gets UpstreamDisconnected)."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in self._idle:
            conn.parked = False
        self._idle.clear()
        conns = list(self._conns)
        for conn in conns:
            conn.close()
        pending = [conn.closed() for conn in conns]
        if pending:
            await asyncio.wait(pending, timeout=_CLOSE_WAIT)
        for conn in conns:
            conn.abort()

    def _serialise(
        self, method: str, target: str, headers: list[tuple[str, str]], body: object
    ) -> tuple[bytes, bool, int | None]:
        """The request head; whether we allow keep-alive; a streamed body's declared length.

        CR, LF or NUL inside a line (header injection) and the framing headers this client owns
        are refused; nothing else is normalised. Multi-character substring searches over the
        head cost microseconds each, so header names are looked at one by one instead."""
        lines = "".join([f"{k}: {v}\r\n" for k, v in headers])
        n = len(headers)
        if lines.count("\n") != n or lines.count("\r") != n or "\0" in lines:
            raise ValueError("CR, LF or NUL in a header")
        if not (target.isprintable() and method.isprintable()) or " " in target or " " in method:
            raise ValueError("a space or a control character in the method or the target")
        lengths: list[str] = []
        keep = True
        for name, value in headers:
            if len(name) in _WATCHED:
                low = name.lower()
                if low == "content-length":
                    lengths.append(value.strip())
                elif low == "connection":
                    keep = keep and "close" not in value.lower()
                elif low in ("host", "transfer-encoding"):
                    raise ValueError("Host and Transfer-Encoding are the client's to set")
        extra, declared = _framing(method, body, lengths)
        head = f"{method} {target} HTTP/1.1\r\nHost: {self._authority}\r\n{lines}{extra}\r\n"
        return head.encode("latin-1"), keep, declared

    async def _connect(self) -> _Conn:
        self._check_open()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Conn(self, loop),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                    ssl_handshake_timeout=self._connect_timeout if self._ssl is not None else None,
                )
        except (OSError, ValueError) as exc:  # TimeoutError, ssl.SSLError, socket.gaierror: OSError
            raise ConnectFailed(f"cannot connect to {self._origin}: {exc!r}") from exc
        try:
            self._check_open()  # closed while we connected
        except ConnectFailed:
            conn.abort()
            raise
        return conn

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectFailed("the pool is closed")

    def _take(self) -> _Conn | None:
        """The warmest idle connection still open and younger than `keepalive`, if any."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            conn.parked = False
            if conn.loop.time() - conn.idle_since >= self._keepalive:
                conn.close()  # the warmest is too old, so all are
                for old in idle:
                    old.parked = False
                    old.close()
                idle.clear()
            elif not conn.transport.is_closing():
                return conn
        return None

    def _put(self, conn: _Conn) -> None:
        if self._closed or len(self._idle) >= self._max_idle:
            conn.close()
            return
        conn.park()
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_later(self._sweep_every, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle for `keepalive` seconds: the oldest, at the stack's bottom."""
        self._sweeper = None
        idle = self._idle
        if not idle:
            return
        loop = idle[0].loop
        limit = loop.time() - self._keepalive
        n = 0
        while n < len(idle) and idle[n].idle_since <= limit:
            n += 1
        expired = idle[:n]
        del idle[:n]
        for conn in expired:
            conn.parked = False
            conn.close()
        if idle:
            self._sweeper = loop.call_later(self._sweep_every, self._sweep)

    def _forget(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        if conn.parked:
            conn.parked = False
            self._idle.remove(conn)


def _parse_origin(origin: str) -> tuple[str, int, str, bool]:
    """(host, port, Host header, TLS?) of scheme://host[:port]; anything more is refused."""
    parts = urlsplit(origin)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
    ):
        raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
    tls = parts.scheme == "https"
    default = 443 if tls else 80
    port = parts.port if parts.port is not None else default
    host = parts.hostname
    name = f"[{host}]" if ":" in host else host
    return host, port, name if port == default else f"{name}:{port}", tls


def _framing(method: str, body: object, lengths: list[str]) -> tuple[str, int | None]:
    """The framing header to add, and a streamed body's declared length.

    A caller's Content-Length must match the body: a wrong one would desynchronise a
    keep-alive connection (the rest of the body read as the next request)."""
    if len(lengths) > 1 or (lengths and not (lengths[0].isascii() and lengths[0].isdigit())):
        raise ValueError("a Content-Length that is not one decimal number")
    declared = int(lengths[0]) if lengths else None
    if body is None:
        if declared:
            raise ValueError("a Content-Length without a body")
        return ("Content-Length: 0\r\n" if declared is None and method in _BODY_METHODS else ""), None
    if isinstance(body, bytes):
        if declared is None:
            return f"Content-Length: {len(body)}\r\n", None
        if declared != len(body):
            raise ValueError("the Content-Length does not match the body")
        return "", None
    return ("Transfer-Encoding: chunked\r\n" if declared is None else ""), declared
