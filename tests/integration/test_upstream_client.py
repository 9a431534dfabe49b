"""bff.upstream_client against real sockets: the test upstream process for well-behaved HTTP,
small raw asyncio servers (in this process) for everything an upstream can get wrong."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import uvloop

from bff.upstream_client import (
    ConnectFailed,
    ReadTimeout,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
)
from tests.support import UpstreamProc, free_port
from tests.tls import self_signed

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
MB = 1024 * 1024


class RawServer:
    """An asyncio server whose connections run `handler(server, reader, writer)`. It counts
    connections, records request heads, and notes each connection's end (the handlers return
    when the client closes)."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self.closed = 0
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self._changed = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()
            self.closed += 1
            self._changed.set()

    async def read_head(self, reader: asyncio.StreamReader) -> bytes | None:
        """The next request's head and (Content-Length) body; None once the client closed."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        self.heads.append(head)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        self.bodies.append(await reader.readexactly(length))
        return head

    async def wait_closed(self, n: int, timeout: float = 5.0) -> None:
        """Until `n` connections have ended."""
        async with asyncio.timeout(timeout):
            while self.closed < n:
                self._changed.clear()
                await self._changed.wait()

    async def stop(self) -> None:
        self.server.close()
        for writer in self._writers:
            writer.close()
        await self.server.wait_closed()


Handler = Callable[[RawServer, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def replying(*responses: bytes) -> Handler:
    """Answer the n-th request on each connection with responses[n] (the last one repeats)."""

    async def handler(srv: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        while await srv.read_head(reader) is not None:
            writer.write(responses[min(n, len(responses) - 1)])
            await writer.drain()
            n += 1

    return handler


def in_pieces(*pieces: bytes, gap: float = 0.0, then_close: bool = False) -> Handler:
    """Answer every request with `pieces`, each written (and flushed) on its own."""

    async def handler(srv: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await srv.read_head(reader) is not None:
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(gap)
            if then_close:
                return

    return handler


async def until_eof(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


def stalling(*first: bytes) -> Handler:
    """Read a request, send `first` (maybe nothing), then send nothing more until the client closes."""

    async def handler(srv: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await srv.read_head(reader) is None:
            return
        for piece in first:
            writer.write(piece)
        await writer.drain()
        await until_eof(reader)

    return handler


async def read_until_eof_then_nothing(
    srv: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await until_eof(reader)


@pytest.fixture
async def raw() -> AsyncIterator[Callable[..., Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def start(handler: Handler, tls: ssl.SSLContext | None = None) -> RawServer:
        srv = await RawServer(handler, tls).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        await srv.stop()


@pytest.fixture
async def pools() -> AsyncIterator[Callable[..., UpstreamPool]]:
    made: list[UpstreamPool] = []

    def make(origin: str, **kw: object) -> UpstreamPool:
        pool = UpstreamPool(origin, **kw)  # type: ignore[arg-type]
        made.append(pool)
        return pool

    yield make
    for pool in made:
        await pool.close()


async def get(pool: UpstreamPool, target: str = "/", timeout: float = 5.0) -> tuple[int, bytes]:
    r = await pool.request("GET", target, [], None, read_timeout=timeout)
    return r.status, await r.read()


async def collect(r: UpstreamResponse, into: list[bytes]) -> None:
    """iter_chunks() into `into`, so that what came before an error can be checked."""
    async for chunk in r.iter_chunks():
        into.append(chunk)


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        await asyncio.sleep(0)
        yield data[i : i + size]


# Well-behaved HTTP: the test upstream (uvicorn + httptools)


async def test_get_sends_the_target_as_is_and_sets_host(upstream: UpstreamProc, pools):
    pool = pools(upstream.url)
    target = "/echo/a%2Fb/../c?q=%20x&q=y"
    r = await pool.request("GET", target, [("X-Trace", "1"), ("x-trace", "2")], None, read_timeout=5)
    assert r.status == 200
    assert r.get("CONTENT-TYPE") == "application/json" == r.get("content-type")
    assert r.get("x-missing") is None and r.get("x-missing", "d") == "d"
    assert r.content_length == int(r.get("content-length") or "")
    echo = json.loads(await r.read())
    assert echo["raw_path"] == "/echo/a%2Fb/../c"
    assert echo["query"] == "q=%20x&q=y"
    assert echo["headers"]["host"] == [f"127.0.0.1:{upstream.port}"]
    assert echo["headers"]["x-trace"] == ["1", "2"]
    assert "content-length" not in echo["headers"] and "transfer-encoding" not in echo["headers"]
    assert r.getall("x-missing") == []


async def test_concurrent_requests_each_get_a_connection_then_all_are_reused(upstream: UpstreamProc, pools):
    pool = pools(upstream.url)
    results = await asyncio.gather(*(get(pool, "/bench") for _ in range(32)))
    assert all(status == 200 and json.loads(body)["ok"] for status, body in results)
    first = set(pool._conns)
    assert len(first) == 32 and len(pool._idle) == 32
    await asyncio.gather(*(get(pool, "/bench") for _ in range(32)))
    assert set(pool._conns) == first


async def test_chunked_request_body_from_an_async_iterator_arrives_intact(upstream: UpstreamProc, pools):
    pool = pools(upstream.url)
    data = os.urandom(3 * MB + 12345)
    r = await pool.request("POST", "/upload", [], chunks_of(data, 70001), read_timeout=5)
    assert json.loads(await r.read()) == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    r = await pool.request("PUT", "/echo", [], chunks_of(b"abc" * 1000, 7), read_timeout=5)
    echo = json.loads(await r.read())
    assert echo["headers"]["transfer-encoding"] == ["chunked"] and "content-length" not in echo["headers"]
    assert echo["body_size"] == 3000 and echo["method"] == "PUT"
    headers = [("content-length", "3000")]  # a streamed body of known length goes out unchunked
    r = await pool.request("POST", "/echo", headers, chunks_of(b"abc" * 1000, 7), read_timeout=5)
    echo = json.loads(await r.read())
    assert echo["headers"]["content-length"] == ["3000"] and "transfer-encoding" not in echo["headers"]
    assert echo["body_sha256"] == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert len(pool._conns) == 1


async def test_large_body_streams_with_back_pressure(upstream: UpstreamProc, pools):
    pool = pools(upstream.url)
    size = 20 * MB
    r = await pool.request("GET", f"/stream?size={size}&chunk=65536", [], None, read_timeout=5)
    assert r.content_length == size
    got = 0
    biggest = 0
    async for chunk in r.iter_chunks():
        if got == 0:
            await asyncio.sleep(0.3)  # long enough for all 20 MB to arrive, were reading not paused
        got += len(chunk)
        biggest = max(biggest, len(chunk))
    assert got == size
    # 64 KiB buffered at most, plus what the last socket read (256 KiB) brought in
    assert biggest <= 64 * 1024 + 256 * 1024
    assert len(pool._idle) == 1  # read to its end: reusable


async def test_many_small_requests_on_one_connection(upstream: UpstreamProc, pools):
    pool = pools(upstream.url)
    for i in range(200):
        r = await pool.request("POST", "/echo", [("x-i", str(i))], b"x" * i, read_timeout=5)
        echo = json.loads(await r.read())
        assert echo["body_size"] == i and echo["headers"]["x-i"] == [str(i)]
    assert len(pool._conns) == 1


# Keep-alive rules


async def test_keep_alive_reuses_one_connection(raw, pools):
    srv = await raw(replying(OK))
    pool = pools(srv.url)
    for _ in range(5):
        assert await get(pool) == (200, b"ok")
    assert srv.connections == 1


async def test_at_most_max_idle_connections_are_kept(raw, pools):
    srv = await raw(replying(OK))
    pool = pools(srv.url, max_idle=2)
    await asyncio.gather(*(get(pool) for _ in range(5)))
    assert srv.connections == 5
    await srv.wait_closed(3)
    assert len(pool._idle) == 2


async def test_connection_close_from_the_upstream_is_not_reused(raw, pools):
    srv = await raw(replying(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"))
    pool = pools(srv.url)
    assert await get(pool) == (200, b"ok")
    await srv.wait_closed(1)  # the client closed it, although the server kept it open
    assert await get(pool) == (200, b"ok")
    assert srv.connections == 2


async def test_connection_close_from_the_caller_is_not_reused(raw, pools):
    srv = await raw(replying(OK))
    pool = pools(srv.url)
    r = await pool.request("GET", "/", [("Connection", "close")], None, read_timeout=5)
    assert await r.read() == b"ok"
    await srv.wait_closed(1)
    assert await get(pool) == (200, b"ok")
    assert await get(pool) == (200, b"ok")
    assert srv.connections == 2


async def test_http_1_0_response_is_reused_only_with_keep_alive(raw, pools):
    srv = await raw(replying(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    pool = pools(srv.url)
    assert await get(pool) == (200, b"ok")
    assert await get(pool) == (200, b"ok")
    assert srv.connections == 2
    srv = await raw(replying(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"))
    pool = pools(srv.url)
    assert await get(pool) == (200, b"ok")
    assert await get(pool) == (200, b"ok")
    assert srv.connections == 1


async def test_upstream_closing_an_idle_connection(raw, pools):
    srv = await raw(in_pieces(OK, then_close=True))
    pool = pools(srv.url)
    assert await get(pool) == (200, b"ok")
    await srv.wait_closed(1)
    assert await get(pool) == (200, b"ok")  # whether or not the client saw the close yet
    assert srv.connections == 2
    async with asyncio.timeout(5):
        while pool._idle:  # until the client has seen the close
            await asyncio.sleep(0.01)
    streamed = chunks_of(b"abc", 1)  # the dead connection was dropped: no retry needed
    r = await pool.request("POST", "/", [("content-length", "3")], streamed, read_timeout=5)
    assert await r.read() == b"ok"
    assert srv.connections == 3


async def first_then_drop(srv: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The first connection answers one request, then closes on the next one without a byte
    (an upstream's keep-alive timeout racing the request); later connections answer all."""
    first = srv.connections == 1
    n = 0
    while await srv.read_head(reader) is not None:
        if first and n == 1:
            return
        writer.write(OK)
        await writer.drain()
        n += 1


async def test_stale_connection_is_retried_once_for_a_get_and_a_put_with_a_bytes_body(raw, pools):
    srv = await raw(first_then_drop)
    pool = pools(srv.url)
    assert await get(pool) == (200, b"ok")
    assert await get(pool) == (200, b"ok")  # the reused connection failed: retried on a new one
    assert srv.connections == 2
    srv = await raw(first_then_drop)
    pool = pools(srv.url)
    assert await get(pool) == (200, b"ok")
    r = await pool.request("PUT", "/", [], b"payload", read_timeout=5)
    assert await r.read() == b"ok"
    assert srv.connections == 2 and srv.bodies[-1] == b"payload"


async def test_stale_connection_is_not_retried_for_a_post(raw, pools):
    """RFC 9110 §9.2.2: the upstream may have acted on a non-idempotent request."""
    srv = await raw(first_then_drop)
    pool = pools(srv.url)
    assert await get(pool) == (200, b"ok")
    with pytest.raises(UpstreamDisconnected):
        await pool.request("POST", "/", [], b"payload", read_timeout=5)
    assert srv.connections == 1


async def test_stale_connection_is_not_retried_for_a_streamed_body(raw, pools):
    srv = await raw(first_then_drop)
    pool = pools(srv.url)
    assert await get(pool) == (200, b"ok")
    with pytest.raises(UpstreamDisconnected):
        await pool.request("POST", "/", [], chunks_of(b"payload", 3), read_timeout=5)
    assert srv.connections == 1


async def test_fresh_connection_failing_is_not_retried(raw, pools):
    srv = await raw(in_pieces(then_close=True))
    pool = pools(srv.url)
    with pytest.raises(UpstreamDisconnected):
        await get(pool)
    assert srv.connections == 1


async def test_idle_connections_expire_after_keepalive(raw, pools):
    srv = await raw(replying(OK))
    pool = pools(srv.url, keepalive=0.2)
    assert await get(pool) == (200, b"ok")
    started = time.monotonic()
    await srv.wait_closed(1)  # the sweep closed it
    assert time.monotonic() - started >= 0.15
    assert not pool._idle and not pool._conns
    assert await get(pool) == (200, b"ok")
    assert srv.connections == 2


async def test_an_expired_connection_is_not_taken(raw, pools):
    srv = await raw(replying(OK))
    pool = pools(srv.url, keepalive=0.2)
    assert await get(pool) == (200, b"ok")
    assert pool._sweeper is not None
    pool._sweeper.cancel()  # only the check when taking it is left
    pool._idle[0].idle_since -= 1.0
    assert await get(pool) == (200, b"ok")
    assert srv.connections == 2
    await srv.wait_closed(1)


async def test_releasing_a_complete_unread_body_reuses_an_incomplete_one_closes(raw, pools):
    srv = await raw(in_pieces(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab", b"cdef", gap=0.05))
    pool = pools(srv.url)
    r = await pool.request("GET", "/", [], None, read_timeout=5)
    r.release()  # the body has not all arrived yet
    r.release()
    await srv.wait_closed(1)
    with pytest.raises(RuntimeError):
        await r.read()
    srv = await raw(replying(OK))
    pool = pools(srv.url)
    r = await pool.request("GET", "/", [], None, read_timeout=5)
    r.release()
    assert await get(pool) == (200, b"ok")
    assert srv.connections == 1


async def test_data_after_the_response_closes_the_connection(raw, pools):
    srv = await raw(replying(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno"))
    pool = pools(srv.url)
    assert await get(pool) == (200, b"ok")
    await srv.wait_closed(1)
    assert await get(pool) == (200, b"ok")
    assert srv.connections == 2


# Framing


async def test_request_framing(raw, pools):
    srv = await raw(replying(OK))
    pool = pools(srv.url)
    for method, headers, body in [
        ("GET", [("Accept", "*/*")], None),
        ("POST", [], None),
        ("DELETE", [], None),
        ("PUT", [], b"12345"),
        ("PATCH", [("content-length", "3")], b"abc"),
        ("POST", [], b"x" * 100_000),
    ]:
        r = await pool.request(method, "/p/../q%2F?a=%zz", headers, body, read_timeout=5)
        assert await r.read() == b"ok"
    heads = [h.decode() for h in srv.heads]
    assert heads[0] == f"GET /p/../q%2F?a=%zz HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nAccept: */*\r\n\r\n"
    assert heads[1].endswith("\r\nContent-Length: 0\r\n\r\n")
    assert "content-length" not in heads[2].lower()
    assert heads[3].endswith("\r\nContent-Length: 5\r\n\r\n") and srv.bodies[3] == b"12345"
    assert heads[4].lower().count("content-length") == 1 and srv.bodies[4] == b"abc"
    assert srv.bodies[5] == b"x" * 100_000
    assert srv.connections == 1


@pytest.mark.parametrize(
    "target, headers, body, error",
    [
        ("/", [("x-a", "1\r\nHost: evil")], None, "CR, LF or NUL"),
        ("/", [("x-a\r\n", "1")], None, "CR, LF or NUL"),
        ("/ HTTP/1.1\r\nx:", [], None, "control character"),
        ("/\x00", [], None, "control character"),
        ("/a b", [], None, "a space"),
        ("/", [("x-a", "1\r")], None, "CR, LF or NUL"),
        ("/", [("x-a", "1\n")], None, "CR, LF or NUL"),
        ("/", [("x-a", "\x00")], None, "CR, LF or NUL"),
        ("/", [("Host", "evil")], None, "Host and Transfer-Encoding"),
        ("/", [("Transfer-Encoding", "chunked")], b"x", "Host and Transfer-Encoding"),
        ("/", [("Content-Length", "5")], b"abc", "does not match"),
        ("/", [("Content-Length", "3"), ("content-length", "3")], b"abc", "not one decimal"),
        ("/", [("Content-Length", "1_0")], b"x" * 10, "not one decimal"),
        ("/", [("Content-Length", "2")], None, "without a body"),
        ("/", [("x-a", "\u20ac")], None, "latin-1"),
    ],
)
async def test_malformed_requests_are_refused_before_connecting(raw, pools, target, headers, body, error):
    srv = await raw(replying(OK))
    pool = pools(srv.url)
    with pytest.raises(ValueError, match=error):
        await pool.request("POST", target, headers, body, read_timeout=5)
    assert srv.connections == 0


async def test_streamed_body_must_match_its_content_length(raw, pools):
    srv = await raw(stalling())
    pool = pools(srv.url)
    with pytest.raises(ValueError, match="shorter"):
        await pool.request("POST", "/", [("content-length", "10")], chunks_of(b"abc", 1), read_timeout=5)
    with pytest.raises(ValueError, match="longer"):
        await pool.request("POST", "/", [("content-length", "2")], chunks_of(b"abc", 1), read_timeout=5)
    await srv.wait_closed(2)


async def test_streamed_request_body_waits_for_the_socket(raw, pools):
    """The iterator is not asked for more while the transport's write buffer is full."""
    size = 32 * MB
    chunk = 256 * 1024

    async def slow_reader(srv: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.3)
        got = len(await reader.readexactly(size))
        srv.heads.append(head)
        body = str(got).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await until_eof(reader)

    srv = await raw(slow_reader)
    pool = pools(srv.url)
    buffered: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        block = b"x" * chunk
        for _ in range(size // chunk):
            conns = list(pool._conns)
            buffered.append(conns[0].transport.get_write_buffer_size() if conns else 0)
            yield block

    r = await pool.request("POST", "/", [("content-length", str(size))], body(), read_timeout=5)
    assert await r.read() == str(size).encode()
    assert max(buffered) <= 64 * 1024 + chunk  # the write buffer's high-water mark, plus one chunk
    assert max(buffered) > 0  # it did fill up: the upstream read nothing for a while


async def test_chunked_response_and_reuse(raw, pools):
    pieces = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\nhello\r\n", b"6\r\n world\r\n")
    srv = await raw(in_pieces(*pieces, b"0\r\n\r\n", gap=0.01))
    pool = pools(srv.url)
    r = await pool.request("GET", "/", [], None, read_timeout=5)
    assert r.content_length is None and r.get("transfer-encoding") == "chunked"
    assert await r.read() == b"hello world"
    r = await pool.request("GET", "/", [], None, read_timeout=5)
    assert b"".join([c async for c in r.iter_chunks()]) == b"hello world"
    assert srv.connections == 1


async def test_close_delimited_response_is_read_until_eof(raw, pools):
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
    srv = await raw(in_pieces(head, b"until ", b"the end", gap=0.01, then_close=True))
    pool = pools(srv.url)
    r = await pool.request("GET", "/", [], None, read_timeout=5)
    assert r.content_length is None
    assert await r.read() == b"until the end"
    r = await pool.request("GET", "/", [], None, read_timeout=5)
    assert b"".join([c async for c in r.iter_chunks()]) == b"until the end"
    assert srv.connections == 2


async def fails_mid_body(
    pool: UpstreamPool, error: type[Exception], read_timeout: float, match: str | None = None
) -> list[bytes]:
    """Two requests whose bodies break after their first piece: reading whole and streaming
    both raise ``error``; returns what streaming got before it."""
    r = await pool.request("GET", "/", [], None, read_timeout=read_timeout)
    with pytest.raises(error, match=match):
        await r.read()
    r = await pool.request("GET", "/", [], None, read_timeout=read_timeout)
    got: list[bytes] = []
    with pytest.raises(error):
        await collect(r, got)
    return got


async def test_connection_lost_mid_body(raw, pools):
    srv = await raw(in_pieces(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", gap=0.01, then_close=True))
    pool = pools(srv.url)
    assert await fails_mid_body(pool, UpstreamDisconnected, read_timeout=5, match="mid-body") == [b"abc"]
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    srv = await raw(in_pieces(chunked, gap=0.01, then_close=True))
    pool = pools(srv.url)
    r = await pool.request("GET", "/", [], None, read_timeout=5)
    with pytest.raises(UpstreamDisconnected):
        await r.read()
    assert not pool._conns


async def test_head_response_ends_at_its_headers_and_closes(raw, pools):
    srv = await raw(replying(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"))
    pool = pools(srv.url)
    started = time.monotonic()
    r = await pool.request("HEAD", "/", [], None, read_timeout=5)
    assert r.status == 200 and r.content_length == 1000
    assert await r.read() == b""
    assert time.monotonic() - started < 2
    await srv.wait_closed(1)
    assert srv.connections == 1


async def test_204_and_304_have_no_body_and_keep_the_connection(raw, pools):
    srv = await raw(
        replying(
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\nETag: x\r\n\r\n",
            OK,
        )
    )
    pool = pools(srv.url)
    assert await get(pool) == (204, b"")
    r = await pool.request("GET", "/", [], None, read_timeout=5)
    assert r.status == 304 and r.get("etag") == "x"
    assert [c async for c in r.iter_chunks()] == []
    assert await get(pool) == (200, b"ok")
    assert srv.connections == 1


async def test_interim_responses_are_skipped(raw, pools):
    interim = (
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
    )
    final = b"HTTP/1.1 200 OK\r\nX-Final: 1\r\nContent-Length: 2\r\n\r\nok"
    srv = await raw(in_pieces(*interim, final, gap=0.01))
    pool = pools(srv.url)
    for _ in range(2):
        r = await pool.request("POST", "/", [], b"x", read_timeout=5)
        assert r.status == 200 and r.get("x-final") == "1" and r.get("link") is None
        assert [k for k, _ in r.raw_headers] == [b"X-Final", b"Content-Length"]
        assert await r.read() == b"ok"
    srv = await raw(replying(b"".join(interim) + final))  # all in one segment
    pool = pools(srv.url)
    assert await get(pool) == (200, b"ok")
    assert await get(pool) == (200, b"ok")
    assert srv.connections == 1


async def test_101_is_an_error(raw, pools):
    srv = await raw(
        replying(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    )
    pool = pools(srv.url)
    with pytest.raises(UpstreamDisconnected, match="101"):
        await get(pool)
    await srv.wait_closed(1)


@pytest.mark.parametrize(
    "reply",
    [
        b"HELLO\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_garbage_response(raw, pools, reply):
    srv = await raw(stalling(reply))
    pool = pools(srv.url)
    with pytest.raises(UpstreamDisconnected, match="invalid response"):
        await get(pool)
    await srv.wait_closed(1)
    assert not pool._conns


# Timeouts and connecting


async def test_read_timeout_waiting_for_headers(raw, pools):
    srv = await raw(stalling())
    pool = pools(srv.url)
    started = time.monotonic()
    with pytest.raises(ReadTimeout) as caught:
        await pool.request("GET", "/", [], None, read_timeout=0.2)
    assert 0.19 <= time.monotonic() - started < 2
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, UpstreamError)
    await srv.wait_closed(1)


async def test_read_timeout_mid_body(raw, pools):
    srv = await raw(stalling(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"))
    pool = pools(srv.url)
    assert await fails_mid_body(pool, ReadTimeout, read_timeout=0.2) == [b"abc"]
    await srv.wait_closed(2)
    assert not pool._conns


async def test_a_slow_but_steady_body_is_not_a_timeout(raw, pools):
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    srv = await raw(in_pieces(head, *[b"x"] * 10, gap=0.05))
    pool = pools(srv.url)
    started = time.monotonic()
    r = await pool.request("GET", "/", [], None, read_timeout=0.4)
    assert await r.read() == b"x" * 10
    assert time.monotonic() - started >= 0.4  # longer than read_timeout in all


async def test_cancelling_a_request_closes_its_connection(raw, pools):
    srv = await raw(stalling())
    pool = pools(srv.url)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await pool.request("GET", "/", [], None, read_timeout=5)
    await srv.wait_closed(1)
    assert not pool._conns


async def test_connect_refused():
    pool = UpstreamPool(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ConnectFailed):
        await pool.request("GET", "/", [], None, read_timeout=5)
    await pool.close()


async def test_connect_timeout_covers_the_tls_handshake(raw, pools):
    srv = await raw(read_until_eof_then_nothing)
    pool = pools(srv.url.replace("http:", "https:"), connect_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(ConnectFailed):
        await get(pool)
    assert time.monotonic() - started < 2
    await srv.wait_closed(1)


async def close_while_reading(pool: UpstreamPool) -> None:
    """Close the pool while a body is being read: the reader gets UpstreamDisconnected."""
    r = await pool.request("GET", "/", [], None, read_timeout=5)
    reading = asyncio.ensure_future(r.read())
    await asyncio.sleep(0)
    await pool.close()
    with pytest.raises(UpstreamDisconnected):
        await reading


async def test_closed_pool_refuses_and_closes_busy_connections(raw, pools):
    srv = await raw(stalling(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"))
    pool = pools(srv.url)
    await close_while_reading(pool)
    with pytest.raises(ConnectFailed):
        await get(pool)


def test_origins():
    assert UpstreamPool("http://Example.com:80")._authority == "example.com"
    assert UpstreamPool("https://example.com:443/")._authority == "example.com"
    assert UpstreamPool("https://example.com:8443")._authority == "example.com:8443"
    assert UpstreamPool("http://[::1]:8080")._authority == "[::1]:8080"
    for bad in ("ftp://x", "http://x/api", "http://u@x", "http://x?a", "x:80", "http://x:port"):
        with pytest.raises(ValueError, match=r"origin|[Pp]ort"):
            UpstreamPool(bad)


# TLS


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for a self-signed 127.0.0.1 certificate."""
    certificate = self_signed(tmp_path_factory.mktemp("tls"), "127.0.0.1", ca=True)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(certificate.cert_file, certificate.key_file)
    return server, ssl.create_default_context(cadata=certificate.pem.decode())


async def test_tls_keep_alive_and_close_delimited(raw, pools, tls):
    server_ctx, client_ctx = tls
    srv = await raw(replying(OK), tls=server_ctx)
    pool = pools(srv.url, ssl_context=client_ctx)
    assert await get(pool) == (200, b"ok")
    assert await get(pool) == (200, b"ok")
    assert srv.connections == 1
    assert srv.heads[0].startswith(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % srv.port)
    srv = await raw(
        in_pieces(b"HTTP/1.1 200 OK\r\n\r\nall ", b"of it", gap=0.01, then_close=True), tls=server_ctx
    )
    pool = pools(srv.url, ssl_context=client_ctx)
    assert await get(pool) == (200, b"all of it")


async def test_our_own_close_does_not_end_a_close_delimited_body(raw, pools, tls):
    for server_ctx, client_ctx in ((None, None), tls):
        srv = await raw(stalling(b"HTTP/1.1 200 OK\r\n\r\npartial"), tls=server_ctx)
        await close_while_reading(pools(srv.url, ssl_context=client_ctx))


async def test_tls_untrusted_certificate(raw, pools, tls):
    srv = await raw(replying(OK), tls=tls[0])
    pool = pools(srv.url)  # the default context does not trust the test certificate
    with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
        await get(pool)


# uvloop, as the BFF runs


async def _uvloop_with_upstream(upstream_url: str) -> None:
    pool = UpstreamPool(upstream_url)
    try:
        for _ in range(3):
            assert (await get(pool, "/bench"))[0] == 200
        assert len(pool._conns) == 1
        r = await pool.request("GET", f"/stream?size={8 * MB}", [], None, read_timeout=5)
        sizes = []
        async for chunk in r.iter_chunks():
            if not sizes:
                await asyncio.sleep(0.2)
            sizes.append(len(chunk))
        assert sum(sizes) == 8 * MB and max(sizes) <= 64 * 1024 + 256 * 1024
        data = os.urandom(MB)
        r = await pool.request("POST", "/upload", [], chunks_of(data, 50000), read_timeout=5)
        assert json.loads(await r.read())["sha256"] == hashlib.sha256(data).hexdigest()
        with pytest.raises(ReadTimeout):
            await pool.request("GET", "/slow?delay=0.6", [], None, read_timeout=0.2)
        assert (await get(pool, "/bench"))[0] == 200
    finally:
        await pool.close()


async def _uvloop_with_raw_servers(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    close_delimited = in_pieces(b"HTTP/1.1 200 OK\r\n\r\nall ", b"of it", gap=0.01, then_close=True)
    cases = [(first_then_drop, None, None, b"ok"), (close_delimited, None, None, b"all of it")]
    cases.append((close_delimited, *tls, b"all of it"))
    for handler, server_ctx, client_ctx, body in cases:
        srv = await RawServer(handler, server_ctx).start()
        pool = UpstreamPool(srv.url, ssl_context=client_ctx)
        try:
            assert await get(pool) == (200, body)
            assert await get(pool) == (200, body)
            assert srv.connections == 2
        finally:
            await pool.close()
            await srv.stop()


def test_on_uvloop(upstream: UpstreamProc, tls):
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_uvloop_with_upstream(upstream.url))
        runner.run(_uvloop_with_raw_servers(tls))
