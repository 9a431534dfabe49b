"""The demo stack without Docker: Redis, Keycloak, the sample API and the BFF serving the
example SPA, as child processes of this one. ``scripts/demo`` runs it; the end-to-end
tests import it and start the very same stack (on free ports).

Every port, URL and environment variable of the stack is decided here, in ``StackConfig``;
docker-compose.yml describes the same stack for Docker (tests/test_demo_stack_agreement.py
keeps the two in step).

    python -m demo.stack            # start everything, print the URL, run until Ctrl-C

Ports (environment overrides): DEMO_BFF_PORT (8080), DEMO_KEYCLOAK_PORT (8081),
DEMO_API_PORT (9000), DEMO_REDIS_PORT (6379). DEMO_DPOP=1 signs in with the realm's
``bff-dpop`` client, whose tokens are DPoP-bound (the sample API checks the proofs). The
realm file takes the BFF's URL from ``DEMO_BFF_URL``, so other ports work too.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
KEYCLOAK_VERSION = "26.7.3"
KEYCLOAK_HOME = ROOT / ".cache" / f"keycloak-{KEYCLOAK_VERSION}"
REALM_FILE = ROOT / "keycloak" / "realm-demo.json"
SPA_DIST = ROOT / "spa-example" / "dist"
PYTHON = ROOT / ".venv" / "bin" / "python"

REALM = "demo"
CLIENT_ID = "bff"
CLIENT_SECRET = "bff-demo-secret"
# DEMO_DPOP=1: the client whose tokens Keycloak only issues DPoP-bound (RFC 9449).
DPOP_CLIENT_ID = "bff-dpop"
DPOP_CLIENT_SECRET = "bff-dpop-demo-secret"
API_AUDIENCE = "demo-api"
REPORTS_AUDIENCE = "demo-reports"  # the second API: tokens by exchange or client credentials
KEYCLOAK_ADMIN = ("admin", "admin")
DEMO_USERS = {"alice": "alice-password", "bob": "bob-password"}
# Signs the demo's cookies. Published in this file: for the demo only, never for real use.
DEMO_SECRET_KEY = "demo-only-cookie-signing-key-not-a-secret-0123456789"

# Service name -> port inside its container (docker-compose). The native stack runs the
# same services on the host, each on its own port (StackConfig).
CONTAINER_PORTS = {"redis": 6379, "keycloak": 8080, "api": 9000, "bff": 8080}
# Services whose port docker-compose publishes on the host, on the native port.
PUBLISHED = ("keycloak", "api", "bff")
# The BFF_* variables both stacks set (values differ only in host names).
BFF_VARIABLES = (
    "BFF_HOST",
    "BFF_PORT",
    "BFF_ISSUER",
    "BFF_DISCOVERY_URL",
    "BFF_CLIENT_ID",
    "BFF_CLIENT_SECRET",
    "BFF_PUBLIC_URL",
    "BFF_SECRET_KEY",
    "BFF_REDIS_URL",
    "BFF_SCOPES",
    "BFF_API_ROUTES",
    "BFF_STATIC_DIR",
    "BFF_DPOP",
)
# Without offline_access: since Keycloak 26.1, a first login that asks for offline_access
# turns the SSO session into an offline session, so Keycloak has no browser session to
# end on logout and sends no back-channel logout when an administrator (or another app)
# ends the user's sessions. A plain refresh token lives as long as the SSO session.
BFF_SCOPES = "openid profile email"

KEYCLOAK_START_TIMEOUT = 240.0  # seconds; ~20 s warm, ~45 s on the first start (2 cores)


@dataclass(frozen=True)
class StackConfig:
    bff_port: int = 8080
    keycloak_port: int = 8081
    api_port: int = 9000
    redis_port: int = 6379
    # The example host app with the BFF embedded (examples/fastapi_host): not started by the
    # demo, but registered at Keycloak so it can sign in too (the end-to-end test runs it).
    embedded_port: int = 8082
    # An https origin registered at Keycloak too (DBSC needs https in Chrome): the end-to-end
    # test serves a BFF there with a test certificate; the demo does not use it.
    secure_port: int = 8443
    dpop: bool = False  # DEMO_DPOP=1: DPoP-bound tokens (the realm's bff-dpop client)
    # Extra BFF_* settings (tests shorten timers with them); they win over the defaults.
    bff_overrides: Mapping[str, str] = field(default_factory=dict)
    api_debug: bool = False  # the sample API's /debug/seen
    log_dir: Path = ROOT / ".cache" / "demo-logs"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kw: Any) -> StackConfig:
        e = os.environ if env is None else env
        ports = {
            "bff_port": int(e.get("DEMO_BFF_PORT") or cls.bff_port),
            "keycloak_port": int(e.get("DEMO_KEYCLOAK_PORT") or cls.keycloak_port),
            "api_port": int(e.get("DEMO_API_PORT") or cls.api_port),
            "redis_port": int(e.get("DEMO_REDIS_PORT") or cls.redis_port),
        }
        kw.setdefault("dpop", (e.get("DEMO_DPOP") or "").lower() in ("1", "true", "yes", "on"))
        return cls(**{**ports, **kw})

    @property
    def ports(self) -> dict[str, int]:
        return {
            "redis": self.redis_port,
            "keycloak": self.keycloak_port,
            "api": self.api_port,
            "bff": self.bff_port,
        }

    @property
    def public_url(self) -> str:
        return f"http://localhost:{self.bff_port}"

    @property
    def keycloak_url(self) -> str:
        return f"http://localhost:{self.keycloak_port}"

    @property
    def issuer(self) -> str:
        return f"{self.keycloak_url}/realms/{REALM}"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def embedded_url(self) -> str:
        return f"http://localhost:{self.embedded_port}"

    @property
    def secure_url(self) -> str:
        return f"https://localhost:{self.secure_port}"

    @property
    def api_url(self) -> str:
        return f"http://localhost:{self.api_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def bff_env(self) -> dict[str, str]:
        env = {
            "BFF_HOST": "127.0.0.1",
            "BFF_PORT": str(self.bff_port),
            "BFF_ISSUER": self.issuer,
            "BFF_DISCOVERY_URL": self.discovery_url,
            "BFF_CLIENT_ID": DPOP_CLIENT_ID if self.dpop else CLIENT_ID,
            "BFF_CLIENT_SECRET": DPOP_CLIENT_SECRET if self.dpop else CLIENT_SECRET,
            "BFF_PUBLIC_URL": self.public_url,
            "BFF_SECRET_KEY": DEMO_SECRET_KEY,
            "BFF_REDIS_URL": self.redis_url,
            "BFF_SCOPES": BFF_SCOPES,
            "BFF_API_ROUTES": api_routes(self.api_url),
            "BFF_STATIC_DIR": str(SPA_DIST),
            "BFF_DPOP": "true" if self.dpop else "false",
        }
        assert tuple(env) == BFF_VARIABLES
        env.update(self.bff_overrides)
        return env

    def api_env(self) -> dict[str, str]:
        return {
            "DEMO_API_HOST": "127.0.0.1",
            "DEMO_API_PORT": str(self.api_port),
            "DEMO_API_ISSUER": self.issuer,
            "DEMO_API_JWKS_URL": f"{self.issuer}/protocol/openid-connect/certs",
            "DEMO_API_AUDIENCE": API_AUDIENCE,
            "DEMO_API_REPORTS_AUDIENCE": REPORTS_AUDIENCE,
            "DEMO_API_DEBUG": "1" if self.api_debug else "0",
        }

    def keycloak_env(self) -> dict[str, str]:
        return {
            "KC_BOOTSTRAP_ADMIN_USERNAME": KEYCLOAK_ADMIN[0],
            "KC_BOOTSTRAP_ADMIN_PASSWORD": KEYCLOAK_ADMIN[1],
            # Placeholders in keycloak/realm-demo.json, resolved by Keycloak at import.
            "DEMO_BFF_URL": self.public_url,
            "DEMO_EMBEDDED_URL": self.embedded_url,
            "DEMO_SECURE_URL": self.secure_url,
            "DEMO_BACKCHANNEL_LOGOUT_URL": f"{self.public_url}/bff/backchannel-logout",
        }

    def keycloak_args(self) -> list[str]:
        # Build-time options (--db) stay the same for every run, so Keycloak re-augments
        # only once; dev-mem keeps nothing between runs: each start imports the realm afresh.
        return [
            "start-dev",
            "--db=dev-mem",
            "--import-realm",
            f"--http-port={self.keycloak_port}",
            "--http-host=127.0.0.1",
            f"--hostname={self.keycloak_url}",
        ]


def api_routes(api_url: str) -> str:
    """The demo's routes: the sample API with the user's token (/api), the reports API with a
    token exchanged for its audience (/reports), and with the BFF's own token (/status)."""
    return json.dumps(
        [
            {"prefix": "/api", "upstream": api_url},
            {
                "prefix": "/reports",
                "upstream": api_url,
                "audience": REPORTS_AUDIENCE,
                "scope": REPORTS_AUDIENCE,
            },
            {"prefix": "/status", "upstream": api_url, "token": "client", "scope": REPORTS_AUDIENCE},
        ],
        separators=(",", ":"),
    )


class StackError(RuntimeError):
    pass


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(taken: set[int] | None = None) -> int:
    """A port nothing listens on, below the kernel's ephemeral range: a port the kernel
    hands out (bind to 0) may be taken by any outgoing connection before a slow starter
    such as Keycloak binds it."""
    taken = taken if taken is not None else set()
    low = _ephemeral_range()[0]
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, low if low > 21000 else 30000)
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise StackError("no free port found")


def _child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The parent's environment without stray BFF_/DEMO_/KC_ settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BFF_", "DEMO_", "KC_"))}
    env["BFF_ENV_FILE"] = os.devnull  # no .env from the working directory
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Service:
    name: str
    cmd: list[str]
    env: dict[str, str]
    port: int
    ready: Callable[[], bool]
    log: Path
    timeout: float = 30.0
    cwd: Path = ROOT
    proc: subprocess.Popen[bytes] | None = None
    _out: IO[bytes] | None = None

    def start(self) -> None:
        if _port_open(self.port):
            raise StackError(
                f"{self.name}: port {self.port} is already in use (is the demo already running?)"
            )
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._out = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self._out.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(self.cmd)}\n".encode())
        self._out.flush()
        self.proc = subprocess.Popen(
            self.cmd,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise StackError(f"{self.name} exited with {code} during start-up:\n{self.tail()}")
            with contextlib.suppress(Exception):
                if self.ready():
                    return
            time.sleep(0.25)
        raise StackError(f"{self.name} not ready after {self.timeout:.0f}s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._out is not None:
            self._out.close()
            self._out = None


def _http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        return httpx.get(url, timeout=2.0).status_code == 200

    return check


class Stack:
    """Start with ``start()`` (or ``with Stack(...) as stack``); ``stop()`` ends every process."""

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self.services: dict[str, Service] = {}

    # -- the services -------------------------------------------------------------------

    def _redis(self) -> Service:
        c = self.config
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackError("redis-server is not installed: run ./scripts/install")
        cmd = [binary, "--port", str(c.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]

        def ping() -> bool:
            with socket.create_connection(("127.0.0.1", c.redis_port), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        return Service("redis", cmd, _child_env({}), c.redis_port, ping, c.log_dir / "redis.log")

    def _keycloak(self) -> Service:
        c = self.config
        kc = KEYCLOAK_HOME / "bin" / "kc.sh"
        if not kc.exists():
            raise StackError(f"Keycloak is not installed in {KEYCLOAK_HOME}: run ./scripts/install")
        import_dir = KEYCLOAK_HOME / "data" / "import"
        import_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REALM_FILE, import_dir / REALM_FILE.name)
        return Service(
            "keycloak",
            [str(kc), *c.keycloak_args()],
            _child_env(c.keycloak_env()),
            c.keycloak_port,
            _http_ok(c.discovery_url),
            c.log_dir / "keycloak.log",
            timeout=KEYCLOAK_START_TIMEOUT,
        )

    def _api(self) -> Service:
        c = self.config
        return Service(
            "api",
            [str(PYTHON), "-m", "demo.sample_api"],
            _child_env(c.api_env()),
            c.api_port,
            _http_ok(f"{c.api_url}/healthz"),
            c.log_dir / "api.log",
        )

    def _bff(self) -> Service:
        c = self.config
        if not (SPA_DIST / "index.html").is_file():
            raise StackError(f"the example SPA is not built ({SPA_DIST}): run ./scripts/install")
        return Service(
            "bff",
            [str(PYTHON), "-m", "bff"],
            _child_env(c.bff_env()),
            c.bff_port,
            _http_ok(f"{c.public_url}/readyz"),
            c.log_dir / "bff.log",
            timeout=60.0,
        )

    # -- life cycle ---------------------------------------------------------------------

    def start(self, progress: Callable[[str], None] = lambda _msg: None) -> None:
        """Start everything, or nothing: on any failure whatever started is stopped again."""
        busy = [f"{name} port {port}" for name, port in self.config.ports.items() if _port_open(port)]
        if busy:
            raise StackError(f"already in use: {', '.join(busy)} (is the demo already running?)")
        try:
            # Keycloak is the slow one: start it first, the others while it boots.
            for make in (self._keycloak, self._redis, self._api):
                service = make()
                self.services[service.name] = service
                service.start()
            for name in ("redis", "api", "keycloak"):
                started = time.monotonic()
                if name == "keycloak":
                    progress("waiting for Keycloak (tens of seconds) ...")
                self.services[name].wait_ready()
                progress(f"{name} ready ({time.monotonic() - started:.1f}s)")
            bff = self._bff()
            self.services["bff"] = bff
            bff.start()
            bff.wait_ready()
            progress("bff ready")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for name in ("bff", "api", "keycloak", "redis"):
            service = self.services.get(name)
            if service is not None:
                service.stop()
        self.services.clear()

    def dead(self) -> list[str]:
        return [name for name, s in self.services.items() if not s.alive()]

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- Keycloak's admin REST API (tests and demo helpers) -----------------------------

    def admin_token(self) -> str:
        r = httpx.post(
            f"{self.config.keycloak_url}/realms/master/protocol/openid-connect/token",
            data={
                "grant_type": "password",
                "client_id": "admin-cli",
                "username": KEYCLOAK_ADMIN[0],
                "password": KEYCLOAK_ADMIN[1],
            },
            timeout=10.0,
        )
        r.raise_for_status()
        return str(r.json()["access_token"])

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """A call to /admin/realms/demo{path} as Keycloak's admin."""
        headers = {"Authorization": f"Bearer {self.admin_token()}"}
        url = f"{self.config.keycloak_url}/admin/realms/{REALM}{path}"
        return httpx.request(method, url, headers=headers, timeout=15.0, **kw)

    def user_id(self, username: str) -> str:
        r = self.admin("GET", "/users", params={"username": username, "exact": "true"})
        r.raise_for_status()
        return str(r.json()[0]["id"])


def _banner(config: StackConfig) -> str:
    users = "\n".join(f"      {u} / {p}" for u, p in DEMO_USERS.items())
    return f"""
  bff demo is running.

    Open        {config.public_url}/
    Sign in as
{users}
    Keycloak    {config.keycloak_url}/admin/  (admin / admin)
    API         {config.api_url}/api/whoami  (through the BFF: {config.public_url}/api/whoami)
    Logs        {config.log_dir}/{{bff,api,keycloak,redis}}.log

  Ctrl-C stops everything.
"""


def main() -> None:
    config = StackConfig.from_env()
    stack = Stack(config)
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    # Ctrl-C (SIGINT) and SIGTERM stop the stack; set explicitly, since a shell starting
    # this in the background may have made the process ignore SIGINT.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"demo: starting Redis, Keycloak {KEYCLOAK_VERSION}, the sample API and the BFF", flush=True)
    try:
        stack.start(progress=lambda msg: print(f"demo: {msg}", flush=True))
        print(_banner(config), flush=True)
        while True:
            dead = stack.dead()
            if dead:
                for name in dead:
                    print(f"demo: {name} stopped unexpectedly:\n{stack.services[name].tail()}", flush=True)
                raise SystemExit(1)
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("\ndemo: stopping ...", flush=True)
    except StackError as exc:
        print(f"demo: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    finally:
        stack.stop()
        print("demo: stopped", flush=True)


def config_for_tests(log_dir: Path, **overrides: str) -> StackConfig:
    """Free ports for everything, so a running demo does not get in the way."""
    taken: set[int] = set()
    return StackConfig(
        bff_port=free_port(taken),
        keycloak_port=free_port(taken),
        api_port=free_port(taken),
        redis_port=free_port(taken),
        embedded_port=free_port(taken),
        secure_port=free_port(taken),
        bff_overrides=dict(overrides),
        api_debug=True,
        log_dir=log_dir,
    )


@contextlib.contextmanager
def running(config: StackConfig) -> Iterator[Stack]:
    stack = Stack(config)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


__all__ = [
    "BFF_VARIABLES",
    "CONTAINER_PORTS",
    "PUBLISHED",
    "Stack",
    "StackConfig",
    "StackError",
    "config_for_tests",
    "running",
]

if __name__ == "__main__":
    main()
