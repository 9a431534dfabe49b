"""oauth2-proxy as a benchmark peer: the same job as the BFF (OIDC code flow with PKCE
against the test provider, sessions in Redis, the access token forwarded upstream as
``Authorization: Bearer``), measured on the same machine in the same run.

    install() -> Path                     build oauth2-proxy VERSION with ``go install``
                                          into .cache/go (nothing under $HOME), once
    OAuth2Proxy(provider, redis_url, upstream_url)   a Proc: start() waits for /ping, /ready
    await login(proxy.url) -> str         the Cookie header value of a logged-in browser

Configuration notes (checked against the v7.15.6 source):

* The test provider accepts only redirect URIs ending in ``/bff/callback``, so the proxy
  runs with ``--proxy-prefix=/bff``: its endpoints become /bff/start, /bff/callback,
  /bff/sign_out ... (/ping and /ready stay where they are). The upstream paths used here
  (/bench, /echo) do not collide with that prefix.
* The legacy flags cannot forward the *access* token as ``Authorization: Bearer``:
  ``--pass-access-token`` sends it as ``X-Forwarded-Access-Token``,
  ``--pass-authorization-header`` sends the *ID* token as Bearer, and
  ``--set-authorization-header`` puts the ID token in a *response* header, i.e. hands it
  to the browser on every proxied response. So the upstream, the provider, the listen
  address and the injected header are given in an alpha config file (JSON, which is YAML)
  with one request header, ``Authorization: Bearer {access_token}``, and no response
  headers; the remaining options stay flags.
* ``--cookie-refresh`` defaults to 0 in oauth2-proxy, which never refreshes and never checks
  expiry (an expired access token would be forwarded for the cookie's 7 days). The BFF
  refreshes 60 s before expiry; with the test provider's 300 s access tokens that is
  ``--cookie-refresh=4m``. The check is a clock comparison, not a Redis call.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support import Proc, ProviderProc, free_port  # noqa: E402

VERSION = "v7.15.6"
MODULE = "github.com/oauth2-proxy/oauth2-proxy/v7"
PREFIX = "/bff"  # the test provider only accepts redirect URIs ending in /bff/callback
CLIENT_ID = "bff-test"
CLIENT_SECRET = "test-secret"


# --- build ---------------------------------------------------------------------------
def _reported_version(binary: Path) -> str | None:
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"oauth2-proxy (\S+)", out.stdout + out.stderr)
    return match.group(1) if match else None


def install(cache_dir: Path = ROOT / ".cache" / "go") -> Path:
    """Build oauth2-proxy VERSION into ``cache_dir/bin`` unless it is already there.

    GOPATH, GOMODCACHE, GOCACHE, GOBIN and the Go config dir (telemetry) all live under
    ``cache_dir``. ``go install pkg@version`` leaves the program's version "undefined",
    so the version is linked in as upstream's Makefile does, which is what makes the
    ``--version`` check meaningful.
    """
    cache_dir = Path(cache_dir).resolve()
    binary = cache_dir / "bin" / "oauth2-proxy"
    if binary.exists() and _reported_version(binary) == VERSION:
        return binary
    go = shutil.which("go") or "/usr/local/go/bin/go"
    env = {
        **os.environ,
        "GOPATH": str(cache_dir / "path"),
        "GOMODCACHE": str(cache_dir / "mod"),
        "GOCACHE": str(cache_dir / "build"),
        "GOBIN": str(cache_dir / "bin"),
        "XDG_CONFIG_HOME": str(cache_dir / "config"),
        "GOFLAGS": "-modcacherw",  # the module cache can be deleted without chmod
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",  # as upstream's release builds
    }
    started = time.monotonic()
    print(f"building oauth2-proxy {VERSION} with go install (about 2-3 minutes) ...", flush=True)
    result = subprocess.run(
        [go, "install", f"-ldflags=-X {MODULE}/pkg/version.VERSION={VERSION}", f"{MODULE}@{VERSION}"],
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"go install failed ({result.returncode}):\n{result.stderr[-3000:]}")
    found = _reported_version(binary)
    if found != VERSION:
        raise RuntimeError(f"{binary} reports version {found!r}, expected {VERSION}")
    print(f"built {binary} in {time.monotonic() - started:.0f} s", flush=True)
    return binary


# --- the process ---------------------------------------------------------------------
class OAuth2Proxy(Proc):
    """oauth2-proxy in front of ``upstream_url``, configured like the BFF."""

    def __init__(
        self,
        provider: ProviderProc | str,
        redis_url: str,
        upstream_url: str,
        port: int | None = None,
        binary: Path | None = None,
        cookie_refresh: str = "4m",
        log: Path | None = None,
    ) -> None:
        self.binary = binary or install()
        port = port or free_port()
        self.issuer = provider if isinstance(provider, str) else provider.issuer
        self.redis_url = redis_url
        self.upstream_url = upstream_url
        self.url = f"http://127.0.0.1:{port}"
        self.workdir = Path(tempfile.mkdtemp(prefix="oauth2-proxy-"))
        self.config_path = self.workdir / "alpha-config.yaml"
        # 32 random bytes, base64url: an AES-256 cookie secret, new for every instance.
        self.cookie_secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        self.flags = [
            f"--alpha-config={self.config_path}",
            f"--proxy-prefix={PREFIX}",
            f"--redirect-url={self.url}{PREFIX}/callback",
            "--cookie-secure=false",
            f"--cookie-refresh={cookie_refresh}",
            "--email-domain=*",
            "--session-store-type=redis",
            f"--redis-connection-url={redis_url}",
            "--skip-provider-button=true",
            "--request-logging=false",
            "--auth-logging=false",
            "--standard-logging=false",
        ]
        super().__init__([str(self.binary), *self.flags], port, log=log)
        # No stray OAUTH2_PROXY_* settings from the caller; the secret stays out of argv.
        clean = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH2_PROXY_")}
        self.env = {**clean, "OAUTH2_PROXY_COOKIE_SECRET": self.cookie_secret}

    def alpha_config(self) -> dict[str, Any]:
        return {
            "server": {"bindAddress": f"127.0.0.1:{self.port}"},
            "upstreamConfig": {
                "upstreams": [
                    {
                        "id": "upstream",
                        "path": "/",
                        "uri": self.upstream_url,
                        "passHostHeader": True,
                        "proxyWebSockets": False,
                    }
                ]
            },
            "providers": [
                {
                    "id": "oidc",
                    "provider": "oidc",
                    "clientID": CLIENT_ID,
                    "clientSecret": CLIENT_SECRET,
                    "code_challenge_method": "S256",  # this key is spelled so in v7.15.6
                    "oidcConfig": {
                        "issuerURL": self.issuer,
                        "insecureAllowUnverifiedEmail": True,
                        "emailClaim": "email",
                        "userIDClaim": "email",
                        "audienceClaims": ["aud"],
                    },
                }
            ],
            # What the BFF adds: the access token, nothing else from the session.
            "injectRequestHeaders": [
                {
                    "name": "Authorization",
                    "preserveRequestValue": False,
                    "values": [{"claimSource": {"claim": "access_token", "prefix": "Bearer "}}],
                }
            ],
            "injectResponseHeaders": [],
        }

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.alpha_config(), f, indent=2)
        super().start(timeout)  # listening means OIDC discovery is done
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                # /ping: the process answers; /ready: and Redis answers too.
                if all(
                    httpx.get(f"{self.url}{path}", timeout=2).status_code == 200
                    for path in ("/ping", "/ready")
                ):
                    return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"oauth2-proxy exited with {self.proc.returncode}")
            time.sleep(0.1)
        raise TimeoutError("oauth2-proxy did not become ready")

    def stop(self, *args: Any, **kw: Any) -> None:
        super().stop(*args, **kw)
        shutil.rmtree(self.workdir, ignore_errors=True)


# --- the browser ---------------------------------------------------------------------
async def login(url: str, user: str = "alice", check: bool = True) -> str:
    """Log in through ``{url}/bff/start`` like a browser; return the Cookie header value.

    Follows the redirects across oauth2-proxy and the provider with one cookie jar (the
    provider signs ``login_hint`` in without a form). With ``check``, also proves the
    session works: /bench through the proxy answers 200 and the upstream's /echo shows
    ``Authorization: Bearer <JWT access token>``, and no token comes back to the browser.
    """
    async with httpx.AsyncClient(timeout=30, follow_redirects=False) as client:
        target = f"{url}{PREFIX}/start?rd=%2Fbench"
        seen_callback = False
        for _ in range(10):
            r = await client.get(target)
            if not r.is_redirect:
                break
            location = urljoin(str(r.url), r.headers["location"])
            if location.startswith(url + PREFIX + "/callback"):
                seen_callback = True
            elif not location.startswith(url) and "/authorize" in location:
                location += ("&" if "?" in location else "?") + f"login_hint={user}"
            target = location
        else:
            raise RuntimeError("too many redirects during the oauth2-proxy login")
        if not seen_callback or r.status_code != 200 or str(r.url) != f"{url}/bench":
            raise RuntimeError(f"oauth2-proxy login ended at {r.url} with {r.status_code}: {r.text[:300]}")
        cookie = "; ".join(
            f"{c.name}={c.value}"
            for c in client.cookies.jar
            if c.name.startswith("_oauth2_proxy") and "csrf" not in c.name
        )
    if not cookie:
        raise RuntimeError("no oauth2-proxy session cookie after login")
    if check:
        await verify(url, cookie)
    return cookie


async def verify(url: str, cookie: str) -> dict[str, Any]:
    """Check a session cookie; return the access token's claims as the upstream saw them."""
    async with httpx.AsyncClient(timeout=30, follow_redirects=False) as client:
        bench = await client.get(f"{url}/bench", headers={"cookie": cookie})
        if bench.status_code != 200 or bench.json().get("ok") is not True:
            raise RuntimeError(f"/bench through oauth2-proxy: {bench.status_code} {bench.text[:200]}")
        echo = await client.get(f"{url}/echo", headers={"cookie": cookie})
        if echo.status_code != 200:
            raise RuntimeError(f"/echo through oauth2-proxy: {echo.status_code} {echo.text[:200]}")
    leaked = [h for h in ("authorization", "x-auth-request-access-token") if h in echo.headers]
    if leaked:
        raise RuntimeError(f"oauth2-proxy sent tokens to the browser: {leaked}")
    auth = echo.json()["headers"].get("authorization", [])
    if len(auth) != 1 or not re.fullmatch(r"Bearer [\w-]+\.[\w-]+\.[\w-]+", auth[0]):
        raise RuntimeError(f"upstream did not get one Bearer JWT: {auth!r}")
    token = auth[0][7:]
    header, payload = (
        json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))) for part in token.split(".")[:2]
    )
    if header.get("typ") != "at+jwt":  # the provider's access tokens; ID tokens are "JWT"
        raise RuntimeError(f"the Bearer token is not the access token: {header}")
    return dict(payload)
