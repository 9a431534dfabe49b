"""Settings: one frozen object read once from ``BFF_*`` environment variables.

Every problem is collected before anything is raised, so an operator sees all of
them at once; each is one line naming the variable and what is wrong. Secrets are
masked in ``repr`` so a settings object can be logged safely.

Every variable read here is listed in ``SETTINGS_DOC`` and documented in
docs/configuration.md (a test keeps the two in step).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from .errors import ConfigError

TokenPolicy = Literal["user", "user-optional", "none", "client", "user-or-client"]
TOKEN_POLICIES: tuple[str, ...] = ("user", "user-optional", "none", "client", "user-or-client")
SameSite = Literal["lax", "strict"]

# Algorithms the BFF accepts for ID tokens and logout tokens at most; the effective
# list is this one intersected with the IdP's metadata. No "none", no HMAC.
ASYMMETRIC_ALGS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
    "Ed25519",
)

SETTINGS_DOC: dict[str, str] = {
    "BFF_HOST": "interface to listen on",
    "BFF_PORT": "port to listen on",
    "BFF_WORKERS": "number of worker processes",
    "BFF_ISSUER": "OIDC issuer URL",
    "BFF_DISCOVERY_URL": "where to fetch the IdP metadata",
    "BFF_CLIENT_ID": "client id at the IdP",
    "BFF_CLIENT_SECRET": "client secret",
    "BFF_CLIENT_AUTH_METHOD": "token endpoint client authentication",
    "BFF_CLIENT_PRIVATE_KEY": "private key for private_key_jwt",
    "BFF_USE_PAR": "use pushed authorization requests",
    "BFF_DPOP": "bind tokens to DPoP keys",
    "BFF_DPOP_CLIENT_KEY": "the DPoP key of the BFF's own tokens",
    "BFF_PROFILE": "security profile (fapi2)",
    "BFF_PUBLIC_URL": "external origin of the BFF",
    "BFF_SECRET_KEY": "cookie signing keys",
    "BFF_ENCRYPTION_KEYS": "session encryption keys",
    "BFF_REDIS_URL": "Redis URL",
    "BFF_SESSION_STORE": "session store kind",
    "BFF_SCOPES": "scopes requested",
    "BFF_EXTRA_AUTH_PARAMS": "extra authorization request parameters",
    "BFF_API_ROUTES": "upstream routes",
    "BFF_STATIC_DIR": "built SPA folder",
    "BFF_SESSION_IDLE_TIMEOUT": "idle timeout",
    "BFF_SESSION_ABSOLUTE_TIMEOUT": "absolute timeout",
    "BFF_SESSION_CACHE_TTL": "seconds a process answers from its copy of a session",
    "BFF_SESSION_CACHE_SIZE": "sessions each process keeps decoded",
    "BFF_POST_LOGOUT_REDIRECT_URI": "post-logout redirect",
    "BFF_COOKIE_NAME": "session cookie name",
    "BFF_COOKIE_SAMESITE": "session cookie SameSite",
    "BFF_TOKEN_REFRESH_SKEW": "refresh ahead of expiry",
    "BFF_ASSUMED_TOKEN_LIFETIME": "lifetime of a token whose response has no expires_in",
    "BFF_RETRY_BODY_LIMIT": "largest request body buffered so a proxied call can be retried",
    "BFF_DEVICE_BOUND_SESSIONS": "DBSC mode",
    "BFF_DBSC_COOKIE_TTL": "lifetime of the DBSC bound cookie",
    "BFF_DBSC_REGISTRATION_GRACE": "time to bind a session under required",
    "BFF_END_SESSION_ON_BROWSER_CHANGE": "end a session whose browser family changes",
    "BFF_WS_MAX_PER_SESSION": "open WebSockets per session",
    "BFF_WS_MAX_PER_PROCESS": "open WebSockets per process",
    "BFF_WS_MAX_MESSAGE_SIZE": "largest WebSocket message",
    "BFF_CLOCK_SKEW": "clock skew tolerance",
    "BFF_LOGIN_TIMEOUT": "login transaction lifetime",
    "BFF_MAX_PENDING_LOGINS": "pending logins per browser",
    "BFF_MAX_SESSIONS_PER_USER": "session limit per user",
    "BFF_ID_TOKEN_ALGS": "allowed ID token algorithms",
    "BFF_ID_TOKEN_MAX_IAT_AGE": "how old a fresh ID token may be",
    "BFF_REDIS_TIMEOUT": "time limit of one session store operation",
    "BFF_REVOKE_ON_LOGOUT": "revoke refresh token at logout",
    "BFF_FETCH_USERINFO": "fetch UserInfo at login",
    "BFF_INSECURE_ALLOW_HTTP": "allow http:// for non-loopback hosts",
    "BFF_TRUSTED_PROXIES": "proxies whose X-Forwarded-* headers are believed",
    "BFF_CONTENT_SECURITY_POLICY": "CSP for the served SPA",
    "BFF_FRAME_ANCESTORS": "frame-ancestors for the served SPA",
    "BFF_MAX_BODY_SIZE": "maximum body for /bff endpoints",
    "BFF_MAX_HEADER_SIZE": "maximum request header size",
    "BFF_LOG_FORMAT": "log format",
    "BFF_LOG_LEVEL": "log level",
    "BFF_METRICS_ENABLED": "serve /metrics",
    "BFF_ENV_FILE": "the .env file read at start-up",
}


@dataclass(frozen=True, slots=True)
class ApiRoute:
    """One upstream mapping: requests under ``prefix`` go to ``upstream``. ``audience``,
    ``resource`` (RFC 8707) and ``scope`` shape a token of the route's own: by token exchange
    (RFC 8693) from the user's, or by client credentials for the BFF itself."""

    prefix: str
    upstream: str
    token: TokenPolicy = "user"  # noqa: S105 - a policy name, not a secret
    strip_prefix: bool = False
    timeout: float = 30.0
    audience: str | None = None
    resource: tuple[str, ...] = ()
    scope: str | None = None

    @property
    def shapes_token(self) -> bool:
        """True when the route's token differs from the session's own access token."""
        return bool(self.audience or self.resource or self.scope)


def _mask(value: object) -> str:
    return "***" if value else "''"


@dataclass(frozen=True, slots=True)
class Settings:
    issuer: str
    client_id: str
    public_url: str
    secret_keys: tuple[str, ...] = field(repr=False)
    client_secret: str | None = field(default=None, repr=False)
    discovery_url: str = ""
    client_auth_method: str = "auto"
    client_private_key: str | None = field(default=None, repr=False)
    use_par: bool = False
    dpop: bool = False
    dpop_client_key: str | None = field(default=None, repr=False)
    profile: Literal["none", "fapi2"] = "none"
    encryption_keys: tuple[str, ...] = field(default=(), repr=False)
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    redis_url: str = field(default="redis://localhost:6379/0", repr=False)
    session_store: Literal["redis", "memory"] = "redis"
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    extra_auth_params: tuple[tuple[str, str], ...] = ()
    api_routes: tuple[ApiRoute, ...] = ()
    static_dir: Path | None = None
    session_idle_timeout: int = 1800
    session_absolute_timeout: int = 43200
    session_cache_ttl: int = 30
    session_cache_size: int = 10000
    post_logout_redirect_uri: str = ""
    cookie_name: str = ""
    cookie_samesite: SameSite = "lax"
    token_refresh_skew: int = 60
    assumed_token_lifetime: int = 300
    retry_body_limit: int = 65536
    device_bound_sessions: Literal["off", "optional", "required"] = "off"
    dbsc_cookie_ttl: int = 600
    dbsc_registration_grace: int = 60
    end_session_on_browser_change: bool = False
    ws_max_per_session: int = 16
    ws_max_per_process: int = 10000
    ws_max_message_size: int = 1048576
    clock_skew: int = 60
    login_timeout: int = 600
    max_pending_logins: int = 10
    max_sessions_per_user: int = 0
    id_token_algs: tuple[str, ...] = ("RS256",)
    id_token_max_iat_age: int = 600
    redis_timeout: float = 2.0
    revoke_on_logout: bool = True
    fetch_userinfo: Literal["auto", "true", "false"] = "auto"
    insecure_allow_http: bool = False
    trusted_proxies: tuple[str, ...] = ()
    content_security_policy: str = (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'self'; "
        "form-action 'self'"
    )
    frame_ancestors: str = "'none'"
    max_body_size: int = 65536
    max_header_size: int = 32768
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"
    metrics_enabled: bool = True

    @property
    def secure_cookies(self) -> bool:
        return self.public_url.startswith("https://")

    @property
    def redirect_uri(self) -> str:
        return f"{self.public_url}/bff/callback"

    def __repr__(self) -> str:  # secrets masked, everything else shown
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            shown = _mask(value) if not f.repr else repr(value)
            parts.append(f"{f.name}={shown}")
        return f"Settings({', '.join(parts)})"


class _Reader:
    """Reads variables and collects one problem line per bad variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def required(self, name: str, what: str) -> str:
        value = self.raw(name)
        if value is None:
            self.problems.append(f"{name} is required ({what})")
            return ""
        return value

    def integer(self, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            self.problems.append(f"{name} must be a whole number, got {value!r}")
            return default
        if number < minimum or (maximum is not None and number > maximum):
            bounds = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            self.problems.append(f"{name} must be {bounds}, got {number}")
            return default
        return number

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        self.problems.append(f"{name} must be true or false, got {value!r}")
        return default

    def number(self, name: str, default: float, minimum: float, maximum: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            self.problems.append(f"{name} must be a number of seconds, got {value!r}")
            return default
        if not minimum <= number <= maximum:
            self.problems.append(f"{name} must be between {minimum:g} and {maximum:g}, got {value}")
            return default
        return number

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() not in choices:
            self.problems.append(f"{name} must be one of {', '.join(choices)}, got {value!r}")
            return default
        return value.lower()


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(r: _Reader, name: str, value: str, allow_http: bool, *, origin_only: bool) -> str:
    """Validate an absolute URL; http only on loopback unless explicitly allowed."""
    if not value:
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        r.problems.append(f"{name} must be an absolute http(s) URL, got {value!r}")
        return value
    if parts.scheme == "http" and not allow_http and not _is_loopback(parts.hostname):
        r.problems.append(
            f"{name} must use https:// for a non-loopback host "
            f"(set BFF_INSECURE_ALLOW_HTTP=true to allow http), got {value!r}"
        )
    if parts.query or parts.fragment:
        r.problems.append(f"{name} must not have a query or fragment, got {value!r}")
    if origin_only and parts.path not in ("", "/"):
        r.problems.append(f"{name} must be an origin without a path, got {value!r}")
    return value.rstrip("/") if origin_only else value


def _route_items(value: str, problems: list[str]) -> list[dict[str, object]]:
    """The routes as dicts, from the short form or the JSON list form."""
    name = "BFF_API_ROUTES"
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append(f"{name} is not valid JSON: {exc.msg} at position {exc.pos}")
            return []
        if not isinstance(parsed, list) or not all(isinstance(i, dict) for i in parsed):
            problems.append(f"{name} JSON form must be a list of objects")
            return []
        return parsed
    items: list[dict[str, object]] = []
    for pair in text.split(","):
        if not pair.strip():
            continue
        left, sep, right = pair.strip().partition("=")
        if not sep:
            problems.append(f"{name} entry {pair.strip()!r} must look like /prefix=http://upstream")
            continue
        items.append({"prefix": left.strip(), "upstream": right.strip()})
    return items


_ROUTE_KEYS = {"prefix", "upstream", "token", "strip_prefix", "timeout", "audience", "resource", "scope"}
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")  # RFC 6749 §3.3 scope-token


def _route_prefix(item: dict[str, object], bad: list[str]) -> str:
    prefix = item.get("prefix")
    if not isinstance(prefix, str) or not prefix.startswith("/") or prefix == "/":
        bad.append(f"prefix must be a path like /api, got {prefix!r}")
        return str(prefix)
    prefix = prefix.rstrip("/")
    if prefix == "/bff" or prefix.startswith("/bff/"):
        bad.append(f"prefix {prefix!r} collides with the BFF's own /bff paths")
    if any(seg in ("", ".", "..") for seg in prefix.split("/")[1:]) or "\\" in prefix:
        bad.append(f"prefix {prefix!r} has an empty, '.' or '..' segment")
    return prefix


def _route_token_params(
    item: dict[str, object], bad: list[str]
) -> tuple[str | None, tuple[str, ...], str | None]:
    """audience, resource (one URI or a list, RFC 8707 §2: absolute, no fragment), scope."""
    audience = item.get("audience")
    if audience is not None and (not isinstance(audience, str) or not audience.strip()):
        bad.append("audience must be a non-empty string")
        audience = None
    raw = item.get("resource", [])
    resources = [raw] if isinstance(raw, str) else raw
    if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
        bad.append("resource must be a URI or a list of URIs")
        resources = []
    for uri in resources:
        parts = urlsplit(uri)
        if not parts.scheme or not (parts.netloc or parts.path) or parts.fragment or "#" in uri:
            bad.append(f"resource {uri!r} must be an absolute URI without a fragment (RFC 8707)")
    scope = item.get("scope")
    if scope is not None and (
        not isinstance(scope, str)
        or not scope.split()
        or not all(_SCOPE_TOKEN.match(t) for t in scope.split())
    ):
        bad.append("scope must be space-separated scope tokens")
        scope = None
    return (
        audience.strip() if isinstance(audience, str) else None,
        tuple(sorted(set(resources))) if isinstance(resources, list) else (),
        " ".join(sorted(set(scope.split()))) if isinstance(scope, str) else None,
    )


def _route(item: dict[str, object], problems: list[str]) -> ApiRoute | None:
    """One route, or None after adding every problem it has (each naming the route)."""
    bad: list[str] = []
    unknown = set(item) - _ROUTE_KEYS
    if unknown:
        bad.append(f"unknown option(s): {', '.join(sorted(unknown))}")
    prefix = _route_prefix(item, bad)
    upstream = item.get("upstream")
    parts = urlsplit(upstream) if isinstance(upstream, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        bad.append(f"upstream must be an http(s) URL, got {upstream!r}")
    token = item.get("token", "user")
    if token not in TOKEN_POLICIES:
        bad.append(f"token must be one of {', '.join(TOKEN_POLICIES)}, got {token!r}")
    strip = item.get("strip_prefix", False)
    if not isinstance(strip, bool):
        bad.append("strip_prefix must be true or false")
    timeout = item.get("timeout", 30.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        bad.append("timeout must be a positive number of seconds")
    audience, resource, scope = _route_token_params(item, bad)
    if token == "none" and (audience or resource or scope):  # noqa: S105 - a policy name
        bad.append("audience, resource and scope need a token policy other than none")
    for problem in bad:
        problems.append(f"BFF_API_ROUTES route {prefix}: {problem}")
    if bad:
        return None
    assert isinstance(upstream, str)
    assert isinstance(timeout, int | float)
    assert isinstance(strip, bool)
    policy: TokenPolicy = token  # type: ignore[assignment]  # checked against TOKEN_POLICIES above
    return ApiRoute(prefix, upstream.rstrip("/"), policy, strip, float(timeout), audience, resource, scope)


def parse_api_routes(value: str, problems: list[str]) -> tuple[ApiRoute, ...]:
    """Parse ``/api=http://host,/b=http://other`` or the JSON list form; every problem of
    every route is reported."""
    routes = [r for r in (_route(item, problems) for item in _route_items(value, problems)) if r]
    prefixes = [r.prefix for r in routes]
    if len(set(prefixes)) != len(prefixes):
        problems.append("BFF_API_ROUTES has the same prefix twice")
    # Longest prefix first, so /api/admin wins over /api.
    return tuple(sorted(routes, key=lambda r: len(r.prefix), reverse=True))


Values = dict[str, Any]


def _client(r: _Reader, allow_http: bool) -> Values:
    """The IdP and how the BFF authenticates to it."""
    issuer = r.required("BFF_ISSUER", "the OIDC issuer URL, e.g. https://idp.example.com/realms/x")
    issuer = _check_url(r, "BFF_ISSUER", issuer, allow_http, origin_only=False)
    discovery_url = r.raw("BFF_DISCOVERY_URL") or ""
    if discovery_url:
        discovery_url = _check_url(r, "BFF_DISCOVERY_URL", discovery_url, True, origin_only=False)
    elif issuer:
        discovery_url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    client_secret = r.raw("BFF_CLIENT_SECRET")
    auth_method = r.choice(
        "BFF_CLIENT_AUTH_METHOD",
        "auto",
        ("auto", "client_secret_basic", "client_secret_post", "private_key_jwt"),
    )
    private_key = _key_text(r, "BFF_CLIENT_PRIVATE_KEY")
    if auth_method == "private_key_jwt" and not private_key:
        r.problems.append("BFF_CLIENT_PRIVATE_KEY is required when BFF_CLIENT_AUTH_METHOD=private_key_jwt")
    if auth_method in ("client_secret_basic", "client_secret_post") and not client_secret:
        r.problems.append(f"BFF_CLIENT_SECRET is required for BFF_CLIENT_AUTH_METHOD={auth_method}")
    if auth_method == "auto" and not client_secret and not private_key:
        r.problems.append("BFF_CLIENT_SECRET is required (or set BFF_CLIENT_PRIVATE_KEY for private_key_jwt)")
    return {
        "issuer": issuer,
        "discovery_url": discovery_url,
        "client_id": r.required("BFF_CLIENT_ID", "the client id registered at the IdP"),
        "client_secret": client_secret,
        "client_auth_method": auth_method,
        "client_private_key": private_key,
        "use_par": r.boolean("BFF_USE_PAR", False),
        "scopes": _scopes(r),
        "extra_auth_params": _extra_params(r),
        "id_token_algs": _id_token_algs(r),
        "fetch_userinfo": r.choice("BFF_FETCH_USERINFO", "auto", ("auto", "true", "false")),
        "revoke_on_logout": r.boolean("BFF_REVOKE_ON_LOGOUT", True),
    }


def _key_text(r: _Reader, name: str) -> str | None:
    """A PEM or JWK given inline or as the path of a file holding one."""
    text = r.raw(name)
    if text and not text.lstrip().startswith(("-----BEGIN", "{")):
        path = Path(text)
        if path.is_file():
            return path.read_text()
        r.problems.append(f"{name} must be a PEM/JWK or the path of a file holding one")
        return text
    if text:
        from .keys import load_private_key  # local import: cryptography only when a key is set

        try:
            load_private_key(text, name)
        except ValueError as exc:
            r.problems.append(str(exc))
    return text


def _scopes(r: _Reader) -> tuple[str, ...]:
    scopes = tuple((r.raw("BFF_SCOPES") or "openid profile email").split())
    if "openid" not in scopes:
        r.problems.append("BFF_SCOPES must include openid")
    return scopes


_RESERVED_PARAMS = frozenset(
    {
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
        "redirect_uri",
        "client_id",
        "response_type",
        "scope",
        "request_uri",
        "dpop_jkt",
    }
)


def _extra_params(r: _Reader) -> tuple[tuple[str, str], ...]:
    params: list[tuple[str, str]] = []
    raw = r.raw("BFF_EXTRA_AUTH_PARAMS")
    for pair in raw.split("&") if raw else []:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            r.problems.append("BFF_EXTRA_AUTH_PARAMS must look like key=value&key2=value2")
            break
        if k in _RESERVED_PARAMS:
            r.problems.append(f"BFF_EXTRA_AUTH_PARAMS may not set {k}; the BFF sets it")
            break
        params.append((k, v))
    return tuple(params)


def _id_token_algs(r: _Reader) -> tuple[str, ...]:
    # OIDC Core §3.1.3.7 step 7: the registered id_token_signed_response_alg, RS256 unless
    # registered otherwise; anything else the IdP merely advertises is refused.
    algs_raw = r.raw("BFF_ID_TOKEN_ALGS")
    if not algs_raw:
        return ("RS256",)
    algs = tuple(a.strip() for a in algs_raw.split(",") if a.strip())
    bad = [a for a in algs if a not in ASYMMETRIC_ALGS]
    if bad or not algs:
        r.problems.append(
            f"BFF_ID_TOKEN_ALGS may hold only asymmetric algorithms ({', '.join(ASYMMETRIC_ALGS)}),"
            f" got {', '.join(bad) or 'nothing'}"
        )
    return algs


def _secrets(r: _Reader) -> Values:
    secret_raw = r.required("BFF_SECRET_KEY", "at least 32 characters; comma-separated to rotate")
    secret_keys = tuple(k.strip() for k in secret_raw.split(",") if k.strip())
    if secret_raw and (not secret_keys or any(len(k) < 32 for k in secret_keys)):
        r.problems.append("BFF_SECRET_KEY: every key must be at least 32 characters")
    enc_raw = r.raw("BFF_ENCRYPTION_KEYS")
    encryption_keys: tuple[str, ...] = ()
    if enc_raw:
        from .session.crypto import parse_key  # local import: settings stays light

        encryption_keys = tuple(k.strip() for k in enc_raw.split(",") if k.strip())
        for key in encryption_keys:
            try:
                parse_key(key)
            except ValueError as exc:
                r.problems.append(f"BFF_ENCRYPTION_KEYS: {exc}")
                break
    return {"secret_keys": secret_keys, "encryption_keys": encryption_keys}


_REDIS_SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
)


def _store(r: _Reader) -> Values:
    store = r.choice("BFF_SESSION_STORE", "redis", ("redis", "memory"))
    redis_url = r.raw("BFF_REDIS_URL") or "redis://localhost:6379/0"
    if store == "redis":
        if urlsplit(redis_url).scheme not in _REDIS_SCHEMES:
            r.problems.append(
                f"BFF_REDIS_URL must start with one of {', '.join(s + '://' for s in _REDIS_SCHEMES)}"
            )
        else:
            from .session.redis_store import check_url  # local import: settings stays light

            try:
                check_url(redis_url)
            except ValueError as exc:
                r.problems.append(f"BFF_REDIS_URL: {exc}")
    return {
        "session_store": store,
        "redis_url": redis_url,
        "redis_timeout": r.number("BFF_REDIS_TIMEOUT", 2.0, minimum=0.1, maximum=60.0),
        "session_idle_timeout": r.integer("BFF_SESSION_IDLE_TIMEOUT", 1800, minimum=1),
        "session_absolute_timeout": r.integer("BFF_SESSION_ABSOLUTE_TIMEOUT", 43200, minimum=1),
        "session_cache_ttl": r.integer("BFF_SESSION_CACHE_TTL", 30, minimum=0, maximum=3600),
        "session_cache_size": r.integer("BFF_SESSION_CACHE_SIZE", 10000, minimum=0),
        "max_sessions_per_user": r.integer("BFF_MAX_SESSIONS_PER_USER", 0, minimum=0),
    }


def _browser(r: _Reader, public_url: str, allow_http: bool) -> Values:
    """What the browser sees: cookies, redirects, the served SPA and its headers."""
    post_logout = r.raw("BFF_POST_LOGOUT_REDIRECT_URI") or (f"{public_url}/" if public_url else "")
    if r.raw("BFF_POST_LOGOUT_REDIRECT_URI"):
        post_logout = _check_url(
            r, "BFF_POST_LOGOUT_REDIRECT_URI", post_logout, allow_http, origin_only=False
        )
    secure = public_url.startswith("https://")
    # __Host-Http- (RFC 10017): only an HttpOnly cookie set over https may carry it, so
    # script cannot plant one; browsers without the rule still enforce the __Host- part.
    cookie_name = r.raw("BFF_COOKIE_NAME") or ("__Host-Http-bff_session" if secure else "bff_session")
    if not cookie_name.replace("_", "").replace("-", "").isalnum():
        r.problems.append("BFF_COOKIE_NAME may hold only letters, digits, '-' and '_'")
    if cookie_name.lower().startswith(("__host-", "__secure-", "__http-")) and not secure:
        r.problems.append(
            "BFF_COOKIE_NAME with a __Host-, __Http- or __Secure- prefix needs an https BFF_PUBLIC_URL"
        )
    values: Values = {
        "post_logout_redirect_uri": post_logout,
        "cookie_name": cookie_name,
        "cookie_samesite": r.choice("BFF_COOKIE_SAMESITE", "lax", ("lax", "strict")),
        "device_bound_sessions": r.choice(
            "BFF_DEVICE_BOUND_SESSIONS", "off", ("off", "optional", "required")
        ),
        "dbsc_cookie_ttl": r.integer("BFF_DBSC_COOKIE_TTL", 600, minimum=10, maximum=86400),
        "dbsc_registration_grace": r.integer("BFF_DBSC_REGISTRATION_GRACE", 60, minimum=5, maximum=3600),
        "end_session_on_browser_change": r.boolean("BFF_END_SESSION_ON_BROWSER_CHANGE", False),
    }
    static_raw = r.raw("BFF_STATIC_DIR")
    if static_raw:
        values["static_dir"] = Path(static_raw)
        if not (values["static_dir"] / "index.html").is_file():
            r.problems.append(f"BFF_STATIC_DIR must be a folder holding index.html, got {static_raw!r}")
    csp = r.raw("BFF_CONTENT_SECURITY_POLICY")
    if csp is not None:
        if "\r" in csp or "\n" in csp:
            r.problems.append("BFF_CONTENT_SECURITY_POLICY must be one line")
        values["content_security_policy"] = csp
    frame_ancestors = r.raw("BFF_FRAME_ANCESTORS")
    if frame_ancestors is not None:
        values["frame_ancestors"] = frame_ancestors
    return values


def _proxy(r: _Reader) -> Values:
    routes_raw = r.raw("BFF_API_ROUTES")
    proxies = tuple(p.strip() for p in (r.raw("BFF_TRUSTED_PROXIES") or "").split(",") if p.strip())
    for p in proxies:
        try:
            ipaddress.ip_network(p, strict=False)
        except ValueError:
            r.problems.append(f"BFF_TRUSTED_PROXIES entries must be IP addresses or networks, got {p!r}")
            break
    return {
        "api_routes": parse_api_routes(routes_raw, r.problems) if routes_raw else (),
        "trusted_proxies": proxies,
        "retry_body_limit": r.integer("BFF_RETRY_BODY_LIMIT", 65536, minimum=0, maximum=16 * 1024 * 1024),
        "ws_max_per_session": r.integer("BFF_WS_MAX_PER_SESSION", 16, minimum=1),
        "ws_max_per_process": r.integer("BFF_WS_MAX_PER_PROCESS", 10000, minimum=1),
        "ws_max_message_size": r.integer(
            "BFF_WS_MAX_MESSAGE_SIZE", 1048576, minimum=1024, maximum=64 * 1024 * 1024
        ),
    }


def _timings_and_limits(r: _Reader) -> Values:
    return {
        "token_refresh_skew": r.integer("BFF_TOKEN_REFRESH_SKEW", 60, minimum=0),
        "assumed_token_lifetime": r.integer("BFF_ASSUMED_TOKEN_LIFETIME", 300, minimum=10, maximum=86400),
        "clock_skew": r.integer("BFF_CLOCK_SKEW", 60, minimum=0, maximum=600),
        "id_token_max_iat_age": r.integer("BFF_ID_TOKEN_MAX_IAT_AGE", 600, minimum=10, maximum=86400),
        "login_timeout": r.integer("BFF_LOGIN_TIMEOUT", 600, minimum=30, maximum=3600),
        "max_pending_logins": r.integer("BFF_MAX_PENDING_LOGINS", 10, minimum=1),
        "max_body_size": r.integer("BFF_MAX_BODY_SIZE", 65536, minimum=1024),
        "max_header_size": r.integer("BFF_MAX_HEADER_SIZE", 32768, minimum=1024),
    }


def _server(r: _Reader) -> Values:
    return {
        "host": r.raw("BFF_HOST") or "127.0.0.1",
        "port": r.integer("BFF_PORT", 8080, minimum=1, maximum=65535),
        "workers": r.integer("BFF_WORKERS", 1, minimum=1, maximum=256),
        "log_format": r.choice("BFF_LOG_FORMAT", "json", ("json", "text")),
        "log_level": r.choice("BFF_LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper(),
        "metrics_enabled": r.boolean("BFF_METRICS_ENABLED", True),
    }


def _sender_constraint(r: _Reader, values: Values) -> Values:
    """DPoP and the FAPI 2.0 profile, which turns PAR and DPoP on and narrows the algorithms
    (bff/profiles.py checks the rest of its rules)."""
    profile = r.choice("BFF_PROFILE", "none", ("none", "fapi2"))
    out: Values = {
        "profile": profile,
        "dpop": r.boolean("BFF_DPOP", profile == "fapi2"),
        "dpop_client_key": _key_text(r, "BFF_DPOP_CLIENT_KEY"),
    }
    if profile == "fapi2":
        from .profiles import fapi2_config_problems  # local import: settings stays light

        out["use_par"] = True
        r.problems.extend(fapi2_config_problems(r.raw, values, out))
    return out


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from ``env`` (default: os.environ); raise ConfigError listing every problem."""
    r = _Reader(os.environ if env is None else env)
    allow_http = r.boolean("BFF_INSECURE_ALLOW_HTTP", False)
    public_url = r.required("BFF_PUBLIC_URL", "the external origin, e.g. https://app.example.com")
    public_url = _check_url(r, "BFF_PUBLIC_URL", public_url, allow_http, origin_only=True)
    values: Values = {"public_url": public_url, "insecure_allow_http": allow_http}
    for section in (
        _client(r, allow_http),
        _secrets(r),
        _store(r),
        _proxy(r),
        _timings_and_limits(r),
        _server(r),
    ):
        values.update(section)
    values.update(_browser(r, public_url, allow_http))
    values.update(_sender_constraint(r, values))
    if values["session_store"] == "memory" and values["workers"] != 1:
        r.problems.append(
            "BFF_WORKERS must be 1 with BFF_SESSION_STORE=memory (each process would "
            "have its own sessions); use redis for several workers"
        )
    if r.problems:
        raise ConfigError(r.problems)
    return Settings(**values)
