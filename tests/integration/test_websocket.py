"""WebSockets through real BFF processes to the real upstream's WebSocket endpoints, with
a real WebSocket client (the websockets library) standing in for the browser: refusals
before the upgrade, what the upstream sees, echo, subprotocols, close codes, backpressure
(RSS of the BFF measured), limits, and the close on every way a session ends, on the same
and on another BFF process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.scenarios import post_logout_token
from tests.support import BffProc, Browser, bff_env, bff_processes

ROUTES = json.dumps(
    [
        {"prefix": "/api", "upstream": "UPSTREAM"},
        {"prefix": "/pub", "upstream": "UPSTREAM", "token": "none"},
    ]
)


def routes(upstream: Any) -> str:
    return ROUTES.replace("UPSTREAM", upstream.url)


@pytest.fixture(scope="module")
def bff_ws(provider, redis_server, upstream, tmp_path_factory) -> Iterator[BffProc]:
    provider.reset()
    env = bff_env(
        provider,
        redis_server.url,
        "http://127.0.0.1:0",
        BFF_API_ROUTES=routes(upstream),
        BFF_WS_MAX_PER_SESSION="3",
        BFF_WS_MAX_MESSAGE_SIZE="65536",
    )
    proc = BffProc(env, log=tmp_path_factory.mktemp("bff") / "bff.log")
    proc.env["BFF_PUBLIC_URL"] = proc.url
    proc.start()
    yield proc
    proc.stop()


async def login(url: str, public: str | None = None, user: str = "alice") -> tuple[Browser, str]:
    client = httpx.AsyncClient(timeout=30)
    browser = Browser(client, url)
    await browser.login(user)
    return browser, browser._cookie_header()["cookie"]


async def done(browser: Browser) -> None:
    await browser.bff.aclose()
    await browser.aclose()


def ws_url(http_url: str, path: str) -> str:
    return "ws" + http_url.removeprefix("http") + path


async def open_ws(
    base: str, path: str, cookie: str | None, origin: str | None = "same", **kw: Any
) -> ClientConnection:
    headers = {"Cookie": cookie} if cookie else {}
    return await connect(
        ws_url(base, path),
        additional_headers=headers,
        origin=(base if origin == "same" else origin),  # type: ignore[arg-type]
        open_timeout=10,
        max_size=None,
        **kw,
    )


async def closed_with(ws: ClientConnection, timeout: float = 5.0) -> tuple[int | None, str, float]:
    """Wait for the close: (code, reason, seconds it took)."""
    started = time.monotonic()

    async def until_closed() -> None:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()

    with pytest.raises(ConnectionClosed):
        await until_closed()
    return ws.close_code, ws.close_reason or "", time.monotonic() - started


async def ws_stats(upstream: Any) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        return dict((await client.get(f"{upstream.url}/ws-stats")).json())


@pytest.fixture
async def alice(bff_ws) -> AsyncIterator[tuple[Browser, str]]:
    browser, cookie = await login(bff_ws.url)
    yield browser, cookie
    await done(browser)


@pytest.mark.parametrize(
    ("cookie", "origin", "status"),
    [
        (None, "same", 401),  # no session on a user route
        ("session", None, 403),  # no Origin
        ("session", "https://evil.example.com", 403),  # cross-site WebSocket hijacking
        ("session", "null", 403),
    ],
)
async def test_handshakes_are_refused_before_the_upgrade_and_before_the_upstream(
    bff_ws, alice, upstream, cookie, origin, status
):
    before = (await ws_stats(upstream))["handshakes"]
    with pytest.raises(InvalidStatus) as info:
        await open_ws(bff_ws.url, "/api/ws/echo", alice[1] if cookie else None, origin)
    assert info.value.response.status_code == status
    assert json.loads(info.value.response.body)["error"] in ("not_authenticated", "websocket_origin")
    assert (await ws_stats(upstream))["handshakes"] == before


async def test_the_upstream_sees_the_token_and_no_cookie_and_messages_echo(bff_ws, alice):
    ws = await open_ws(bff_ws.url, "/api/ws/echo?x=1", alice[1])
    hello = json.loads(await ws.recv())
    headers = hello["headers"]
    assert headers["authorization"][0].startswith("Bearer eyJ")
    assert "cookie" not in headers and "x-csrf" not in headers
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    await ws.send("hello there")
    assert await ws.recv() == "hello there"
    await ws.send(b"\x00\x01binary\xff")
    assert await ws.recv() == b"\x00\x01binary\xff"
    await ws.close()


async def test_a_route_without_a_token_needs_no_session_but_still_the_origin(bff_ws):
    ws = await open_ws(bff_ws.url, "/pub/ws/echo", None)
    assert "authorization" not in json.loads(await ws.recv())["headers"]
    await ws.close()
    with pytest.raises(InvalidStatus) as info:
        await open_ws(bff_ws.url, "/pub/ws/echo", None, "https://evil.example.com")
    assert info.value.response.status_code == 403


async def test_subprotocols_are_negotiated_end_to_end(bff_ws, alice):
    ws = await open_ws(bff_ws.url, "/api/ws/echo", alice[1], subprotocols=["chat.v1", "chat.v2"])
    assert ws.subprotocol == "chat.v2"
    assert json.loads(await ws.recv())["subprotocol"] == "chat.v2"
    await ws.close()


async def test_close_codes_and_reasons_pass_through_both_ways(bff_ws, alice, upstream):
    ws = await open_ws(bff_ws.url, "/api/ws/echo", alice[1])
    await ws.recv()
    await ws.send("close:4000:done here")
    code, reason, _ = await closed_with(ws)
    assert (code, reason) == (4000, "done here")
    ws = await open_ws(bff_ws.url, "/api/ws/echo", alice[1])
    await ws.recv()
    await ws.close(code=4321, reason="browser says bye")
    for _ in range(50):
        if 4321 in (await ws_stats(upstream))["closes"]:
            break
        await asyncio.sleep(0.1)
    assert 4321 in (await ws_stats(upstream))["closes"]


async def test_a_message_over_the_limit_closes_with_1009(bff_ws, alice):
    ws = await open_ws(bff_ws.url, "/api/ws/echo", alice[1])
    await ws.recv()
    await ws.send(b"x" * 70000)
    code, _, _ = await closed_with(ws)
    assert code == 1009


async def test_an_upstream_message_over_the_limit_closes_both_sides_with_1009(bff_ws, alice):
    ws = await open_ws(bff_ws.url, "/api/ws/flood?n=1&size=70000", alice[1])
    code, reason, _ = await closed_with(ws)
    assert (code, reason) == (1009, "upstream message too big")


async def test_the_per_session_cap_refuses_one_more_socket(bff_ws, alice):
    sockets = [await open_ws(bff_ws.url, "/api/ws/echo", alice[1]) for _ in range(3)]
    with pytest.raises(InvalidStatus) as info:
        await open_ws(bff_ws.url, "/api/ws/echo", alice[1])
    assert info.value.response.status_code == 429
    other, cookie = await login(bff_ws.url, user="bob")  # other sessions are not affected
    extra = await open_ws(bff_ws.url, "/api/ws/echo", cookie)
    for ws in [*sockets, extra]:
        await ws.close()
    await done(other)


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0])


async def test_a_slow_browser_does_not_make_the_bff_buffer_the_upstreams_flood(bff_ws, alice):
    assert bff_ws.proc is not None
    before = rss_kib(bff_ws.proc.pid)
    ws = await open_ws(bff_ws.url, "/api/ws/flood?n=3000&size=65536", alice[1])  # ~200 MB
    await asyncio.sleep(4)  # not reading: the upstream must wait, not the BFF's memory
    during = rss_kib(bff_ws.proc.pid)
    received = 0
    async for message in ws:
        received += len(message)
    assert received == 3000 * 65536
    assert during - before < 64 * 1024, (
        f"RSS grew {(during - before) // 1024} MiB while the browser did not read"
    )


async def test_a_slow_upstream_does_not_make_the_bff_buffer_the_browsers_messages(bff_ws, alice):
    assert bff_ws.proc is not None
    before = rss_kib(bff_ws.proc.pid)
    ws = await open_ws(bff_ws.url, "/api/ws/sink", alice[1], compression=None)
    block = os.urandom(60000)  # incompressible: no compression shrinks what is held
    sent = 0

    async def send_for_4_seconds() -> None:
        nonlocal sent
        async with asyncio.timeout(4):
            while True:
                await ws.send(block)
                sent += 1

    with pytest.raises(TimeoutError):  # the send blocks: backpressure reaches the browser
        await send_for_4_seconds()
    during = rss_kib(bff_ws.proc.pid)
    assert sent < 1000, sent  # far less than 4 s of unbounded sending on loopback
    assert during - before < 64 * 1024, f"RSS grew {(during - before) // 1024} MiB"
    ws.transport.abort()


async def _session_end(how: str, procs: list[BffProc], idp: Any, browser: Browser, cookie: str) -> None:
    base = procs[0].url
    async with httpx.AsyncClient(timeout=30) as client:
        headers = {"x-csrf": "1", "cookie": cookie, "origin": base}
        if how == "logout":
            await client.post(f"{base}/bff/logout", headers=headers)
        elif how == "backchannel":
            sid = (await client.get(f"{base}/bff/user", headers=headers)).json()["claims"]["sid"]
            r = await post_logout_token(browser, idp.logout_token(user="alice", sid=sid))
            assert r.status_code == 200
        elif how == "session_list":
            other, other_cookie = await login(base)
            mine = (await client.get(f"{base}/bff/sessions", headers=headers)).json()["sessions"]
            handle = next(s["id"] for s in mine if s["current"])
            r = await client.delete(
                f"{base}/bff/sessions/{handle}", headers={**headers, "cookie": other_cookie}
            )
            assert r.status_code == 204
            await done(other)
        elif how == "everywhere":
            await client.delete(f"{base}/bff/sessions", headers=headers)
        elif how == "refresh_refused":
            idp.configure(access_ttl=0)  # not for this session: only the next refresh fails
            idp.end_idp_session("alice")
            await client.get(f"{base}/api/echo", headers=headers)


@pytest.mark.parametrize("how", ["logout", "backchannel", "session_list", "everywhere"])
async def test_every_way_a_session_ends_closes_its_sockets_on_every_process(
    idp, redis_url, upstream, tmp_path, how
):
    with bff_processes(idp, redis_url, upstream, tmp_path, BFF_API_ROUTES=routes(upstream)) as procs:
        browser, cookie = await login(procs[0].url)
        bob, bob_cookie = await login(procs[0].url, user="bob")
        origin = procs[0].url
        here = await open_ws(procs[0].url, "/api/ws/echo", cookie, origin)
        there = await open_ws(procs[1].url, "/api/ws/echo", cookie, origin)  # another process
        bobs = await open_ws(procs[1].url, "/api/ws/echo", bob_cookie, origin)
        for ws in (here, there, bobs):
            await ws.recv()
        await _session_end(how, procs, idp, browser, cookie)
        for ws in (here, there):
            code, reason, seconds = await closed_with(ws)
            assert (code, reason) == (4401, "session ended"), how
            assert seconds < 5
        await bobs.send("still here")  # the other user's socket stays open
        assert await bobs.recv() == "still here"
        await bobs.close()
        await done(browser)
        await done(bob)


async def test_the_session_limit_closes_the_ended_sessions_sockets(idp, redis_url, upstream, tmp_path):
    extra = {"BFF_API_ROUTES": routes(upstream), "BFF_MAX_SESSIONS_PER_USER": "1"}
    with bff_processes(idp, redis_url, upstream, tmp_path, count=1, **extra) as procs:
        first, cookie = await login(procs[0].url)
        ws = await open_ws(procs[0].url, "/api/ws/echo", cookie)
        await ws.recv()
        second, _ = await login(procs[0].url)
        assert (await closed_with(ws))[0] == 4401
        await done(first)
        await done(second)


async def test_refresh_refused_and_idle_timeout_close_the_sockets(idp, redis_url, upstream, tmp_path):
    extra = {
        "BFF_API_ROUTES": routes(upstream),
        "BFF_SESSION_IDLE_TIMEOUT": "3",
        "BFF_TOKEN_REFRESH_SKEW": "60",
    }
    with bff_processes(idp, redis_url, upstream, tmp_path, count=1, **extra) as procs:
        idp.configure(access_ttl=0)
        browser, cookie = await login(procs[0].url)
        ws = await open_ws(procs[0].url, "/api/ws/echo", cookie)
        await ws.recv()
        await _session_end("refresh_refused", procs, idp, browser, cookie)
        assert (await closed_with(ws))[0] == 4401
        idp.reset()
        # Idle: messages from the upstream do not count as use; the session expires after
        # 3 s without a request, and the sweep closes its socket within a few seconds more.
        browser, cookie = await login(procs[0].url)
        ws = await open_ws(procs[0].url, "/api/ws/echo", cookie)
        await ws.recv()
        code, _, seconds = await closed_with(ws, timeout=10)
        assert code == 4401 and seconds < 3 + 2 + 2
        await done(browser)


async def test_the_per_process_cap_and_the_absolute_timeout(idp, redis_url, upstream, tmp_path):
    """One more socket than BFF_WS_MAX_PER_PROCESS is a 503 for any session; a socket kept busy
    by its browser still closes with 4401 when its session reaches the absolute timeout."""
    extra = {
        "BFF_API_ROUTES": routes(upstream),
        "BFF_WS_MAX_PER_PROCESS": "2",
        "BFF_SESSION_ABSOLUTE_TIMEOUT": "5",
    }
    with bff_processes(idp, redis_url, upstream, tmp_path, count=1, **extra) as procs:
        browser, cookie = await login(procs[0].url)
        sockets = [await open_ws(procs[0].url, "/api/ws/echo", cookie) for _ in range(2)]
        other, other_cookie = await login(procs[0].url, user="bob")
        with pytest.raises(InvalidStatus) as info:
            await open_ws(procs[0].url, "/api/ws/echo", other_cookie)
        assert info.value.response.status_code == 503
        await sockets.pop().close()
        ws = sockets[0]
        await ws.recv()  # the hello
        started = time.monotonic()

        async def keep_using() -> None:  # the browser keeps using it: idle cannot be the reason
            async with asyncio.timeout(15):
                while True:
                    await ws.send("ping")
                    await ws.recv()
                    await asyncio.sleep(0.2)

        with pytest.raises(ConnectionClosed):
            await keep_using()
        assert ws.close_code == 4401 and time.monotonic() - started < 5 + 2 + 2
        await done(browser)
        await done(other)


async def test_graceful_shutdown_closes_sockets_with_1001(idp, redis_url, upstream, tmp_path):
    env = bff_env(idp, redis_url, "http://127.0.0.1:0", BFF_API_ROUTES=routes(upstream))
    proc = BffProc(env, log=tmp_path / "bff.log")
    proc.env["BFF_PUBLIC_URL"] = proc.url
    proc.start()
    try:
        browser, cookie = await login(proc.url)
        ws = await open_ws(proc.url, "/api/ws/echo", cookie)
        await ws.recv()
        assert proc.proc is not None
        os.kill(proc.proc.pid, signal.SIGTERM)
        assert (await closed_with(ws))[0] == 1001
        await done(browser)
    finally:
        proc.stop()


async def test_a_dpop_bound_token_goes_to_the_upstream_handshake_with_a_proof(
    idp, redis_url, upstream, tmp_path
):
    idp.configure(dpop=True, dpop_required=True)
    extra = {"BFF_API_ROUTES": routes(upstream), "BFF_DPOP": "true"}
    with bff_processes(idp, redis_url, upstream, tmp_path, count=1, **extra) as procs:
        browser, cookie = await login(procs[0].url)
        ws = await open_ws(procs[0].url, "/api/ws/echo", cookie)
        hello = json.loads(await ws.recv())
        assert hello["headers"]["authorization"][0].startswith("DPoP ")
        assert hello["dpop"] is not None and hello["dpop"]["jkt"]  # the upstream verified the proof
        await ws.close()
        await done(browser)
