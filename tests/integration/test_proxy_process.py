"""Proxy behaviour through a real BFF process (uvicorn + httptools), with raw HTTP where the
exact bytes matter: path tricks, header injection, streaming, server-sent events.
"""

from __future__ import annotations

import hashlib
import json
import time

import httpx
import pytest

from tests.support import BffProc, Browser, bff_env, raw_http


@pytest.fixture(scope="module")
def bff_process(provider, redis_server, upstream, tmp_path_factory):
    provider.reset()
    env = bff_env(provider, redis_server.url, "http://127.0.0.1:0", BFF_API_ROUTES=f"/api={upstream.url}")
    proc = BffProc(env, log=tmp_path_factory.mktemp("bff") / "bff.log")
    proc.env["BFF_PUBLIC_URL"] = proc.url
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
async def logged_in(bff_process):
    async with httpx.AsyncClient(timeout=60) as client:
        browser = Browser(client, bff_process.url)
        await browser.login()
        yield browser
        await browser.aclose()


PATHS = [
    "/api/../admin",
    "/api/%2e%2e/admin",
    "/api/%2E%2E/admin",
    "/api/.%2e/admin",
    "/api/%2e./admin",
    "/api/x%2f..%2fadmin",
    "/api/x%2F..%2Fadmin",
    "/api\\..\\admin",
    "/api/x\\..\\admin",
    "/api/x%5c..%5cadmin",
    "/api//evil.example.com/x",
    "/api/./x",
    "/api/..;/admin",
    "/api/x/%252e%252e/admin",
    "/api/x%00y",
    "/api/x/..",
    "/api/x/.",
    "/api/%2e",
    "http://evil.example.com/api/x",
    "//evil.example.com/api/x",
]


@pytest.mark.parametrize("path", PATHS)
def test_path_tricks_never_reach_the_upstream_outside_the_route(bff_process, logged_in, path):
    cookie = "; ".join(f"{k}={v}" for k, v in logged_in.cookies.items())
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CSRF: 1\r\nCookie: {cookie}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    status, _, body = raw_http(bff_process.port, request)
    if status == 200 and path.startswith(("http://", "//")):
        # The absolute form names a host, but the request still goes to the route's own upstream.
        echo = json.loads(body)
        assert echo["raw_path"] == "/api/x"
        assert "evil" not in json.dumps(echo["headers"])
        return
    if status == 200:
        seen = json.loads(body)["raw_path"]
        pytest.fail(f"{path!r} reached the upstream as {seen!r}")
    assert status in (400, 404), (path, status, body[:200])


@pytest.mark.parametrize(
    "header",
    [
        b"X-Inject: a\r\nAuthorization: Bearer evil",  # a second, browser-sent Authorization
        b"X-Inject: a\rAuthorization: Bearer evil",
        b"X-Inject: a\nAuthorization: Bearer evil",
        b"Host: evil.example.com",
    ],
)
def test_header_injection_does_not_reach_the_upstream(bff_process, logged_in, header):
    cookie = "; ".join(f"{k}={v}" for k, v in logged_in.cookies.items())
    request = (
        b"GET /api/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CSRF: 1\r\nCookie: "
        + cookie.encode()
        + b"\r\n"
        + header
        + b"\r\nConnection: close\r\n\r\n"
    )
    if header.startswith(b"Host"):
        request = request.replace(b"Host: 127.0.0.1\r\n", b"")
    status, _, body = raw_http(bff_process.port, request)
    if status == 200:
        seen = json.loads(body)["headers"]
        assert seen["authorization"] != ["Bearer evil"] and len(seen["authorization"]) == 1
        assert "evil.example.com" not in json.dumps(seen)
    else:
        assert status == 400


def _rss_kib(proc: BffProc, field: str = "VmRSS") -> int:
    assert proc.proc is not None
    with open(f"/proc/{proc.proc.pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


async def test_large_download_streams_through_without_growing_memory(bff_process, logged_in):
    size = 256 * 1024 * 1024
    await logged_in.get("/api/stream?size=1048576", csrf=True)  # warm up buffers once
    baseline = _rss_kib(bff_process)
    digest = hashlib.sha256()
    received = 0
    async with logged_in.bff.stream(
        "GET",
        f"{logged_in.public_url}/api/stream?size={size}",
        headers={"x-csrf": "1", **logged_in._cookie_header()},
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-length"] == str(size)
        async for chunk in r.aiter_bytes():
            received += len(chunk)
            digest.update(chunk)
    assert received == size
    assert _rss_kib(bff_process, "VmHWM") - baseline < 64 * 1024, "the BFF buffered the download"


async def test_large_upload_streams_through_without_growing_memory(bff_process, logged_in):
    size = 256 * 1024 * 1024
    await logged_in.request("POST", "/api/upload", csrf=True, content=b"x" * 1024)
    baseline = _rss_kib(bff_process)
    block = b"u" * (1024 * 1024)

    async def body():
        for _ in range(size // len(block)):
            yield block

    r = await logged_in.bff.post(
        f"{logged_in.public_url}/api/upload",
        content=body(),
        headers={"x-csrf": "1", **logged_in._cookie_header()},
    )
    assert r.status_code == 200, r.text
    assert r.json()["size"] == size
    assert r.json()["sha256"] == hashlib.sha256(block * (size // len(block))).hexdigest()
    assert _rss_kib(bff_process, "VmHWM") - baseline < 64 * 1024, "the BFF buffered the upload"


async def test_server_sent_events_arrive_as_they_are_sent(logged_in):
    arrivals = []
    started = time.monotonic()
    async with logged_in.bff.stream(
        "GET",
        f"{logged_in.public_url}/api/sse?n=3&gap=0.7",
        headers={"x-csrf": "1", **logged_in._cookie_header()},
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 3
    # The first event arrives long before the stream ends: it was not buffered.
    assert arrivals[0] < arrivals[2] - 1.0
