"""Test plumbing: real processes (redis-server, the test provider, the upstream, BFF
processes) and a small cookie-keeping "browser" that walks the login redirects.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from demo.stack import free_port as _pick_port

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-key-that-is-long-enough-0123456789"
# base64url in index order: a signature's last character keeps its bytes when only its
# two low (spare) index bits change, i.e. B64URL[i ^ 1], [i ^ 2], [i ^ 3].
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free port below the ephemeral range, never the same one twice in a test run.

    Binding to port 0 is not enough: the kernel may offer one port to two probes of the same
    set-up (a cluster node once got another node's bus port and died on start-up), and an
    ephemeral port can be taken by an outgoing connection before the server binds it.
    """
    return _pick_port(_HANDED_OUT)


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


class Proc:
    """A child process that listens on a port; stop() and start() again on the same port."""

    def __init__(
        self, cmd: list[str], port: int, env: Mapping[str, str] | None = None, log: Path | None = None
    ) -> None:
        self.cmd = cmd
        self.port = port
        self.env = {**os.environ, **(env or {})}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log, "ab") as out:
                self.proc = subprocess.Popen(
                    self.cmd,
                    env=self.env,
                    cwd=ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        else:
            self.proc = subprocess.Popen(
                self.cmd,
                env=self.env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_port(self.port, timeout, self.proc)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class RedisServer(Proc):
    def __init__(self, port: int | None = None, extra: list[str] | None = None) -> None:
        port = port or free_port()
        binary = shutil.which("redis-server") or "redis-server"
        super().__init__(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                *(extra or []),
            ],
            port,
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, check=True, timeout=30
        )
        return result.stdout


class ProviderProc(Proc):
    """The test OIDC provider (tests/fakes/provider.py) in its own process."""

    def __init__(self, log: Path | None = None) -> None:
        port = free_port()
        super().__init__([sys.executable, "-m", "tests.fakes.provider", "--port", str(port)], port, log=log)
        self.issuer = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.issuer, timeout=30)

    def configure(self, **config: Any) -> dict[str, Any]:
        r = self.http.post("/_control/config", json=config)
        r.raise_for_status()
        return dict(r.json())

    def reset(self) -> None:
        self.http.post("/_control/reset").raise_for_status()

    def stats(self) -> dict[str, Any]:
        return dict(self.http.get("/_control/stats").json())

    def logout_token(self, **spec: Any) -> str:
        return str(self.http.post("/_control/logout-token", json=spec).json()["logout_token"])

    def rotate_keys(self, **spec: Any) -> dict[str, Any]:
        return dict(self.http.post("/_control/rotate-keys", json=spec).json())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        super().stop(sig, timeout)
        self.http.close()
        self.http = httpx.Client(base_url=self.issuer, timeout=30)

    def issued(self) -> list[str]:
        """Every code and token the provider issued."""
        t = self.http.get("/_control/tokens").json()
        return [*t["codes"], *t["refresh_tokens"], *t["access_tokens"], *t["id_tokens"]]

    def end_idp_session(self, user: str) -> None:
        self.http.post("/_control/end-idp-session", json={"user": user}).raise_for_status()


class UpstreamProc(Proc):
    def __init__(self, workers: int = 1) -> None:
        port = free_port()
        super().__init__(
            [sys.executable, "-m", "tests.fakes.upstream", "--port", str(port), "--workers", str(workers)],
            port,
        )
        self.url = f"http://127.0.0.1:{port}"


def bff_env(provider: ProviderProc, redis_url: str | None, public_url: str, **extra: str) -> dict[str, str]:
    env = {
        "BFF_ISSUER": provider.issuer,
        "BFF_CLIENT_ID": "bff-test",
        "BFF_CLIENT_SECRET": "test-secret",
        "BFF_PUBLIC_URL": public_url,
        "BFF_SECRET_KEY": SECRET,
        "BFF_SESSION_STORE": "redis" if redis_url else "memory",
        "BFF_LOG_LEVEL": "info",
    }
    if redis_url:
        env["BFF_REDIS_URL"] = redis_url
    env.update(extra)
    return env


class BffProc(Proc):
    """``python -m bff`` as a real server process."""

    def __init__(self, env: dict[str, str], log: Path | None = None) -> None:
        port = int(env.get("BFF_PORT") or free_port())
        env = {**env, "BFF_PORT": str(port), "BFF_HOST": "127.0.0.1"}
        clean = {k: v for k, v in os.environ.items() if not k.startswith("BFF_")}
        super().__init__([sys.executable, "-m", "bff"], port, log=log)
        self.env = {**clean, **env}
        self.url = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 30.0) -> None:
        super().start(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # ready once IdP metadata is loaded
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError("BFF did not become ready")


class Browser:
    """Keeps cookies like a browser (per name, Path=/), follows redirects across BFF and IdP."""

    def __init__(
        self,
        bff: httpx.AsyncClient,
        public_url: str,
        user_agent: str = "Mozilla/5.0 (X11; Linux "
        "x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36",
        idp: httpx.AsyncClient | None = None,
    ) -> None:
        self.bff = bff
        self.public_url = public_url
        self.cookies: dict[str, str] = {}
        self._own_idp = idp is None
        self.idp = idp or httpx.AsyncClient(timeout=30)
        self.user_agent = user_agent
        self.last_set_cookies: list[str] = []

    def _cookie_header(self) -> dict[str, str]:
        return {"cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} if self.cookies else {}

    def _store(self, response: httpx.Response) -> None:
        self.bff.cookies.clear()  # cookies live in this object only, never in a shared client jar
        self.last_set_cookies = response.headers.get_list("set-cookie")
        for header in self.last_set_cookies:
            jar: SimpleCookie = SimpleCookie()
            jar.load(header)
            for name, morsel in jar.items():
                if morsel["max-age"] == "0" or morsel.value == "":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value

    async def request(
        self, method: str, path: str, *, csrf: bool = False, headers: dict[str, str] | None = None, **kw: Any
    ) -> httpx.Response:
        h = {"user-agent": self.user_agent, **self._cookie_header(), **(headers or {})}
        if csrf:
            h["x-csrf"] = "1"
        url = path if path.startswith("http") else self.public_url + path
        response = await self.bff.request(method, url, headers=h, **kw)
        self._store(response)
        return response

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("GET", path, **kw)

    async def start_login(self, return_to: str | None = None) -> httpx.Response:
        query = f"?{urlencode({'returnTo': return_to})}" if return_to is not None else ""
        return await self.get(f"/bff/login{query}")

    async def authorize(self, location: str, user: str = "alice") -> httpx.Response:
        """What the IdP answers to the browser's visit of the authorization URL."""
        sep = "&" if "?" in location else "?"
        return await self.idp.get(f"{location}{sep}login_hint={user}")

    async def login(self, user: str = "alice", return_to: str | None = None) -> httpx.Response:
        r = await self.start_login(return_to)
        assert r.status_code == 302, r.text
        r = await self.authorize(r.headers["location"], user)
        assert r.status_code == 302, r.text
        callback = r.headers["location"]
        assert callback.startswith(self.public_url + "/bff/callback"), callback
        return await self.get(callback)

    async def aclose(self) -> None:
        if self._own_idp:
            await self.idp.aclose()


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


@contextlib.contextmanager
def env_vars(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def raw_http(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send bytes exactly as given (no client-side normalisation) and read one response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                headers = {}
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                length = headers.get("content-length")
                if length is not None and len(body) >= int(length):
                    break
    status_line, _, _ = data.partition(b"\r\n")
    parts = status_line.split(b" ")
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    head, _, body = data.partition(b"\r\n\r\n")
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


class InProcessBffs:
    """In-process BFF apps (real Redis, real IdP) and the browsers talking to them through
    httpx's ASGI transport, all shut down together: one per test fixture."""

    def __init__(self, public_url: str) -> None:
        self.public_url = public_url
        self.apps: list[Any] = []
        self.clients: list[httpx.AsyncClient] = []
        self.browsers: list[Browser] = []

    async def app(self, env: dict[str, str], wait: bool = True) -> Any:
        from bff.app import create_app
        from bff.settings import load_settings

        app = create_app(load_settings(env))
        await app.startup()
        self.apps.append(app)
        if wait:  # IdP metadata and keys loaded, as /readyz would say
            await app.services.provider.metadata()
            await app.services.provider.keys()
        return app

    async def browser(self, app: Any, ip: str = "127.0.0.1", **kw: Any) -> Browser:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(ip, 40000)), timeout=30)
        self.clients.append(client)
        browser = Browser(client, self.public_url, **kw)
        self.browsers.append(browser)
        return browser

    async def close(self) -> None:
        for b in self.browsers:
            await b.aclose()
        for c in self.clients:
            await c.aclose()
        for a in self.apps:
            await a.shutdown()


@contextlib.contextmanager
def bff_processes(
    idp: ProviderProc, redis_url: str, upstream: UpstreamProc, logs: Path, count: int = 2, **extra: str
) -> Iterator[list[BffProc]]:
    """``count`` ``python -m bff`` processes on one Redis, all serving the first one's public URL."""
    ports = [free_port() for _ in range(count)]
    public = f"http://127.0.0.1:{ports[0]}"
    procs: list[BffProc] = []
    try:
        for i, port in enumerate(ports):
            env = bff_env(idp, redis_url, public, **{"BFF_API_ROUTES": f"/api={upstream.url}", **extra})
            env["BFF_PORT"] = str(port)
            proc = BffProc(env, log=logs / f"bff-{i}.log")
            procs.append(proc)
            proc.start()
        yield procs
    finally:
        for p in procs:
            p.stop()
