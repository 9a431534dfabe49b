"""Correct behaviour while a dependency is really down: the process is stopped, then started again."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Iterator

import httpx

from tests.support import BffProc, Browser, RedisServer, bff_env


async def test_redis_down_gives_503_keeps_the_cookie_and_recovers_without_restart(make_bff, tmp_path):
    redis = RedisServer(extra=["--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path)])
    redis.start()
    try:
        _, browser = await make_bff(BFF_REDIS_URL=redis.url)
        await browser.login()
        cookie = browser.cookies["bff_session"]
        redis.kill()
        for method, path in (("GET", "/bff/user"), ("GET", "/api/echo"), ("GET", "/bff/sessions")):
            r = await browser.request(method, path, csrf=True)
            assert r.status_code == 503, path
            assert r.json()["error"] == "session_store_unavailable"
            assert not r.headers.get_list("set-cookie")
        assert (await browser.get("/bff/login")).status_code == 503
        assert (await browser.get("/readyz")).status_code == 503
        assert (await browser.get("/healthz")).status_code == 200
        metrics = (await browser.get("/metrics")).text
        assert "bff_session_store_errors_total" in metrics
        assert browser.cookies["bff_session"] == cookie
        redis.start()
        r = await browser.get("/bff/user", csrf=True)
        assert r.status_code == 200, r.text  # the session Redis kept is still valid
        assert (await browser.get("/api/echo", csrf=True)).status_code == 200
        assert (await browser.get("/readyz")).status_code == 200
    finally:
        redis.stop()


async def test_bff_started_while_the_idp_is_down_is_not_ready_and_recovers(make_bff, idp):
    idp.stop()
    try:
        app, browser = await make_bff(wait=False)
        r = await browser.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"]["idp_metadata"] == "not loaded"
        r = await browser.get("/bff/login", headers={"accept": "text/html"})
        assert r.status_code == 503
        assert "text/html" in r.headers["content-type"]
        assert "identity provider could not be reached" in r.text
    finally:
        idp.start()
    for _ in range(100):  # the start-up loader retries with backoff
        if (await browser.get("/readyz")).status_code == 200:
            break
        await asyncio.sleep(0.1)
    assert (await browser.get("/readyz")).status_code == 200
    assert (await browser.login()).status_code == 302


async def test_idp_down_at_the_callback_is_a_clear_503_and_no_session(bff, idp):
    _, browser = bff
    r = await browser.start_login()
    r = await browser.authorize(r.headers["location"])
    idp.stop()
    try:
        r = await browser.get(r.headers["location"], headers={"accept": "text/html"})
    finally:
        idp.start()
    assert r.status_code == 503
    assert "identity provider" in r.text
    assert "bff_session" not in browser.cookies


async def test_backchannel_logout_is_validated_with_cached_keys_while_the_idp_is_down(bff, idp):
    _, browser = bff
    await browser.login()
    token = idp.logout_token(user="alice")
    forged = idp.logout_token(user="alice", forge="wrong_key")
    idp.stop()
    try:
        r = await browser.request("POST", "/bff/backchannel-logout", data={"logout_token": forged})
        assert r.status_code == 400
        assert (await browser.get("/bff/user", csrf=True)).status_code == 200
        r = await browser.request("POST", "/bff/backchannel-logout", data={"logout_token": token})
        assert r.status_code == 200
        assert (await browser.get("/bff/user", csrf=True)).status_code == 401
    finally:
        idp.start()


def test_graceful_shutdown_lets_in_flight_requests_complete(idp, redis_url, upstream, tmp_path):
    env = bff_env(idp, redis_url, "http://127.0.0.1:0", BFF_API_ROUTES=f"/api={upstream.url}")
    proc = BffProc(env, log=tmp_path / "bff.log")
    proc.env["BFF_PUBLIC_URL"] = proc.url
    proc.start()
    try:

        async def login() -> dict[str, str]:
            async with httpx.AsyncClient(timeout=30) as client:
                browser = Browser(client, proc.url)
                await browser.login()
                await browser.aclose()
                return {"x-csrf": "1", **browser._cookie_header()}

        headers = asyncio.run(login())
        result: dict[str, object] = {}

        def slow_call() -> None:
            try:
                result["response"] = httpx.get(f"{proc.url}/api/slow?delay=2", headers=headers, timeout=30)
            except httpx.HTTPError as exc:
                result["error"] = exc

        worker = threading.Thread(target=slow_call)
        worker.start()
        time.sleep(0.7)  # the request is in flight at the upstream
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        worker.join(30)
        assert "error" not in result, result
        response = result["response"]
        assert isinstance(response, httpx.Response) and response.status_code == 200
        assert proc.proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
    finally:
        proc.stop()


@contextlib.contextmanager
def bff_on_its_own_redis(idp, upstream, tmp_path) -> Iterator[tuple[BffProc, RedisServer]]:
    """A real ``python -m bff`` process on a Redis of its own (to be stopped with SIGSTOP)."""
    redis = RedisServer()
    redis.start()
    env = bff_env(idp, redis.url, "http://127.0.0.1:0", BFF_API_ROUTES=f"/api={upstream.url}")
    proc = BffProc(env, log=tmp_path / "bff.log")
    proc.env["BFF_PUBLIC_URL"] = proc.url
    try:
        proc.start()
        yield proc, redis
    finally:
        proc.stop()
        redis.stop()


def signed_in(proc: BffProc, *then: str) -> dict[str, str]:
    """Sign in over real HTTP, call ``then`` paths; the headers of the browser's later calls."""

    async def run() -> dict[str, str]:
        async with httpx.AsyncClient(timeout=30) as client:
            browser = Browser(client, proc.url)
            await browser.login()
            for path in then:
                assert (await browser.get(path, csrf=True)).status_code == 200
            await browser.aclose()
            return {"x-csrf": "1", **browser._cookie_header()}

    return asyncio.run(run())


@contextlib.contextmanager
def hung(redis: RedisServer) -> Iterator[None]:
    assert redis.proc is not None
    redis.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        redis.proc.send_signal(signal.SIGCONT)


def assert_fast_503(url: str, headers: dict[str, str]) -> None:
    started = time.monotonic()
    r = httpx.get(url, headers=headers, timeout=60)
    elapsed = time.monotonic() - started
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "session_store_unavailable"
    assert elapsed < 2.0 + 0.5, f"{url} took {elapsed:.2f} s"  # BFF_REDIS_TIMEOUT + 0.5 s


def test_a_hung_redis_answers_503_within_the_redis_timeout_and_recovers(idp, upstream, tmp_path):
    """Redis accepts connections but answers nothing (SIGSTOP): /bff/user over real HTTP is a
    503 within BFF_REDIS_TIMEOUT + 0.5 s, and the same session works again after SIGCONT."""
    with bff_on_its_own_redis(idp, upstream, tmp_path) as (proc, redis):
        headers = signed_in(proc)
        with hung(redis):
            for path in ("/bff/user", "/api/echo"):
                assert_fast_503(f"{proc.url}{path}", headers)
        assert httpx.get(f"{proc.url}/bff/user", headers=headers, timeout=30).status_code == 200


def test_a_refresh_while_redis_hangs_answers_503_within_the_redis_timeout(idp, upstream, tmp_path):
    """The session is in the process's cache, its access token is due, and Redis hangs: the
    refresh lock cannot be taken, and the proxied call is a 503 within BFF_REDIS_TIMEOUT +
    0.5 s (not after the 30 s a request may wait for another process's refresh)."""
    idp.configure(access_ttl=0)
    with bff_on_its_own_redis(idp, upstream, tmp_path) as (proc, redis):
        headers = signed_in(proc, "/bff/user")  # now in the process's cache
        with hung(redis):
            assert_fast_503(f"{proc.url}/api/echo", headers)
        assert httpx.get(f"{proc.url}/api/echo", headers=headers, timeout=30).status_code == 200
