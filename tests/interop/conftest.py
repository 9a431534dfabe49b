"""Interoperability fixtures: panva's oidc-provider (OpenID Certified, from npm) as a real
Node process, configured by interop/oidc-provider/server.js, and BFFs pointed at it, either
in-process (ASGI) or as a real ``python -m bff`` process where oidc-provider must reach the
BFF over HTTP (back-channel logout).

The browser side is the cookie-keeping ``tests.support.Browser``; ``walk`` plays the user at
oidc-provider's own pages (devInteractions login and consent, the logout confirmation) by
reading their HTML forms and submitting them the way a browser would.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx
import pytest
from joserfc.jwk import ECKey

from bff.app import BFFApp
from bff.session.models import Session
from tests.support import ROOT, SECRET, BffProc, Browser, InProcessBffs, Proc, UpstreamProc, free_port

OP_DIR = ROOT / "interop" / "oidc-provider"
LOGS = ROOT / "test-artifacts" / "logs"
# The in-process BFF's origin. Nothing listens there: oidc-provider's back-channel logout
# to the in-process clients fails (it logs backchannel.error); bff_process is for that.
PUBLIC_URL = "http://localhost:8080"

# RFC 6749 §2.3.1: client_secret_basic form-encodes id and secret before base64, so a
# secret with spaces, '+', ':', '%' and '/' tells a correct encoder from a sloppy one.
CLIENT_SECRET = "s3cret with space+plus:colon/slash%percent&amp=eq~"
BASIC = "bff-basic"  # client_secret_basic, redirect URI on PUBLIC_URL
POST = "bff-post"  # client_secret_post, redirect URI on PUBLIC_URL
PROC = "bff-proc"  # client_secret_basic, redirect URI on the BFF process's own URL
ES256 = "bff-es256"  # like bff-basic, but its ID tokens are signed with ES256
PKJWT = "bff-pkjwt"  # private_key_jwt with CLIENT_KEY (RFC 7523), no secret
# The private_key_jwt client's key: its public half is registered at oidc-provider.
CLIENT_KEY = ECKey.generate_key("P-256", parameters={"kid": "bff-key-1", "alg": "ES256", "use": "sig"})


def ensure_node_modules() -> None:
    """`npm ci` in interop/oidc-provider when its node_modules is missing or stale."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed for the interop tests: run ./scripts/install")
    marker = OP_DIR / "node_modules" / ".package-lock.json"
    lock = OP_DIR / "package-lock.json"
    if marker.exists() and marker.stat().st_mtime >= lock.stat().st_mtime:
        return
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=OP_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(f"npm ci in {OP_DIR} failed:\n{result.stdout}\n{result.stderr}")


class OidcProvider(Proc):
    """``node interop/oidc-provider/server.js`` on a free port; its events come from its log."""

    def __init__(self, name: str, clients: list[dict[str, Any]], **env: str) -> None:
        port = free_port()
        self.name = name
        self.issuer = f"http://127.0.0.1:{port}"
        self.clients = {c["client_id"]: c for c in clients}
        log = LOGS / f"oidc-provider-{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        super().__init__(
            ["node", str(OP_DIR / "server.js"), "--port", str(port)],
            port,
            env={"OP_CLIENTS": json.dumps(clients), "NODE_ENV": "test", **env},
            log=log,
        )
        self.http = httpx.Client(base_url=self.issuer, timeout=30)

    def start(self, timeout: float = 30.0) -> None:
        super().start(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.http.get("/.well-known/openid-configuration").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"oidc-provider serves no discovery document at {self.issuer}")

    def stop(self, *args: Any, **kw: Any) -> None:
        super().stop(*args, **kw)
        self.http.close()
        self.http = httpx.Client(base_url=self.issuer, timeout=30)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON event lines server.js printed (warnings and other lines skipped)."""
        assert self.log is not None
        out = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if name is None or event.get("event") == name:
                    out.append(event)
        return out

    def introspect(self, token: str, client_id: str = BASIC) -> dict[str, Any]:
        """RFC 7662 at oidc-provider, authenticated as the client would at its token endpoint."""
        client = self.clients[client_id]
        form, headers = {"token": token}, {}
        if client.get("token_endpoint_auth_method") == "client_secret_post":
            form.update(client_id=client_id, client_secret=client["client_secret"])
        else:  # RFC 6749 §2.3.1: form-encode both parts, then base64
            pair = f"{quote(client_id, safe='')}:{quote(client['client_secret'], safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        r = self.http.post("/token/introspection", data=form, headers=headers)
        r.raise_for_status()
        return dict(r.json())

    def userinfo(self, access_token: str) -> httpx.Response:
        return self.http.get("/me", headers={"Authorization": f"Bearer {access_token}"})

    def backchannel_logout(self, client_id: str, sub: str, sid: str | None = None) -> dict[str, Any]:
        params = {"client_id": client_id, "sub": sub, **({"sid": sid} if sid else {})}
        return dict(self.http.post("/_control/backchannel-logout", params=params).json())


# --- the user at oidc-provider's pages ------------------------------------------------


@dataclass
class Form:
    id: str | None
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    buttons: list[tuple[str, str]] = field(default_factory=list)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self._by_id: dict[str, Form] = {}
        self._current: Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            form = Form(a.get("id"), a.get("action", ""), a.get("method", "get").upper())
            self.forms.append(form)
            self._current = form
            if form.id:
                self._by_id[form.id] = form
        elif tag == "input" and a.get("name"):
            target = self._by_id.get(a["form"]) if a.get("form") else self._current
            if target is not None and a.get("type", "text") == "hidden":
                target.fields[a["name"]] = a.get("value", "")
        elif tag == "button" and a.get("name"):
            target = self._by_id.get(a["form"]) if a.get("form") else self._current
            if target is not None:
                target.buttons.append((a["name"], a.get("value", "")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def parse_forms(html: str) -> list[Form]:
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


@dataclass
class Walk:
    """Where the browser ended up and which oidc-provider pages it went through."""

    location: str
    pages: list[str]


async def walk(
    client: httpx.AsyncClient,
    url: str,
    stop: str,
    user: str = "alice",
    max_steps: int = 15,
    abort: bool = False,
) -> Walk:
    """Follow oidc-provider's redirects and fill in its pages (login: any password; consent:
    continue; logout: "Yes, sign me out") until a redirect leads to ``stop``. With ``abort``
    the user cancels at the first login or consent page instead."""
    method, data = "GET", None
    pages: list[str] = []
    for _ in range(max_steps):
        r = await client.request(method, url, data=data)
        if r.is_redirect:
            location = urljoin(str(r.url), r.headers["location"])
            if location.startswith(stop):
                return Walk(location, pages)
            if urlsplit(location).netloc != urlsplit(str(r.url)).netloc:
                raise AssertionError(f"{method} {url} redirected to {location}, expected {stop}")
            method, data, url = "GET", None, location
            continue
        if r.status_code != 200:
            raise AssertionError(f"{method} {url} answered {r.status_code}: {r.text[:1000]}")
        forms = parse_forms(r.text)
        if not forms:
            raise AssertionError(f"{method} {url} shows no form: {r.text[:1000]}")
        form = forms[0]
        fields = dict(form.fields)
        prompt = fields.get("prompt")
        if abort and prompt in ("login", "consent"):
            pages.append(f"{prompt}:abort")
            method, data, url = "GET", None, urljoin(str(r.url), form.action.rstrip("/") + "/abort")
            continue
        if prompt == "login":
            fields.update(login=user, password="any password")
            pages.append("login")
        elif prompt == "consent":
            pages.append("consent")
        elif ("logout", "yes") in form.buttons:  # "Yes, sign me out"
            fields["logout"] = "yes"
            pages.append("logout")
        else:
            pages.append("form_post")
        method, url, data = form.method, urljoin(str(r.url), form.action), fields
    raise AssertionError(f"no redirect to {stop} after {max_steps} steps")


async def login(
    browser: Browser, user: str = "alice", return_to: str | None = None
) -> tuple[httpx.Response, Walk]:
    """/bff/login → oidc-provider's pages → /bff/callback; the callback's answer and the walk."""
    r = await browser.start_login(return_to)
    assert r.status_code == 302, r.text
    w = await walk(browser.idp, r.headers["location"], browser.public_url + "/bff/callback", user)
    return await browser.get(w.location), w


# --- fixtures -------------------------------------------------------------------------


def _clients(proc_url: str) -> list[dict[str, Any]]:
    return [
        {"client_id": BASIC, "client_secret": CLIENT_SECRET, "public_url": PUBLIC_URL},
        {
            "client_id": ES256,
            "client_secret": CLIENT_SECRET,
            "public_url": PUBLIC_URL,
            "metadata": {"id_token_signed_response_alg": "ES256"},
        },
        {
            "client_id": PKJWT,
            "public_url": PUBLIC_URL,
            "token_endpoint_auth_method": "private_key_jwt",
            "metadata": {"jwks": {"keys": [CLIENT_KEY.as_dict(private=False)]}},
        },
        {
            "client_id": POST,
            "client_secret": CLIENT_SECRET,
            "public_url": PUBLIC_URL,
            "token_endpoint_auth_method": "client_secret_post",
        },
        {"client_id": PROC, "client_secret": CLIENT_SECRET, "public_url": proc_url},
    ]


@pytest.fixture(scope="session")
def bff_proc_port() -> int:
    """The port of the BFF process, known before oidc-provider starts (its client's URIs)."""
    return free_port()


def start_op(name: str, port: int, **env: str) -> OidcProvider:
    ensure_node_modules()
    op = OidcProvider(name, _clients(f"http://127.0.0.1:{port}"), **env)
    op.start()
    return op


@pytest.fixture(scope="session")
def op(bff_proc_port: int) -> Iterator[OidcProvider]:
    """oidc-provider with its stock policies: a refresh token only for offline_access granted
    with prompt=consent; scope claims only at UserInfo. Access tokens live 60 s."""
    provider = start_op("stock", bff_proc_port, OP_ACCESS_TOKEN_TTL="60")
    yield provider
    provider.stop()


@pytest.fixture(scope="session")
def op_lenient(bff_proc_port: int) -> Iterator[OidcProvider]:
    """oidc-provider as operators often set it up: refresh tokens for every code grant of a
    client allowed refresh_token, scope claims in the ID token too, PAR required, and the
    stock refresh token rotation policy."""
    provider = start_op(
        "lenient",
        bff_proc_port,
        OP_ACCESS_TOKEN_TTL="60",
        OP_REFRESH_TOKENS="always",
        OP_CONFORM_ID_TOKEN_CLAIMS="false",
        OP_REQUIRE_PAR="true",
        OP_ROTATE_REFRESH_TOKEN="stock",
    )
    yield provider
    provider.stop()


def bff_settings(
    op: OidcProvider, client_id: str, redis_url: str, public_url: str, **extra: str
) -> dict[str, str]:
    client = op.clients[client_id]
    credentials = (
        {"BFF_CLIENT_SECRET": client["client_secret"]}
        if "client_secret" in client
        else {"BFF_CLIENT_PRIVATE_KEY": json.dumps(CLIENT_KEY.as_dict(private=True))}
    )
    return {
        "BFF_ISSUER": op.issuer,
        "BFF_CLIENT_ID": client_id,
        **credentials,
        "BFF_PUBLIC_URL": public_url,
        "BFF_SECRET_KEY": SECRET,
        "BFF_SESSION_STORE": "redis",
        "BFF_REDIS_URL": redis_url,
        "BFF_LOG_LEVEL": "info",
        **extra,
    }


BffFactory = Callable[..., Awaitable[tuple[BFFApp, Browser]]]


@pytest.fixture
async def make_interop_bff(redis_url: str, upstream: UpstreamProc) -> AsyncIterator[BffFactory]:
    """make_interop_bff(op, client_id=BASIC, **BFF_* overrides) -> (app, browser): in-process."""
    running = InProcessBffs(PUBLIC_URL)

    async def factory(op: OidcProvider, client_id: str = BASIC, **overrides: str) -> tuple[BFFApp, Browser]:
        env = bff_settings(
            op, client_id, redis_url, PUBLIC_URL, BFF_API_ROUTES=f"/api={upstream.url}", **overrides
        )
        app = await running.app(env)
        return app, await running.browser(app)

    yield factory
    await running.close()


@dataclass
class RunningBff:
    proc: BffProc
    url: str
    browsers: list[Browser] = field(default_factory=list)

    async def browser(self) -> Browser:
        b = Browser(httpx.AsyncClient(timeout=30), self.url)
        self.browsers.append(b)
        return b


@pytest.fixture
async def bff_process(
    op: OidcProvider, redis_url: str, upstream: UpstreamProc, bff_proc_port: int
) -> AsyncIterator[RunningBff]:
    """``python -m bff`` on its own URL (client bff-proc), reachable by oidc-provider."""
    url = f"http://127.0.0.1:{bff_proc_port}"
    env = bff_settings(
        op, PROC, redis_url, url, BFF_PORT=str(bff_proc_port), BFF_API_ROUTES=f"/api={upstream.url}"
    )
    proc = BffProc(env, log=LOGS / "interop-bff.log")
    proc.start()
    running = RunningBff(proc, url)
    yield running
    for b in running.browsers:
        await b.bff.aclose()
        await b.aclose()
    proc.stop()


async def stored_session(app: BFFApp, browser: Browser) -> Session:
    """The session the browser's cookie names, as the BFF keeps it (to look at its tokens)."""
    header = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    session_id = app.services.cookies.session_id(header)
    assert session_id is not None, browser.cookies
    session = await app.services.store.load(session_id, touch=False)
    assert session is not None
    return session


def record_idp(app: BFFApp) -> list[httpx.Response]:
    """Every answer the in-process BFF gets from the IdP from now on (``.request`` is what
    the BFF sent)."""
    seen: list[httpx.Response] = []

    async def hook(response: httpx.Response) -> None:
        await response.aread()
        seen.append(response)

    app.services.http.event_hooks["response"].append(hook)
    return seen


async def expire_access_token(app: BFFApp, browser: Browser) -> Session:
    """Mark the session's access token as expired in the store (its tokens stay as they are),
    so the next API call has to refresh at the IdP: expiry without waiting for it."""
    session = await stored_session(app, browser)
    expired = session.with_tokens(
        session.access_token, int(time.time()) - 1, session.refresh_token, session.id_token
    )
    assert await app.services.store.update_tokens(expired)
    return session
