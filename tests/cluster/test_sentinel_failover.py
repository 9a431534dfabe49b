"""A Sentinel failover while logged-in browsers keep calling the BFF (a real process).

Two ways the master goes: ``SENTINEL FAILOVER`` (the replica is promoted, the old master is
demoted and keeps running: the BFF meets READONLY on its old connections), and the master
process killed (connections refused until the sentinels agree it is down and promote the
replica). Each run gets a Sentinel set-up of its own.

During the switch every answer is the right one for that browser, or a fast 503
``session_store_unavailable``; never another user's data, never a 401 or a 500. The
sessions survive (they were replicated before the switch), and once the sentinels name the
new master everything answers 200 again, without restarting the BFF.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support import BffProc, Browser, bff_env, free_port

pytestmark = pytest.mark.cluster

USERS = ("alice", "bob", "alice", "bob")
FAST = 5.0  # seconds: no request may take longer, even while the master is gone


@dataclass
class Call:
    browser: int
    path: str
    start: float
    end: float
    status: int
    body: Any


@dataclass
class Identity:
    sub: str
    sid: str  # the IdP session id: tells two sessions of one user apart


def _jwt_claims(authorization: str) -> dict[str, Any]:
    payload = authorization.removeprefix("Bearer ").split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def _check(call: Call, me: Identity) -> str | None:
    """What is wrong with this answer for this browser, or None."""
    if call.status == 503:
        if not isinstance(call.body, dict) or call.body.get("error") != "session_store_unavailable":
            return f"a 503 that is not session_store_unavailable: {call.body}"
        return None
    if call.status != 200:
        return f"status {call.status}: {call.body}"
    if call.path == "/bff/user":
        got = Identity(call.body["sub"], call.body["claims"]["sid"])
    else:
        claims = _jwt_claims(call.body["headers"]["authorization"][0])
        got = Identity(claims["sub"], claims["sid"])
    return None if got == me else f"another session's data: {got} instead of {me}"


async def _traffic(i: int, browser: Browser, stop: asyncio.Event, calls: list[Call]) -> None:
    n = 0
    while not stop.is_set():
        path = "/api/echo" if n % 2 else "/bff/user"
        n += 1
        start = time.monotonic()
        r = await browser.get(path, csrf=True)
        try:
            body = r.json()
        except ValueError:
            body = r.text
        calls.append(Call(i, path, start, time.monotonic(), r.status_code, body))
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("how", ["sentinel_failover", "master_killed"])
async def test_sessions_survive_a_failover_during_traffic(how, idp, upstream, sentinel_factory, tmp_path):
    setup = await asyncio.to_thread(sentinel_factory)
    port = free_port()
    env = bff_env(
        idp, setup.url, f"http://127.0.0.1:{port}", BFF_API_ROUTES=f"/api={upstream.url}", BFF_PORT=str(port)
    )
    bff = BffProc(env, log=tmp_path / "bff.log")
    bff.start()
    clients = [httpx.AsyncClient(timeout=30) for _ in USERS]  # one cookie-free client per browser
    browsers = [Browser(c, bff.url) for c in clients]
    try:
        identities = []
        for browser, user in zip(browsers, USERS, strict=True):
            await browser.login(user)
            r = await browser.get("/bff/user", csrf=True)
            identities.append(Identity(r.json()["sub"], r.json()["claims"]["sid"]))
        assert len({i.sid for i in identities}) == len(USERS)

        calls: list[Call] = []
        stop = asyncio.Event()
        workers = [asyncio.create_task(_traffic(i, b, stop, calls)) for i, b in enumerate(browsers)]
        try:
            await asyncio.sleep(0.5)
            # Every write so far (the logins, the sliding idle timeouts) is on the replica.
            await asyncio.to_thread(setup.wait_replicated)
            old = await asyncio.to_thread(setup.master_port)
            switch = time.monotonic()
            if how == "sentinel_failover":
                await asyncio.to_thread(setup.failover)
            else:
                await asyncio.to_thread(setup.server_on(old).kill)
            new = await asyncio.to_thread(setup.wait_new_master, old)
            switched = time.monotonic()
            assert new != old

            # Every browser is answered 200 on both paths again, by the same BFF process.
            deadline = switched + 20
            while time.monotonic() < deadline:
                ok = {(c.browser, c.path) for c in calls if c.start >= switched and c.status == 200}
                if len(ok) == 2 * len(browsers):
                    break
                await asyncio.sleep(0.05)
            recovered = time.monotonic()
            await asyncio.sleep(1.0)  # and keeps answering 200
        finally:
            stop.set()
            await asyncio.gather(*workers)

        problems = [
            f"{c.path} of browser {c.browser} at +{c.start - switch:.2f}s: {p}"
            for c in calls
            if (p := _check(c, identities[c.browser]))
        ]
        assert problems == []
        slow = [(c.path, round(c.end - c.start, 2)) for c in calls if c.end - c.start > FAST]
        assert slow == []
        late = [(c.browser, c.path, c.status) for c in calls if c.start >= recovered and c.status != 200]
        assert late == [], "not every answer is 200 again after the switch"
        during = [c for c in calls if switch <= c.start < recovered]
        after = [c for c in calls if c.start >= recovered]
        assert len(after) >= 20 and recovered - switched < 20
        print(
            f"\n{how}: master {old} -> {new} in {switched - switch:.1f}s; "
            f"{len(calls)} calls, {sum(c.status == 503 for c in during)} answered 503 "
            f"during the switch, all 200 again {recovered - switched:.1f}s after it"
        )

        # The sessions survived: each browser still has its own session (the replica had
        # them), its list of sessions is intact, and new logins work on the new master.
        for browser, me in zip(browsers, identities, strict=True):
            r = await browser.get("/bff/user", csrf=True)
            assert r.status_code == 200 and Identity(r.json()["sub"], r.json()["claims"]["sid"]) == me
            assert len((await browser.get("/bff/sessions", csrf=True)).json()["sessions"]) == 2
        clients.append(httpx.AsyncClient(timeout=30))
        newcomer = Browser(clients[-1], bff.url)
        browsers.append(newcomer)
        await newcomer.login("bob")
        assert (await newcomer.get("/api/echo", csrf=True)).status_code == 200
        assert (await newcomer.get("/readyz")).status_code == 200
        assert bff.proc is not None and bff.proc.poll() is None  # the same process throughout
    finally:
        for b in browsers:
            await b.aclose()
        for c in clients:
            await c.aclose()
        bff.stop()
