"""The benchmark suite: every figure as a ratio against a baseline measured in the same run.

    .venv/bin/python bench/run.py                 # everything (~8 minutes)
    .venv/bin/python bench/run.py proxy storm     # some sections
    .venv/bin/python bench/run.py --duration 5    # shorter wrk runs

Sections: proxy (direct, oauth2-proxy and the BFF with 1 process and 2 workers side by side:
req/s, p50/p99, CPU per request of each process tree, p99 at half load), embedded (the BFF
inside the example FastAPI app vs the gateway), dpop (DPoP-bound vs bearer tokens), websocket
(echo round trips and message rate vs direct), dbsc (a device-bound session vs DBSC off),
revocation (a logout on one process seen by another that cached the session), clients (the
BFF's own upstream client vs aiohttp, httpx and httpx-aiohttp on the forwarding path), login
(full login round trips per second vs the provider alone, CPU per login of each
participant), storm (200 concurrent calls on due tokens over 2 processes: token requests per
session), memory (Redis bytes per session vs the raw tokens; memory of 100k sessions).

Everything runs on this machine: wrk, Redis, the test provider, the upstream and the
BFF share the cores, so compare figures within one run only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bff.session.crypto import RecordCipher  # noqa: E402
from bff.session.models import Session, new_session_id  # noqa: E402
from bff.session.redis_store import RedisStore, connect  # noqa: E402
from tests.support import (  # noqa: E402
    SECRET,
    BffProc,
    Browser,
    Proc,
    ProviderProc,
    RedisServer,
    UpstreamProc,
    bff_env,
    free_port,
)

DURATION = 10
CONNECTIONS = 32
THREADS = int(os.environ.get("BENCH_WRK_THREADS", "1"))


def log(text: str = "") -> None:
    print(text, flush=True)


# --- measurement helpers ----------------------------------------------------------
def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(
    url: str,
    headers: dict[str, str] | None = None,
    connections: int = CONNECTIONS,
    duration: int | None = None,
    delay_ms: float | None = None,
) -> dict[str, float]:
    """Run wrk; return rps, p50, p99 (ms) and the request count."""
    args = ["wrk", f"-t{THREADS}", f"-c{connections}", f"-d{duration or DURATION}s", "--latency"]
    for k, v in (headers or {}).items():
        args += ["-H", f"{k}: {v}"]
    script = None
    if delay_ms is not None:
        script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)  # noqa: SIM115
        script.write(f"function delay() return {max(round(delay_ms), 0)} end\n")
        script.close()
        args += ["-s", script.name]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk's own CPU: it was waited for
    wrk_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if script:
        os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "p50": p50,
        "p99": p99,
        "requests": total,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "errors": bool(errors),
        "cpu_wrk_us": wrk_cpu / total * 1e6,
    }


def tree_pids(pid: int) -> list[int]:
    """A process and its descendants (uvicorn workers)."""
    pids = [pid]
    with contextlib.suppress(FileNotFoundError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            pids += tree_pids(int(child))
    return pids


def cpu_seconds(pid: int) -> float:
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for p in tree_pids(pid):
        with contextlib.suppress(FileNotFoundError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def fmt(r: dict[str, float]) -> str:
    return f"{r['rps']:8.0f} req/s   p50 {r['p50']:6.2f} ms   p99 {r['p99']:6.2f} ms"


# --- the stack ---------------------------------------------------------------------
class Stack:
    def __init__(self) -> None:
        self.redis = RedisServer()
        self.provider = ProviderProc()
        self.upstream = UpstreamProc()
        self.procs: list[Proc] = []

    def __enter__(self) -> Stack:
        for p in (self.redis, self.provider, self.upstream):
            p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for p in [*self.procs, self.upstream, self.provider, self.redis]:
            p.stop()

    def bff(self, port: int | None = None, public: str | None = None, **extra: str) -> BffProc:
        port = port or free_port()
        public = public or f"http://127.0.0.1:{port}"
        env = bff_env(
            self.provider,
            self.redis.url,
            public,
            BFF_API_ROUTES=f"/api={self.upstream.url}",
            BFF_PORT=str(port),
            **extra,
        )
        proc = BffProc(env)
        proc.start()
        self.procs.append(proc)
        return proc

    def stop(self, proc: BffProc) -> None:
        proc.stop()
        self.procs.remove(proc)


async def login(url: str, user: str = "alice", public: str | None = None) -> str:
    async with httpx.AsyncClient(timeout=30) as client:
        browser = Browser(client, public or url)
        browser.public_url = url
        await browser.login(user)
        await browser.aclose()
        return browser._cookie_header()["cookie"]


# --- sections ----------------------------------------------------------------------
def _loaded(stack: Stack, url: str, headers: dict[str, str], pid: int) -> dict[str, float]:
    """One wrk run after a warm-up, with the CPU each process tree took per request: the
    proxy measured (all its workers), the upstream and Redis."""
    wrk(url, headers, duration=2)  # warm-up: pools, caches
    others = {"upstream": stack.upstream.proc, "redis": stack.redis.proc}
    pids = {"proxy": pid, **{k: p.pid for k, p in others.items() if p is not None}}
    before = {k: cpu_seconds(v) for k, v in pids.items()}
    r = wrk(url, headers)
    for k, v in pids.items():
        r[f"cpu_{k}_us"] = (cpu_seconds(v) - before[k]) / r["requests"] * 1e6
    r["cpu_us"] = r["cpu_proxy_us"]
    return r


def _half_load(url: str, headers: dict[str, str], full_rps: float) -> dict[str, float]:
    """p50/p99 at about half the full load. wrk paces each connection by a delay between a
    response and the next request, so the rate is conns / (delay + latency): a short probe
    measures the latency at that pace, the real run subtracts it."""
    period = CONNECTIONS / (full_rps / 2) * 1000
    probe = wrk(url, headers, delay_ms=period, duration=3)
    latency = max(CONNECTIONS / probe["rps"] * 1000 - period, 0.0)
    return wrk(url, headers, delay_ms=period - latency)


def _row(name: str, r: dict[str, float]) -> str:
    cpu = f"{r['cpu_us']:6.0f}" if "cpu_us" in r else "     -"
    return (
        f"  {name:<16}{r['rps']:8.0f} {r['p50']:7.2f} {r['p99']:7.2f}  {cpu}"
        f"  {r.get('cpu_upstream_us', 0):6.0f}  {r.get('cpu_redis_us', 0):6.0f}  {r['cpu_wrk_us']:5.0f}"
        f"   {r['non2xx']}"
    )


def section_proxy(stack: Stack, results: dict[str, Any]) -> None:
    """Straight to the upstream, through oauth2-proxy (configured like the BFF, see
    bench/oauth2_proxy.py) and through the BFF with one process and with BFF_WORKERS=2, in
    one run, side by side."""
    from bench import oauth2_proxy

    log(
        f"== proxy: direct vs oauth2-proxy {oauth2_proxy.VERSION} vs the BFF (1 process, 2 workers); wrk "
        f"{CONNECTIONS} connections, {DURATION} s each, CPU per request of each process tree"
    )
    figures: dict[str, dict[str, float]] = {"direct": wrk(f"{stack.upstream.url}/bench")}
    try:
        peer = oauth2_proxy.OAuth2Proxy(
            stack.provider, stack.redis.url, stack.upstream.url, binary=oauth2_proxy.install()
        )
        peer.start()
    except (OSError, RuntimeError, TimeoutError) as exc:
        log(f"  oauth2-proxy not measured: {exc}")
    else:
        try:
            cookie = asyncio.run(oauth2_proxy.login(peer.url))
            assert peer.proc is not None
            figures["oauth2-proxy"] = _loaded(stack, f"{peer.url}/bench", {"Cookie": cookie}, peer.proc.pid)
        finally:
            peer.stop()
    for name, extra in (("BFF 1 process", {}), ("BFF 2 workers", {"BFF_WORKERS": "2"})):
        bff = stack.bff(**extra)
        headers = {"Cookie": asyncio.run(login(bff.url)), "X-CSRF": "1"}
        assert bff.proc is not None
        figures[name] = r = _loaded(stack, f"{bff.url}/api/bench", headers, bff.proc.pid)
        r["half_load"] = _half_load(f"{bff.url}/api/bench", headers, r["rps"])  # type: ignore[assignment]
        stack.stop(bff)
    log("                     req/s  p50 ms  p99 ms  CPU us/request: proxy upstream redis  wrk   non-2xx")
    for name, r in figures.items():
        log(_row(name, r))
    for name in ("BFF 1 process", "BFF 2 workers"):
        half: Any = figures[name]["half_load"]
        log(
            f"  {name} at about half load ({half['rps']:.0f} req/s): "
            f"p50 {half['p50']:.2f} ms, p99 {half['p99']:.2f} ms"
        )
    one, two, direct = figures["BFF 1 process"], figures["BFF 2 workers"], figures["direct"]
    log(
        f"  BFF/direct req/s: 1 process {one['rps'] / direct['rps']:.3f}, "
        f"2 workers {two['rps'] / direct['rps']:.3f}"
    )
    log(f"  2 workers / 1 process req/s: {two['rps'] / one['rps']:.2f}")
    peer_figures = figures.get("oauth2-proxy")
    if peer_figures:
        for name, r in (("1 process", one), ("2 workers", two)):
            log(
                f"  BFF {name} vs oauth2-proxy: req/s {r['rps'] / peer_figures['rps']:.2f} x (goal >= 1.3), "
                f"CPU per request {r['cpu_us'] / peer_figures['cpu_us']:.2f} x (goal <= 0.75)"
            )
    results["proxy"] = figures


def section_embedded(stack: Stack, results: dict[str, Any]) -> None:
    """The same proxied call through the standalone gateway and through the BFF embedded in
    the example FastAPI host app (examples/fastapi_host), both one uvicorn process with
    uvloop and httptools, in the same run."""
    log("== embedded: the proxied call through the example FastAPI host app vs the gateway")
    gateway = stack.bff()
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    env = bff_env(stack.provider, stack.redis.url, public, BFF_API_ROUTES=f"/api={stack.upstream.url}")
    # As the gateway runs uvicorn: the BFF reads X-Forwarded-For itself (BFF_TRUSTED_PROXIES).
    cmd = [sys.executable, "-m", "uvicorn", "--loop", "uvloop", "--http", "httptools", "--no-access-log"]
    cmd.append("--no-proxy-headers")
    host = Proc(
        [*cmd, "--app-dir", str(ROOT / "examples" / "fastapi_host"), "main:app", "--port", str(port)], port
    )
    host.env = {**{k: v for k, v in os.environ.items() if not k.startswith("BFF_")}, **env}
    host.start()
    try:
        forms = {
            "gateway": (gateway.url, gateway.proc.pid if gateway.proc else 0),
            "embedded": (public, host.proc.pid if host.proc else 0),
        }
        headers = {n: {"Cookie": asyncio.run(login(url)), "X-CSRF": "1"} for n, (url, _) in forms.items()}
        for name, (url, _) in forms.items():
            wrk(f"{url}/api/bench", headers[name], duration=2)
        # Two half-length runs each, in the order G E E G, so drift on a noisy machine
        # weighs on both forms alike; the figures are the two runs together.
        runs: dict[str, list[dict[str, float]]] = {"gateway": [], "embedded": []}
        for name in ("gateway", "embedded", "embedded", "gateway"):
            url, pid = forms[name]
            cpu0 = cpu_seconds(pid)
            r = wrk(f"{url}/api/bench", headers[name], duration=max(DURATION // 2, 1))
            r["cpu"] = cpu_seconds(pid) - cpu0
            runs[name].append(r)
        figures = {}
        for name, (a, b) in runs.items():
            requests = a["requests"] + b["requests"]
            r = {**a, "rps": (a["rps"] + b["rps"]) / 2, "requests": requests}
            r["p50"], r["p99"] = max(a["p50"], b["p50"]), max(a["p99"], b["p99"])
            r["non2xx"] = a["non2xx"] + b["non2xx"]
            r["cpu_us"] = (a["cpu"] + b["cpu"]) / requests * 1e6
            figures[name] = r
            log(f"  {name:<9}       {fmt(r)}   CPU {r['cpu_us']:.0f} us/request   non-2xx {r['non2xx']}")
        ratio = figures["embedded"]["rps"] / figures["gateway"]["rps"]
        log(
            f"  ratio embedded/gateway req/s: {ratio:.3f} ({'within' if ratio >= 0.9 else 'NOT within'} 10 %)"
        )
        results["embedded"] = figures
    finally:
        host.stop()
        stack.stop(gateway)


def section_dpop(stack: Stack, results: dict[str, Any]) -> None:
    """The proxied call with DPoP-bound tokens (a fresh ES256 proof per call) vs bearer tokens,
    same run. The upstream's /bench answers without checking the proof, so only the BFF's
    side of DPoP is measured."""
    log("== dpop: proxied calls with DPoP-bound tokens (one ES256 proof per call) vs bearer")
    stack.provider.configure(dpop=True)
    figures = {}
    try:
        for name, extra in (("bearer", {}), ("dpop", {"BFF_DPOP": "true"})):
            bff = stack.bff(**extra)
            headers = {"Cookie": asyncio.run(login(bff.url)), "X-CSRF": "1"}
            wrk(f"{bff.url}/api/bench", headers, duration=2)
            assert bff.proc is not None
            cpu0 = cpu_seconds(bff.proc.pid)
            r = wrk(f"{bff.url}/api/bench", headers)
            r["cpu_us"] = (cpu_seconds(bff.proc.pid) - cpu0) / r["requests"] * 1e6
            figures[name] = r
            stack.stop(bff)
            log(f"  {name:<8}        {fmt(r)}   CPU {r['cpu_us']:.0f} us/request   non-2xx {r['non2xx']}")
    finally:
        stack.provider.reset()
    extra_us = figures["dpop"]["cpu_us"] - figures["bearer"]["cpu_us"]
    log(
        f"  DPoP costs {extra_us:.0f} us of BFF CPU per call; req/s ratio dpop/bearer "
        f"{figures['dpop']['rps'] / figures['bearer']['rps']:.3f}"
    )
    results["dpop"] = figures


async def _ws_figures(url: str, cookie: str | None, origin: str) -> dict[str, float]:
    """Round-trip latency (one socket, sequential echoes) and throughput (8 sockets echoing
    100-byte messages as fast as they can) of a WebSocket echo endpoint."""
    from websockets.asyncio.client import connect

    headers = {"Cookie": cookie} if cookie else {}
    async with connect(url, additional_headers=headers, origin=origin) as ws:  # type: ignore[arg-type]
        await ws.recv()  # the upstream's hello
        rtts = []
        for _ in range(2000):
            started = time.perf_counter()
            await ws.send("x" * 100)
            await ws.recv()
            rtts.append((time.perf_counter() - started) * 1e6)
    rtts.sort()

    async def pump(n: int) -> None:
        async with connect(url, additional_headers=headers, origin=origin) as ws:  # type: ignore[arg-type]
            await ws.recv()

            async def sender() -> None:
                for _ in range(n):
                    await ws.send("y" * 100)

            task = asyncio.create_task(sender())
            for _ in range(n):
                await ws.recv()
            await task

    started = time.perf_counter()
    await asyncio.gather(*(pump(5000) for _ in range(8)))
    rate = 8 * 5000 / (time.perf_counter() - started)
    return {"p50_us": rtts[len(rtts) // 2], "p99_us": rtts[int(len(rtts) * 0.99)], "msgs_per_s": rate}


def section_websocket(stack: Stack, results: dict[str, Any]) -> None:
    log("== websocket: echo round trips and messages per second, through the BFF vs direct")
    bff = stack.bff()
    cookie = asyncio.run(login(bff.url))
    direct = asyncio.run(
        _ws_figures("ws" + stack.upstream.url.removeprefix("http") + "/ws/echo", None, bff.url)
    )
    through = asyncio.run(_ws_figures("ws" + bff.url.removeprefix("http") + "/api/ws/echo", cookie, bff.url))
    stack.stop(bff)
    for name, r in (("direct", direct), ("through BFF", through)):
        log(
            f"  {name:<14} round trip p50 {r['p50_us']:7.0f} us  p99 {r['p99_us']:7.0f} us   "
            f"{r['msgs_per_s']:8.0f} echoed messages/s (8 sockets)"
        )
    log(
        f"  the BFF adds {through['p50_us'] - direct['p50_us']:.0f} us per round trip (p50); "
        f"message rate ratio {through['msgs_per_s'] / direct['msgs_per_s']:.3f}"
    )
    results["websocket"] = {"direct": direct, "bff": through}


async def _bound_login(url: str) -> str:
    """Sign in and register a DBSC key with the scripted DBSC browser; the cookie header of
    the bound session (session and bound cookie)."""
    from tests.dbsc_client import DbscClient

    async with httpx.AsyncClient(timeout=30) as client:
        browser = Browser(client, url)
        dbsc = DbscClient(browser)
        registered = await dbsc.register(await browser.login())
        assert registered.status_code == 200, registered.text
        await browser.aclose()
        return browser._cookie_header()["cookie"]


def _redis_commands(redis: RedisServer) -> int:
    info = redis.cli("INFO", "stats")
    return int(re.search(r"total_commands_processed:(\d+)", info).group(1))  # type: ignore[union-attr]


def section_dbsc(stack: Stack, results: dict[str, Any]) -> None:
    """The proxied call on a device-bound session (DBSC optional, key registered, the bound
    cookie checked on every call) vs DBSC off, same run; Redis commands per call show the
    bound-cookie check costs no store round trip."""
    log("== dbsc: proxied calls on a device-bound session vs DBSC off")
    figures = {}
    for name, extra in (("off", {}), ("bound", {"BFF_DEVICE_BOUND_SESSIONS": "optional"})):
        bff = stack.bff(**extra)
        cookie = asyncio.run(_bound_login(bff.url) if extra else login(bff.url))
        headers = {"Cookie": cookie, "X-CSRF": "1"}
        wrk(f"{bff.url}/api/bench", headers, duration=2)
        assert bff.proc is not None
        cpu0, commands0 = cpu_seconds(bff.proc.pid), _redis_commands(stack.redis)
        r = wrk(f"{bff.url}/api/bench", headers)
        r["cpu_us"] = (cpu_seconds(bff.proc.pid) - cpu0) / r["requests"] * 1e6
        r["redis_per_call"] = (_redis_commands(stack.redis) - commands0 - 1) / r["requests"]
        figures[name] = r
        stack.stop(bff)
        log(
            f"  {name:<8}        {fmt(r)}   CPU {r['cpu_us']:.0f} us/request   "
            f"Redis commands/call {r['redis_per_call']:.3f}   non-2xx {r['non2xx']}"
        )
    log(
        f"  req/s ratio bound/off {figures['bound']['rps'] / figures['off']['rps']:.3f}; Redis commands per "
        f"call {figures['bound']['redis_per_call']:.3f} vs {figures['off']['redis_per_call']:.3f}"
    )
    results["dbsc"] = figures


async def _revocation_trials(a: BffProc, b: BffProc, trials: int) -> list[float]:
    """Per trial: sign in on A, use the session on B (cached there), log out on A, then ask
    B again and again until it refuses: milliseconds from the logout's answer to that 401."""
    times = []
    async with httpx.AsyncClient(timeout=30) as ca, httpx.AsyncClient(timeout=30) as cb:
        for _ in range(trials):
            on_a = Browser(ca, a.url)
            await on_a.login()
            on_b = Browser(cb, a.url)
            on_b.cookies = dict(on_a.cookies)
            on_b.public_url = b.url
            for _ in range(3):
                assert (await on_b.get("/api/bench", csrf=True)).status_code == 200
            await on_a.request("POST", "/bff/logout", csrf=True)
            started = time.perf_counter()
            while (await on_b.get("/api/bench", csrf=True)).status_code != 401:
                if time.perf_counter() - started > 5:
                    raise RuntimeError("the other process still accepts the session after 5 s")
            times.append((time.perf_counter() - started) * 1000)
            await on_a.aclose()
            await on_b.aclose()
    return sorted(times)


def section_revocation(stack: Stack, results: dict[str, Any], trials: int = 30) -> None:
    log(f"== revocation: a logout on one BFF process, seen by another that cached it ({trials} trials)")
    port_a = free_port()
    public = f"http://127.0.0.1:{port_a}"
    a = stack.bff(port=port_a, public=public)
    b = stack.bff(public=public)
    try:
        times = asyncio.run(_revocation_trials(a, b, trials))
    finally:
        stack.stop(a)
        stack.stop(b)
    p50, p95 = times[len(times) // 2], times[int(len(times) * 0.95)]
    log(
        f"  refused by the other process after: p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {times[-1]:.1f} ms "
        f"(bound 100 ms: {'within' if times[-1] < 100 else 'NOT within'})"
    )
    results["revocation"] = {"ms": times}


def section_clients(stack: Stack, results: dict[str, Any]) -> None:
    log("== clients: minimal Redis-session proxies, one per HTTP client library")
    direct = wrk(f"{stack.upstream.url}/bench")
    log(f"  direct              {fmt(direct)}")
    results["clients"] = {"direct": direct}
    for client in ("bff", "aiohttp", "httpx", "httpx-aiohttp"):
        port = free_port()
        proc = Proc(
            [
                sys.executable,
                str(ROOT / "bench" / "clients.py"),
                client,
                str(port),
                stack.upstream.url,
                stack.redis.url,
            ],
            port,
        )
        try:
            proc.start()
        except (RuntimeError, TimeoutError) as exc:
            log(f"  {client:<19} not measured: {exc}")
            continue
        try:
            wrk(f"http://127.0.0.1:{port}/bench", {"Cookie": "s=bench"}, duration=2)
            assert proc.proc is not None
            cpu0 = cpu_seconds(proc.proc.pid)
            r = wrk(f"http://127.0.0.1:{port}/bench", {"Cookie": "s=bench"})
            r["cpu_us"] = (cpu_seconds(proc.proc.pid) - cpu0) / r["requests"] * 1e6
        finally:
            proc.stop()
        log(
            f"  {client:<19} {fmt(r)}   CPU {r['cpu_us']:4.0f} us/request   "
            f"ratio to direct {r['rps'] / direct['rps']:.3f}"
        )
        results["clients"][client] = r


async def _login_loop(bff_url: str, seconds: float, concurrency: int) -> int:
    done = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        # One client each for the BFF and the provider, as a browser has: making an httpx
        # client per login (an SSL context each) would cost more than the login itself.
        async with httpx.AsyncClient(timeout=30) as client, httpx.AsyncClient(timeout=30) as idp:
            while time.monotonic() < deadline:
                browser = Browser(client, bff_url, idp=idp)
                await browser.login()
                done += 1

    await asyncio.gather(*[worker() for _ in range(concurrency)])
    return done


async def _provider_loop(provider: ProviderProc, seconds: float, concurrency: int) -> int:
    """The same IdP work without the BFF: authorize, then the code exchange."""
    import base64
    import hashlib
    import secrets

    done = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        async with httpx.AsyncClient(base_url=provider.issuer, timeout=30) as client:
            while time.monotonic() < deadline:
                verifier = secrets.token_urlsafe(48)
                challenge = (
                    base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
                )
                r = await client.get(
                    "/authorize",
                    params={
                        "response_type": "code",
                        "client_id": "bff-test",
                        "scope": "openid",
                        "redirect_uri": "http://x/bff/callback",
                        "state": "s",
                        "nonce": "n",
                        "code_challenge": challenge,
                        "code_challenge_method": "S256",
                    },
                )
                code = httpx.URL(r.headers["location"]).params["code"]
                await client.post(
                    "/token",
                    data={
                        "grant_type": "authorization_code",
                        "code": code,
                        "redirect_uri": "http://x/bff/callback",
                        "code_verifier": verifier,
                    },
                    auth=("bff-test", "test-secret"),
                )
                done += 1

    await asyncio.gather(*[worker() for _ in range(concurrency)])
    return done


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def section_login(stack: Stack, results: dict[str, Any]) -> None:
    """Full logins per second through the BFF vs the provider doing the same authorize and
    code exchange alone, with the CPU each participant took per login: what bounds it."""
    log("== login: full round trips (login -> provider -> callback -> session), 8 concurrent browsers")
    seconds = DURATION
    bff = stack.bff()
    assert bff.proc is not None
    assert stack.provider.proc is not None
    stack.provider.reset()
    cpu = {"provider": cpu_seconds(stack.provider.proc.pid), "client": _own_cpu()}
    done = asyncio.run(_provider_loop(stack.provider, seconds, 8))
    alone = {
        k: (now - cpu[k]) / done * 1e6
        for k, now in (("provider", cpu_seconds(stack.provider.proc.pid)), ("client", _own_cpu()))
    }
    provider_only = done / seconds
    pids = {"bff": bff.proc.pid, "provider": stack.provider.proc.pid, "redis": stack.redis.proc.pid}  # type: ignore[union-attr]
    cpu = {k: cpu_seconds(v) for k, v in pids.items()} | {"client": _own_cpu()}
    done = asyncio.run(_login_loop(bff.url, seconds, 8))
    after = {k: cpu_seconds(v) for k, v in pids.items()} | {"client": _own_cpu()}
    per_login = {k: (after[k] - cpu[k]) / done * 1e6 for k in cpu}
    through = done / seconds
    stack.stop(bff)
    log(
        f"  provider alone (authorize + token)  {provider_only:7.1f} /s   CPU per login: provider "
        f"{alone['provider']:.0f} us, client {alone['client']:.0f} us"
    )
    log(
        f"  through the BFF                     {through:7.1f} logins/s   ratio {through / provider_only:.3f}"
    )
    log(
        "  CPU per login through the BFF: "
        + ", ".join(f"{k} {v:.0f} us" for k, v in sorted(per_login.items(), key=lambda kv: -kv[1]))
    )
    log("  (the client, the provider and the BFF share the machine: the busiest of them bounds the rate)")
    results["login"] = {"provider_only": provider_only, "bff": through, "cpu_per_login_us": per_login}


def section_storm(stack: Stack, results: dict[str, Any], sessions: int = 20, calls: int = 200) -> None:
    log(f"== storm: {calls} concurrent calls on due access tokens, {sessions} sessions, 2 BFF processes")
    stack.provider.reset()
    stack.provider.configure(access_ttl=0, refresh_access_ttl=3600)
    port_a = free_port()
    public = f"http://127.0.0.1:{port_a}"
    a = stack.bff(port=port_a, public=public, BFF_TOKEN_REFRESH_SKEW="60")
    b = stack.bff(public=public, BFF_TOKEN_REFRESH_SKEW="60")
    cookies = [asyncio.run(login(a.url)) for _ in range(sessions)]
    before = stack.provider.stats()["stats"]["refresh_token"]

    async def storm() -> list[int]:
        limits = httpx.Limits(max_connections=calls)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            tasks = [
                client.get(
                    f"{(a if i % 2 else b).url}/api/echo",
                    headers={"x-csrf": "1", "cookie": cookies[i % sessions]},
                )
                for i in range(calls)
            ]
            return [r.status_code for r in await asyncio.gather(*tasks)]

    started = time.monotonic()
    statuses = asyncio.run(storm())
    elapsed = time.monotonic() - started
    refreshes = stack.provider.stats()["stats"]["refresh_token"] - before
    stack.stop(a)
    stack.stop(b)
    stack.provider.reset()
    ok = statuses.count(200)
    log(
        f"  answers: {ok}/{calls} OK in {elapsed:.2f} s; token requests at the provider: {refreshes} "
        f"for {sessions} sessions ({refreshes / sessions:.2f} per session; "
        f"{'exactly one each' if refreshes == sessions else 'NOT one each'})"
    )
    results["storm"] = {"ok": ok, "calls": calls, "refreshes": refreshes, "sessions": sessions}


def section_memory(stack: Stack, results: dict[str, Any], count: int = 100_000) -> None:
    log("== memory: Redis bytes per session")
    stack.redis.cli("FLUSHALL")
    bff = stack.bff()
    asyncio.run(login(bff.url))
    stack.stop(bff)
    key = stack.redis.cli("KEYS", "bff:s:*").split()[0]
    usage = int(stack.redis.cli("MEMORY", "USAGE", key, "SAMPLES", "0"))
    cipher = RecordCipher.from_settings((), (SECRET,))

    async def inspect() -> Session:
        store = RedisStore(connect(stack.redis.url), cipher, 1800)
        session = await store.load(key.split(":", 2)[2], touch=False)
        await store.close()
        assert session is not None
        return session

    real = asyncio.run(inspect())
    raw = len(real.access_token) + len(real.refresh_token or "") + len(real.id_token)
    limit = 1.3 * raw + 300
    log(
        f"  one session: MEMORY USAGE {usage} bytes; raw tokens {raw} bytes "
        f"(access {len(real.access_token)}, refresh {len(real.refresh_token or '')}, id {len(real.id_token)})"
    )
    log(
        f"  ratio {usage / raw:.3f} x raw; limit 1.3 x raw + 300 = {limit:.0f} bytes: "
        f"{'within' if usage <= limit else 'OVER'}"
    )

    async def fill() -> None:
        store = RedisStore(connect(stack.redis.url), cipher, 1800)
        now = int(time.time())
        batch = 500
        for start in range(0, count, batch):
            sessions = [
                Session(
                    id=new_session_id(),
                    sub=f"user-{i:06d}",
                    id_token=real.id_token,
                    access_token=real.access_token,
                    access_expires_at=now + 300,
                    refresh_token=real.refresh_token,
                    created_at=now,
                    expires_at=now + 43200,
                    last_seen=now,
                    idp_sid=f"sid-{i}",
                    user_agent=real.user_agent,
                    ip=real.ip,
                )
                for i in range(start, min(start + batch, count))
            ]
            await asyncio.gather(*[store.create(s) for s in sessions])
        await store.close()

    stack.redis.cli("FLUSHALL")
    before = _used_memory(stack.redis)
    started = time.monotonic()
    asyncio.run(fill())
    after = _used_memory(stack.redis)
    per = (after - before) / count
    log(
        f"  {count} sessions (with their user and sid index entries): {(after - before) / 2**20:.1f} MiB "
        f"({per:.0f} bytes per session, {per / raw:.2f} x raw), written in {time.monotonic() - started:.0f} s"
    )
    results["memory"] = {"usage": usage, "raw": raw, "limit": limit, "bulk_per_session": per, "count": count}


def _used_memory(redis: RedisServer) -> int:
    info = redis.cli("INFO", "memory")
    return int(re.search(r"used_memory:(\d+)", info).group(1))  # type: ignore[union-attr]


SECTIONS = {
    "proxy": section_proxy,
    "embedded": section_embedded,
    "dpop": section_dpop,
    "websocket": section_websocket,
    "dbsc": section_dbsc,
    "revocation": section_revocation,
    "clients": section_clients,
    "login": section_login,
    "storm": section_storm,
    "memory": section_memory,
}


def main() -> None:
    global DURATION
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sections", nargs="*", choices=[*SECTIONS, []], default=[])
    parser.add_argument("--duration", type=int, default=DURATION, help="seconds per wrk run")
    parser.add_argument("--sessions", type=int, default=100_000, help="sessions for the memory section")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    DURATION = args.duration
    chosen = args.sections or list(SECTIONS)
    results: dict[str, Any] = {}
    log(
        f"bff benchmarks - {time.strftime('%Y-%m-%d %H:%M:%S')} - {os.cpu_count()} CPUs - sections: "
        f"{', '.join(chosen)}"
    )
    with Stack() as stack:
        for name in chosen:
            if name == "memory":
                section_memory(stack, results, args.sessions)
            else:
                SECTIONS[name](stack, results)
            log()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
