"""Soak test: many simulated users against real BFF processes for a bounded time.

    .venv/bin/python scripts/soak.py --minutes 10      (the default)
    .venv/bin/python scripts/soak.py --minutes 1       (a smoke run)

Everything runs on 127.0.0.1 and is started here: redis-server with AOF persistence
in a temporary folder, the test OIDC provider (tests/fakes/provider.py) with short
access tokens, the test upstream (tests/fakes/upstream.py) and one or more BFF
processes sharing that Redis. The script plays the users' browsers and a load
balancer: every request goes to a randomly chosen BFF process.

Each user (an asyncio task) logs in, then loops: /bff/user, /api/echo (sometimes three
at once), /bff/sessions, now and then POST /bff/logout followed by a new login, with a
small random think time. Access tokens live 20 s and BFF_TOKEN_REFRESH_SKEW is 5 s, so
refreshes happen all the time. Halfway through, redis-server is killed (SIGKILL), left
down for --redis-down seconds (3) and started again on the same port and data folder.

Checks (the exit code is 0 only when both pass):
  1. no session that Redis kept was lost: every session that answered /bff/user with
     200 just before the restart, and that its user did not log out, answers 200 again
     once Redis is back; and no request anywhere in the run got a 401 for a session
     that was neither logged out nor missing from Redis' data after the restart;
  2. no request got another user's data: the sub of /bff/user, the sub of the bearer
     token the upstream saw, and the sub of the id_token_hint in the logout redirect
     are always the requesting user's.

docs/soak.md explains the report.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402

from tests.fakes.provider import USERS  # noqa: E402
from tests.support import (  # noqa: E402
    BffProc,
    Browser,
    ProviderProc,
    RedisServer,
    UpstreamProc,
    bff_env,
    free_port,
)

ACCESS_TTL = 20  # seconds an access token lives at the test provider
REFRESH_SKEW = 5  # BFF_TOKEN_REFRESH_SKEW: refresh when fewer seconds are left
REQUEST_TIMEOUT = httpx.Timeout(45.0, connect=5.0)  # > the BFF's 30 s refresh-lock wait
RECOVERY_LIMIT = 30.0  # seconds after Redis is back within which kept sessions must answer 200
AFTER_BACK_WINDOW = 5.0  # errors this soon after Redis is back are attributed to the restart
SESSION_COOKIE = "bff_session"
KIND_ORDER = [
    "login_start",
    "idp_authorize",
    "login_callback",
    "user",
    "api",
    "sessions",
    "logout",
    "user_after_logout",
    "restart_probe",
    "restart_check",
]
EXPECTED = {
    "login_start": {302},
    "idp_authorize": {302},
    "login_callback": {302},
    "user": {200},
    "api": {200},
    "sessions": {200},
    "logout": {302},
    "user_after_logout": {401},
    "restart_probe": {200},
    "restart_check": {200},
}


def jwt_payload(token: str) -> dict[str, Any]:
    """The payload of a JWT, not verified: only to see whose token it is."""
    try:
        part = token.split(".")[1]
        return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))
    except (IndexError, ValueError):
        return {}


def short(session_id: str) -> str:
    """A short, harmless handle of a session id for the report."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:10]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# --- the processes --------------------------------------------------------------------


class Stack:
    """Redis, provider, upstream and the BFF processes; stop_all() is idempotent."""

    def __init__(self, work: Path, bffs: int, workers: int) -> None:
        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.data = work / "redis-data"
        self.data.mkdir()
        self.redis = RedisServer(
            extra=["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.data)]
        )
        self.redis.log = self.logs / "redis.log"
        self.provider = ProviderProc(log=self.logs / "provider.log")
        self.upstream = UpstreamProc()
        self.upstream.log = self.logs / "upstream.log"
        self.workers = workers
        self.ports = [free_port() for _ in range(bffs)]
        self.public_url = f"http://127.0.0.1:{self.ports[0]}"
        self.bffs: list[BffProc] = []
        self._started: list[Any] = []

    def start(self) -> None:
        self.redis.start()
        self._started.append(self.redis)
        self.provider.start()
        self._started.append(self.provider)
        self.provider.configure(access_ttl=ACCESS_TTL)
        self.upstream.start()
        self._started.append(self.upstream)
        for i, port in enumerate(self.ports):
            env = bff_env(
                self.provider,
                self.redis.url,
                self.public_url,
                BFF_PORT=str(port),
                BFF_API_ROUTES=f"/api={self.upstream.url}",
                BFF_TOKEN_REFRESH_SKEW=str(REFRESH_SKEW),
                BFF_WORKERS=str(self.workers),
                BFF_LOG_FORMAT="json",
                BFF_LOG_LEVEL="info",
            )
            bff = BffProc(env, log=self.logs / f"bff{i}.log")
            self.bffs.append(bff)
            bff.start()
            self._started.append(bff)

    def stop_all(self) -> None:
        while self._started:
            proc = self._started.pop()
            with contextlib.suppress(Exception):
                proc.stop()

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time of each process group still alive (a killed Redis' time is gone)."""
        groups = {"redis": self.redis, "provider": self.provider, "upstream": self.upstream}
        groups.update({f"bff{i}": b for i, b in enumerate(self.bffs)})
        pgids = {p.proc.pid: name for name, p in groups.items() if p.proc is not None}
        tick = os.sysconf("SC_CLK_TCK")
        totals: dict[str, float] = dict.fromkeys(groups, 0.0)
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                pgrp = int(fields[2])
                if pgrp in pgids:
                    totals[pgids[pgrp]] += (int(fields[11]) + int(fields[12])) / tick
        self_times = os.times()
        totals["soak driver"] = self_times.user + self_times.system
        return totals


# --- what happened --------------------------------------------------------------------


@dataclass
class Sess:
    id: str
    cookie: str
    user: str
    created: float  # run time when the login completed
    logout_at: float | None = None  # run time the first logout of it was sent


@dataclass
class Problem:
    what: str
    t: float
    user: str
    kind: str
    backend: str
    request_id: str
    detail: str

    def describe(self) -> str:
        return (
            f"{self.user} {self.kind} at {self.t:.1f} s via {self.backend}: {self.detail} "
            f"(request id {self.request_id})"
        )


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    mismatches: list[Problem] = field(default_factory=list)
    lost: list[tuple[Problem, Sess]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # 5xx outside the restart, timeouts, ...
    anomalies: Counter[str] = field(default_factory=Counter)
    anomaly_samples: list[Problem] = field(default_factory=list)
    checked: Counter[str] = field(default_factory=Counter)  # identity checks made, by kind
    tokens_seen: set[str] = field(default_factory=set)  # jti of bearer tokens the upstream saw
    min_token_life: float = math.inf
    logins: int = 0
    logouts: int = 0
    last_restart_error: float | None = None


class SimUser:
    def __init__(self, name: str, index: int, public_url: str, seed: int) -> None:
        self.name = name
        self.sub = str(USERS[name]["sub"])
        self.rng = random.Random(seed * 1000 + index)
        self.client = httpx.AsyncClient(timeout=REQUEST_TIMEOUT)
        self.browser = Browser(self.client, public_url)
        self.session: Sess | None = None
        self.seq = 0

    async def aclose(self) -> None:
        await self.browser.aclose()
        await self.client.aclose()


class Soak:
    def __init__(self, args: argparse.Namespace, stack: Stack) -> None:
        self.args = args
        self.stack = stack
        self.backends = [b.url for b in stack.bffs]
        self.public_url = stack.public_url
        self.duration = args.minutes * 60.0
        self.stats = Stats()
        self.stop = asyncio.Event()
        self.interrupted = False
        self.capped = False
        self.t0 = time.monotonic()
        self.t_kill: float | None = None
        self.t_ready: float | None = None
        self.t_probe: float | None = None
        self.restart: dict[str, Any] = {}
        self.kept_ids: set[str] | None = None  # session ids in Redis' data after the kill
        self.live_before: list[Sess] = []
        self.recovery: dict[str, tuple[str, float]] = {}  # session id -> (outcome, seconds after back)
        self.sessions: list[Sess] = []
        self.rng = random.Random(args.seed)
        names = [n for n in USERS if re.fullmatch(r"user\d\d", n)][: args.users]
        self.users = [SimUser(n, i, self.public_url, args.seed) for i, n in enumerate(names)]
        self.coordinator = httpx.AsyncClient(timeout=REQUEST_TIMEOUT)
        self.before: dict[str, Any] = {}
        self.after: dict[str, Any] = {}
        self.bff_metrics: dict[str, float] = {}
        self.t_end: float | None = None
        self.hung = 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def backend(self, rng: random.Random) -> str:
        return rng.choice(self.backends)

    # --- one request --------------------------------------------------------------------
    def window(self, start: float, end: float) -> str:
        if self.t_kill is None or end < self.t_kill:
            return ""
        ready = self.t_ready if self.t_ready is not None else math.inf
        if start <= ready:
            return "during Redis outage"
        if start <= ready + AFTER_BACK_WINDOW:
            return f"<= {AFTER_BACK_WINDOW:.0f} s after Redis was back"
        return ""

    async def call(
        self,
        kind: str,
        who: str,
        backend: str,
        send: Callable[[str], Awaitable[httpx.Response]],
    ) -> tuple[httpx.Response | None, str]:
        """Send one request, record its outcome. Returns the response (None on a transport
        error) and the outcome label."""
        if self.args.max_requests and sum(self.stats.requests.values()) >= self.args.max_requests:
            self.capped = True
            self.stop.set()
            return None, "capped"
        rid = f"soak-{who}-{kind}-{int(self.now() * 1000)}-{self.rng.randrange(16**6):06x}"
        start = self.now()
        self.stats.requests[kind] += 1
        try:
            response: httpx.Response | None = await send(rid)
        except httpx.TimeoutException as exc:
            response, label = None, f"timeout ({type(exc).__name__})"
        except httpx.ConnectError:
            response, label = None, "connection refused"
        except httpx.RemoteProtocolError:
            response, label = None, "connection closed without answer"
        except httpx.HTTPError as exc:
            response, label = None, type(exc).__name__
        end = self.now()
        self.stats.latency[kind].append(end - start)
        if response is not None:
            label = str(response.status_code)
            if response.status_code not in EXPECTED[kind]:
                with contextlib.suppress(ValueError, AttributeError):
                    code = response.json().get("error")
                    if code:
                        label = f"{response.status_code} {code}"
        self.stats.statuses[kind][label.split(" ")[0] if response is not None else "error"] += 1
        if response is None or response.status_code not in EXPECTED[kind]:
            window = self.window(start, end)
            # 401s are judged by the caller (expected after a logout, a lost session otherwise).
            if not (response is not None and response.status_code == 401):
                self.stats.errors[(kind, label + (f" [{window}]" if window else ""))] += 1
                if window:
                    self.stats.last_restart_error = max(self.stats.last_restart_error or 0.0, end)
                else:
                    self.stats.problems.append(
                        Problem("unexpected answer", start, who, kind, backend, rid, label)
                    )
        return response, rid

    def mismatch(self, u: SimUser, kind: str, backend: str, rid: str, got: object) -> None:
        self.stats.mismatches.append(
            Problem(
                "other user's data", self.now(), u.name, kind, backend, rid, f"expected {u.sub}, got {got!r}"
            )
        )

    def anomaly(self, what: str, u: SimUser, kind: str, backend: str, rid: str, detail: str) -> None:
        self.stats.anomalies[what] += 1
        if len(self.stats.anomaly_samples) < 20:
            self.stats.anomaly_samples.append(Problem(what, self.now(), u.name, kind, backend, rid, detail))

    def session_answer_401(self, u: SimUser, kind: str, backend: str, rid: str) -> None:
        """A 401 for the user's session: expected once a logout was sent, a loss otherwise."""
        s = u.session
        if s is None:
            return
        if s.logout_at is None:
            window = self.window(self.now(), self.now())
            self.stats.errors[(kind, "401 session lost" + (f" [{window}]" if window else ""))] += 1
            self.stats.lost.append((Problem("session lost", self.now(), u.name, kind, backend, rid, ""), s))
        u.session = None
        u.browser.cookies.pop(SESSION_COOKIE, None)

    # --- user actions -------------------------------------------------------------------
    async def login(self, u: SimUser) -> bool:
        b1 = self.backend(u.rng)
        r, rid = await self.call(
            "login_start",
            u.name,
            b1,
            lambda rid: u.browser.request(
                "GET", f"{b1}/bff/login?returnTo=/app", headers={"x-request-id": rid}
            ),
        )
        if r is None or r.status_code != 302:
            return False
        location = r.headers["location"]
        r, rid = await self.call(
            "idp_authorize", u.name, "idp", lambda rid: u.browser.authorize(location, u.name)
        )
        if r is None or r.status_code != 302:
            return False
        callback = urlsplit(r.headers["location"])
        b2 = self.backend(u.rng)
        target = f"{b2}{callback.path}?{callback.query}"
        r, rid = await self.call(
            "login_callback",
            u.name,
            b2,
            lambda rid: u.browser.request("GET", target, headers={"x-request-id": rid}),
        )
        if r is None or r.status_code != 302:
            return False
        if r.headers.get("location") != f"{self.public_url}/app":
            self.anomaly("callback redirected elsewhere", u, "login_callback", b2, rid, r.headers["location"])
        cookie = u.browser.cookies.get(SESSION_COOKIE)
        if not cookie:
            self.anomaly("callback set no session cookie", u, "login_callback", b2, rid, "")
            return False
        u.session = Sess(cookie.rsplit(".", 1)[0], cookie, u.name, self.now())
        self.sessions.append(u.session)
        self.stats.logins += 1
        await self.get_user(u)
        return True

    async def xhr(self, kind: str, u: SimUser, path: str) -> tuple[httpx.Response | None, str, str]:
        """GET ``path`` as the SPA would, on a random BFF: the answer when it is a 200, else
        None (call() counts every answer; a 401 for a live session is recorded here)."""
        b = self.backend(u.rng)
        r, rid = await self.call(
            kind,
            u.name,
            b,
            lambda rid: u.browser.request("GET", f"{b}{path}", csrf=True, headers={"x-request-id": rid}),
        )
        if r is not None and r.status_code == 401:
            self.session_answer_401(u, kind, b, rid)
        if r is None or r.status_code != 200:
            return None, b, rid
        return r, b, rid

    async def get_user(self, u: SimUser) -> None:
        r, b, rid = await self.xhr("user", u, "/bff/user")
        if r is not None:
            self.stats.checked["user"] += 1
            sub = r.json().get("sub")
            if sub != u.sub:
                self.mismatch(u, "user", b, rid, sub)

    async def api(self, u: SimUser) -> None:
        nonce = f"{u.rng.randrange(16**8):08x}"
        r, b, rid = await self.xhr("api", u, f"/api/echo?n={nonce}")
        if r is None:
            return
        echo = r.json()
        self.stats.checked["api"] += 1
        if echo.get("query") != f"n={nonce}":
            self.mismatch(u, "api (echo of another request)", b, rid, echo.get("query"))
        auth = (echo.get("headers", {}).get("authorization") or [""])[0]
        if not auth.startswith("Bearer "):
            self.anomaly("no bearer token at the upstream", u, "api", b, rid, auth[:20])
            return
        claims = jwt_payload(auth[7:])
        if claims.get("sub") != u.sub:
            self.mismatch(u, "api (bearer token)", b, rid, claims.get("sub"))
        self.stats.tokens_seen.add(str(claims.get("jti")))
        life = float(claims.get("exp", 0)) - time.time()
        self.stats.min_token_life = min(self.stats.min_token_life, life)
        if life < 0:
            self.anomaly("expired access token forwarded", u, "api", b, rid, f"{life:.1f} s left")
        cookies = " ".join(echo.get("headers", {}).get("cookie") or [])
        if "bff_session" in cookies or "bff_login" in cookies:
            self.anomaly("BFF cookie forwarded to the upstream", u, "api", b, rid, "")

    async def list_sessions(self, u: SimUser) -> None:
        r, b, rid = await self.xhr("sessions", u, "/bff/sessions")
        if r is None:
            return
        listed = r.json().get("sessions", [])
        current = sum(1 for s in listed if s.get("current"))
        if current != 1:
            self.anomaly("sessions list without exactly one current", u, "sessions", b, rid, f"{current}")
        if len(listed) > 1:
            self.anomaly("user has more than one session", u, "sessions", b, rid, f"{len(listed)} listed")

    async def logout(self, u: SimUser) -> None:
        s = u.session
        if s is None:
            return
        if s.logout_at is None:
            s.logout_at = self.now()
        b = self.backend(u.rng)
        r, rid = await self.call(
            "logout",
            u.name,
            b,
            lambda rid: u.browser.request(
                "POST", f"{b}/bff/logout", csrf=True, headers={"x-request-id": rid}
            ),
        )
        if r is None or r.status_code != 302:
            # Not known to be ended: the user keeps the cookie; a later 401 for it is fine.
            return
        self.stats.logouts += 1
        location = r.headers.get("location", "")
        hint = parse_qs(urlsplit(location).query).get("id_token_hint", [""])[0]
        if hint:
            self.stats.checked["logout"] += 1
            sub = jwt_payload(hint).get("sub")
            if sub != u.sub:
                self.mismatch(u, "logout (id_token_hint)", b, rid, sub)
        if SESSION_COOKIE in u.browser.cookies:
            self.anomaly("logout kept the session cookie", u, "logout", b, rid, "")
            u.browser.cookies.pop(SESSION_COOKIE, None)
        u.session = None
        # The old cookie must be dead now, on every BFF process.
        b2 = self.backend(u.rng)
        r, rid = await self.call(
            "user_after_logout",
            u.name,
            b2,
            lambda rid: self.coordinator.get(
                f"{b2}/bff/user",
                headers={"x-csrf": "1", "cookie": f"{SESSION_COOKIE}={s.cookie}", "x-request-id": rid},
            ),
        )
        if r is not None and r.status_code == 200:
            self.anomaly("logged-out session still answers 200", u, "user_after_logout", b2, rid, "")

    async def user_loop(self, u: SimUser, deadline: float) -> None:
        await asyncio.sleep(u.rng.uniform(0, min(5.0, self.duration / 10)))
        failures = 0
        while not self.stop.is_set() and self.now() < deadline:
            if u.session is None:
                if await self.login(u):
                    failures = 0
                else:
                    failures += 1
                    await asyncio.sleep(min(5.0, 0.5 * failures) + u.rng.uniform(0, 0.5))
                    continue
            else:
                action = u.rng.choices(
                    ["user", "api", "burst", "sessions", "logout"],
                    weights=[25, 45, 10, 10, self.args.logout_weight],
                )[0]
                if action == "user":
                    await self.get_user(u)
                elif action == "api":
                    await self.api(u)
                elif action == "burst":  # an SPA firing three calls at once
                    await asyncio.gather(self.api(u), self.api(u), self.api(u))
                elif action == "sessions":
                    await self.list_sessions(u)
                else:
                    await self.logout(u)
            await asyncio.sleep(u.rng.uniform(self.args.think_min, self.args.think_max))

    # --- the Redis restart --------------------------------------------------------------
    async def probe(self, s: Sess, kind: str) -> tuple[httpx.Response | None, str, str]:
        b = self.backend(self.rng)
        r, rid = await self.call(
            kind,
            s.user,
            b,
            lambda rid: self.coordinator.get(
                f"{b}/bff/user",
                headers={"x-csrf": "1", "cookie": f"{SESSION_COOKIE}={s.cookie}", "x-request-id": rid},
            ),
        )
        return r, rid, b

    async def check_identity(self, s: Sess, r: httpx.Response, kind: str, b: str, rid: str) -> None:
        self.stats.checked[kind] += 1
        expected = str(USERS[s.user]["sub"])
        sub = r.json().get("sub")
        if sub != expected:
            self.stats.mismatches.append(
                Problem(
                    "other user's data", self.now(), s.user, kind, b, rid, f"expected {expected}, got {sub!r}"
                )
            )

    async def restart_redis(self, at: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=max(0.0, at - self.now()))
        if self.stop.is_set():
            return
        stack = self.stack
        # 1. Which sessions are live right now?
        self.t_probe = self.now()
        candidates = [u.session for u in self.users if u.session is not None and u.session.logout_at is None]
        answers = await asyncio.gather(*(self.probe(s, "restart_probe") for s in candidates))
        for s, (r, rid, b) in zip(candidates, answers, strict=True):
            if r is not None and r.status_code == 200:
                await self.check_identity(s, r, "restart_probe", b, rid)
                self.live_before.append(s)
            elif r is not None and r.status_code == 401 and s.logout_at is None:
                self.stats.lost.append(
                    (Problem("session lost", self.now(), s.user, "restart_probe", b, rid, ""), s)
                )
        # 2. Kill redis-server, keep a copy of what it left on disk, start it again.
        self.t_kill = self.now()
        await asyncio.to_thread(stack.redis.kill)
        copy = stack.work / "redis-data-at-kill"
        await asyncio.to_thread(shutil.copytree, stack.data, copy)
        await asyncio.sleep(max(0.0, self.t_kill + self.args.redis_down - self.now()))
        await asyncio.to_thread(stack.redis.start)
        self.restart["port_open"] = self.now() - self.t_kill
        client = aioredis.Redis(port=stack.redis.port, socket_timeout=5)
        while True:
            try:
                await client.ping()
                break
            except aioredis.BusyLoadingError:
                await asyncio.sleep(0.05)
        await client.aclose()
        self.t_ready = self.now()
        # 3. What did Redis keep? Read the copy with a second, private redis-server.
        self.kept_ids = await self.read_kept(copy)
        # 4. Every session live before the kill must answer 200 again.
        await asyncio.gather(*(self.recover(s) for s in self.live_before))

    async def read_kept(self, folder: Path) -> set[str]:
        probe = RedisServer(extra=["--appendonly", "yes", "--dir", str(folder)])
        probe.log = self.stack.logs / "redis-probe.log"
        await asyncio.to_thread(probe.start)
        try:
            client = aioredis.Redis(port=probe.port, socket_timeout=10)
            while True:
                try:
                    await client.ping()
                    break
                except aioredis.BusyLoadingError:
                    await asyncio.sleep(0.05)
            kept = {k.decode()[len("bff:s:") :] async for k in client.scan_iter(match="bff:s:*", count=1000)}
            await client.aclose()
            return kept
        finally:
            await asyncio.to_thread(probe.stop)

    async def recover(self, s: Sess) -> None:
        assert self.t_ready is not None
        while True:
            r, rid, b = await self.probe(s, "restart_check")
            after = self.now() - self.t_ready
            if r is not None and r.status_code == 200:
                await self.check_identity(s, r, "restart_check", b, rid)
                self.recovery[s.id] = ("200", after)
                return
            if r is not None and r.status_code == 401:
                self.recovery[s.id] = (f"401 (request {rid} to {b})", after)
                return
            if after > RECOVERY_LIMIT:
                status = "no answer" if r is None else str(r.status_code)
                self.recovery[s.id] = (f"still {status} after {RECOVERY_LIMIT:.0f} s (last {rid})", after)
                return
            await asyncio.sleep(0.25)

    # --- the run ------------------------------------------------------------------------
    async def metrics(self) -> dict[str, float]:
        totals: dict[str, float] = defaultdict(float)
        for url in self.backends:
            with contextlib.suppress(httpx.HTTPError):
                text = (await self.coordinator.get(f"{url}/metrics")).text
                for line in text.splitlines():
                    if line.startswith("bff_") and "_created" not in line.split(" ")[0]:
                        name, _, value = line.rpartition(" ")
                        with contextlib.suppress(ValueError):
                            totals[name] += float(value)
        return totals

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        main_task = asyncio.current_task()

        def on_signal() -> None:
            if self.stop.is_set() and main_task is not None:
                main_task.cancel()  # a second Ctrl-C: stop waiting for the users
            self.interrupted = True
            self.stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, on_signal)
        self.before = await asyncio.to_thread(self.stack.provider.stats)
        self.t0 = time.monotonic()
        deadline = self.duration
        tasks = [asyncio.create_task(self.user_loop(u, deadline)) for u in self.users]
        restart = (
            asyncio.create_task(self.restart_redis(self.duration * self.args.restart_at))
            if self.args.restart_at > 0
            else None
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=deadline)
        self.stop.set()
        self.t_end = self.now()
        # Users finish their current action; a hang beyond the request timeout is a finding.
        done, pending = await asyncio.wait([*tasks, *([restart] if restart else [])], timeout=120)
        self.hung = len(pending)
        for t in pending:
            t.cancel()
        for t in done:
            if t.exception() is not None:
                exc = t.exception()
                self.stats.problems.append(
                    Problem(
                        "driver task crashed", self.now(), "-", "-", "-", "-", f"{type(exc).__name__}: {exc}"
                    )
                )
        self.t_end = self.now()
        self.after = await asyncio.to_thread(self.stack.provider.stats)
        self.bff_metrics = await self.metrics()
        for u in self.users:
            await u.aclose()
        await self.coordinator.aclose()

    # --- the report ---------------------------------------------------------------------
    def judge(self) -> tuple[bool, list[str], bool, list[str]]:
        kept = self.kept_ids
        lines1: list[str] = []
        failures1 = 0
        excused = 0
        if self.args.restart_at <= 0:
            lines1.append("no Redis restart in this run (--restart-at 0)")
        elif self.t_kill is None:
            lines1.append("the run ended before the Redis restart")
            failures1 += 1
        else:
            ok = 0
            for s in self.live_before:
                outcome, after = self.recovery.get(s.id, ("not checked (run ended)", math.nan))
                logged_out = s.logout_at is not None and s.logout_at >= (self.t_probe or 0)
                if outcome == "200":
                    ok += 1
                elif logged_out:
                    excused += 1
                elif outcome.startswith("401") and kept is not None and s.id not in kept:
                    excused += 1
                    lines1.append(
                        f"  {s.user} session {short(s.id)}: 401, but Redis did not keep it (not in AOF)"
                    )
                else:
                    failures1 += 1
                    in_aof = (
                        "kept in Redis' data" if kept is not None and s.id in kept else "not in Redis' data"
                    )
                    lines1.append(
                        f"  FAIL {s.user} session {short(s.id)} ({in_aof}): {outcome}, "
                        f"{after:.1f} s after Redis was back"
                    )
            times = [a for o, a in self.recovery.values() if o == "200"]
            lines1.insert(
                0,
                f"{len(self.live_before)} sessions live before the restart; {ok} answered 200 after it"
                + (f" (the last {max(times):.1f} s after Redis was back)" if times else "")
                + (f"; {excused} excused (logged out meanwhile or not kept by Redis)" if excused else ""),
            )
        for p, s in self.stats.lost:
            not_kept = (
                kept is not None
                and self.t_kill is not None
                and s.created < self.t_kill
                and p.t >= self.t_kill
                and s.id not in kept
            )
            if not_kept:
                lines1.append(
                    f"  {p.user} session {short(s.id)}: 401 at {p.t:.1f} s, not kept by Redis (excused)"
                )
                continue
            failures1 += 1
            in_aof = ""
            if kept is not None and s.created < (self.t_kill or 0):
                in_aof = ", kept in Redis' data" if s.id in kept else ", not in Redis' data"
            lines1.append(
                f"  FAIL {p.user} session {short(s.id)} (logged in at {s.created:.1f} s{in_aof}): "
                f"401 on {p.kind} at {p.t:.1f} s via {p.backend}, request id {p.request_id}"
            )
        lost_count = len(self.stats.lost)
        lines1.insert(
            1 if lines1 else 0,
            f"unexpected 401s (session gone without a logout) in the whole run: {lost_count}",
        )
        checked = sum(self.stats.checked.values())
        lines2 = [
            f"{checked} answers checked "
            f"({', '.join(f'{k} {v}' for k, v in sorted(self.stats.checked.items()))}); "
            f"{len(self.stats.mismatches)} with another user's data"
        ]
        for p in self.stats.mismatches[:20]:
            lines2.append(f"  FAIL {p.describe()}")
        return failures1 == 0, lines1, not self.stats.mismatches, lines2

    def log_lines(self, request_ids: list[str], limit: int = 8) -> list[str]:
        wanted = set(request_ids)
        found: list[str] = []
        for log in sorted(self.stack.logs.glob("bff*.log")):
            with contextlib.suppress(OSError), open(log, errors="replace") as f:
                for line in f:
                    if any(rid in line for rid in wanted):
                        found.append(f"    {log.name}: {line.rstrip()[:400]}")
                        if len(found) >= limit:
                            return found
        return found

    def bff_log_summary(self) -> list[str]:
        levels: Counter[str] = Counter()
        events: Counter[str] = Counter()
        samples: dict[str, str] = {}
        for log in sorted(self.stack.logs.glob("bff*.log")):
            with contextlib.suppress(OSError), open(log, errors="replace") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        if line.strip():
                            levels["non-JSON line"] += 1
                            samples.setdefault("non-JSON line", line.rstrip()[:300])
                        continue
                    level = str(rec.get("level", "?")).upper()
                    if rec.get("event") in ("session_ended", "refresh_failed", "login_failed"):
                        events[f"{rec['event']}: {rec.get('reason') or rec.get('error') or ''}"] += 1
                    if level in ("WARNING", "ERROR", "CRITICAL"):
                        code = f" ({rec['code']})" if rec.get("code") else ""
                        key = f"{level} {rec.get('logger', '')}: {rec.get('msg', '')}{code}"
                        levels[key] += 1
                        samples.setdefault(key, f"{log.name}: {line.rstrip()[:300]}")
        out = [f"  {n:6d}  {key}" for key, n in levels.most_common(15)]
        if events:
            out.append("  audit events (sessions ended, refresh and login failures) by reason:")
            out.extend(f"  {n:6d}  {key}" for key, n in events.most_common(15))
        return out

    def report(self) -> tuple[str, int]:
        st = self.stats
        out: list[str] = []
        w = out.append
        ok1, lines1, ok2, lines2 = self.judge()
        total = sum(st.requests.values())
        if self.t_end is None:
            self.t_end = self.now()
        w("=" * 78)
        w("bff soak report")
        w("=" * 78)
        planned = f"{self.duration:.0f} s planned"
        why = " (INTERRUPTED)" if self.interrupted else " (stopped at --max-requests)" if self.capped else ""
        w(f"duration:      {self.t_end:.1f} s ({planned}){why}")
        w(
            f"set-up:        {len(self.users)} users, {len(self.backends)} BFF process(es) x "
            f"BFF_WORKERS={self.stack.workers}, one Redis (AOF everysec), access tokens {ACCESS_TTL} s, "
            f"BFF_TOKEN_REFRESH_SKEW={REFRESH_SKEW}"
        )
        w(
            f"requests:      {total} ({total / max(self.t_end, 1e-9):.1f}/s); "
            f"logins {st.logins}, logouts {st.logouts}"
        )
        if self.t_kill is not None:
            down = (self.t_ready or math.nan) - self.t_kill
            kept = len(self.kept_ids) if self.kept_ids is not None else "?"
            last = (
                f"{st.last_restart_error - (self.t_ready or 0):+.1f} s"
                if st.last_restart_error is not None
                else "none"
            )
            w(
                f"redis restart: SIGKILL at {self.t_kill:.1f} s, down for {self.args.redis_down:g} s, "
                f"answering {down:.2f} s after the kill; "
                f"{kept} session keys in its data at the kill; "
                f"last restart-related error at {last} from Redis back"
            )
        w("")
        w("requests by kind and status (error = no HTTP answer):")
        statuses = sorted({s for c in st.statuses.values() for s in c}, key=lambda s: (s == "error", s))
        header = (
            f"  {'kind':<18}{'total':>8}"
            + "".join(f"{s:>7}" for s in statuses)
            + f"{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}"
        )
        w(header)
        for kind in [k for k in KIND_ORDER if k in st.requests]:
            lat = st.latency[kind]
            row = f"  {kind:<18}{st.requests[kind]:>8}" + "".join(
                f"{st.statuses[kind].get(s, 0) or '':>7}" for s in statuses
            )
            row += "".join(
                f"{v * 1000:>9.0f}" for v in (percentile(lat, 0.5), percentile(lat, 0.95), max(lat))
            )
            w(row)
        w("")
        w("errors by kind (unexpected answers; [..] = attributed to the Redis restart):")
        if not st.errors:
            w("  none")
        for (kind, label), n in sorted(st.errors.items(), key=lambda x: (KIND_ORDER.index(x[0][0]), -x[1])):
            w(f"  {kind:<18}{n:>6}  {label}")
        w("")
        before, after = self.before.get("stats", {}), self.after.get("stats", {})
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        w(
            f"provider:      refresh_token grants {delta.get('refresh_token', 0)}, "
            f"authorization_code grants {delta.get('authorization_code', 0)}, "
            f"revocations {delta.get('revocation', 0)}"
        )
        refresh = {
            k.split('outcome="')[1].rstrip('"}'): int(v)
            for k, v in self.bff_metrics.items()
            if k.startswith("bff_token_refreshes_total{")
        }
        w(
            f"BFF refreshes: {', '.join(f'{k} {v}' for k, v in sorted(refresh.items())) or 'none'} "
            "(from /metrics)"
        )
        store_errors = int(self.bff_metrics.get("bff_session_store_errors_total", 0))
        w(f"BFF store errors (Redis failures counted by the BFF): {store_errors}")
        life = f"{st.min_token_life:.1f} s" if st.min_token_life != math.inf else "-"
        w(
            f"upstream saw:  {len(st.tokens_seen)} distinct access tokens; "
            f"least remaining lifetime seen {life}"
        )
        cpu = self.stack.cpu_seconds()
        w("CPU seconds:   " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()))
        if st.anomalies:
            w("")
            w("other findings (not part of the two checks):")
            for what, n in st.anomalies.most_common():
                w(f"  {n:6d}  {what}")
            for p in st.anomaly_samples[:10]:
                w(f"    e.g. {p.describe()}")
        if st.problems:
            w("")
            w(
                f"unexpected answers outside the Redis restart: {len(st.problems)} "
                "(first ones, with BFF log lines)"
            )
            for p in st.problems[:10]:
                w(f"  {p.describe()}")
                w("\n".join(self.log_lines([p.request_id], 4)))
        if getattr(self, "hung", 0):
            w(f"\n{self.hung} user task(s) still busy 120 s after the end: a hang")
        summary = self.bff_log_summary()
        if summary:
            w("")
            w("BFF log, warnings and errors by message:")
            out.extend(summary)
        w("")
        w(f"CHECK 1 no session that Redis kept was lost: {'PASS' if ok1 else 'FAIL'}")
        out.extend(f"  {line}" for line in lines1)
        failed_ids = [p.request_id for p, _ in st.lost][:5]
        if failed_ids and not ok1:
            w("  BFF log lines of the first failing requests:")
            out.extend(self.log_lines(failed_ids, 10))
        w(f"CHECK 2 no request got another user's data: {'PASS' if ok2 else 'FAIL'}")
        out.extend(f"  {line}" for line in lines2)
        if not ok2:
            out.extend(self.log_lines([p.request_id for p in st.mismatches[:5]], 10))
        code = 0 if ok1 and ok2 and not self.interrupted else (130 if self.interrupted else 1)
        w(
            f"exit code {code}; logs and Redis data in {self.stack.work}"
            if self.args.keep or code
            else f"exit code {code}"
        )
        return "\n".join(out), code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run (default 10)")
    parser.add_argument("--users", type=int, default=20, help="simulated users, at most 20 (default 20)")
    parser.add_argument("--bffs", type=int, default=2, help="BFF processes on the one Redis (default 2)")
    parser.add_argument("--workers", type=int, default=1, help="BFF_WORKERS of each BFF process (default 1)")
    parser.add_argument("--think-min", type=float, default=0.2, help="least think time, seconds")
    parser.add_argument("--think-max", type=float, default=1.2, help="most think time, seconds")
    parser.add_argument(
        "--logout-weight", type=float, default=2.0, help="weight of logout among actions (of ~92)"
    )
    parser.add_argument(
        "--restart-at",
        type=float,
        default=0.5,
        help="when to restart Redis, as a fraction of the run (0: never)",
    )
    parser.add_argument(
        "--redis-down", type=float, default=3.0, help="seconds Redis stays down at the restart (default 3)"
    )
    parser.add_argument("--max-requests", type=int, default=300_000, help="stop after this many requests")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep logs and Redis data even when all passes")
    args = parser.parse_args()
    if not 0 < args.minutes <= 120:
        parser.error("--minutes must be above 0 and at most 120")
    available = sum(1 for n in USERS if re.fullmatch(r"user\d\d", n))
    if not 1 <= args.users <= available:
        parser.error(f"--users must be between 1 and {available}")
    if not 1 <= args.bffs <= 4 or not 1 <= args.workers <= 4:
        parser.error("--bffs and --workers must be between 1 and 4")
    if not 0 <= args.redis_down <= 60:
        parser.error("--redis-down must be between 0 and 60 seconds")
    if not 0 <= args.think_min <= args.think_max:
        parser.error("--think-min must be between 0 and --think-max")

    work = Path(tempfile.mkdtemp(prefix="bff-soak-"))
    stack = Stack(work, args.bffs, args.workers)
    atexit.register(stack.stop_all)
    code = 1
    try:
        print(
            f"starting Redis, provider, upstream and {args.bffs} BFF process(es); work folder {work}",
            flush=True,
        )
        stack.start()
        print(
            f"running {len(stack.bffs)} BFF(s) at {', '.join(b.url for b in stack.bffs)} "
            f"with {args.users} users "
            f"for {args.minutes:g} min; Ctrl-C stops early and still reports",
            flush=True,
        )
        soak = Soak(args, stack)
        try:
            asyncio.run(soak.main())
        except (KeyboardInterrupt, asyncio.CancelledError):
            soak.interrupted = True
        text, code = soak.report()
        print(text, flush=True)
        with contextlib.suppress(OSError):
            (work / "report.txt").write_text(text + "\n")
    except KeyboardInterrupt:
        code = 130
    finally:
        stack.stop_all()
        if code == 0 and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
