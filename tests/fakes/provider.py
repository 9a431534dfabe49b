"""A real OpenID Connect provider for the tests, run as its own uvicorn process.

It implements what the BFF uses (discovery, JWKS, authorization code with PKCE, PAR,
refresh with rotation, revocation, UserInfo, end session) and can be told, through
``/_control/*``, to misbehave in the ways the OpenID certification and RFC 9700
describe: wrong nonce, bad signature, unknown kid, expired or future-dated ID tokens,
wrong aud/iss/azp, ``alg: none``, HMAC signed with the public key, error responses,
a wrong ``iss`` authorization-response parameter, slow or failing endpoints. It also
mints logout tokens (valid and forged) for back-channel logout tests.

The login is automatic: /authorize signs in ``login_hint`` (or the default user)
without a form, because the tests are not about a login page.

Run: ``python -m tests.fakes.provider --port 9400``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

import uvicorn
from joserfc import jws, jwt
from joserfc.jwk import ECKey, RSAKey, import_key
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from demo.dpop_verify import ProofError, ProofVerifier

BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
# The BFF itself, as the subject of its client-credentials tokens.
SERVICE_ACCOUNT = {"sub": "service-account-bff-test", "preferred_username": "service-account-bff-test"}

USERS: dict[str, dict[str, Any]] = {
    "alice": {
        "sub": "user-alice-0001",
        "name": "Alice Example",
        "email": "alice@example.com",
        "email_verified": True,
        "preferred_username": "alice",
    },
    "bob": {
        "sub": "user-bob-0002",
        "name": "Bob Example",
        "email": "bob@example.com",
        "email_verified": True,
        "preferred_username": "bob",
    },
}

# More users for load and soak runs (scripts/soak.py): user01 .. user20.
USERS.update(
    {
        f"user{i:02d}": {
            "sub": f"user-user{i:02d}-{1000 + i:04d}",
            "name": f"User {i:02d} Example",
            "email": f"user{i:02d}@example.com",
            "email_verified": True,
            "preferred_username": f"user{i:02d}",
        }
        for i in range(1, 21)
    }
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def token_hash(value: str) -> str:
    return b64url(hashlib.sha256(value.encode()).digest()[:16])


class State:
    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self.keys = [RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig", "alg": "RS256"})]
        self.other_key = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig", "alg": "RS256"})
        # An EC key in the JWKS (with "publish_ec_key"): for tokens signed with an algorithm
        # the IdP advertises but the client never registered.
        self.ec_key = ECKey.generate_key("P-256", parameters={"kid": "ec1", "use": "sig", "alg": "ES256"})
        self.reset()

    def reset(self) -> None:
        self.config: dict[str, Any] = {
            "client_id": "bff-test",
            "client_secret": "test-secret",
            "client_jwk": None,  # public JWK for private_key_jwt
            "auth_methods": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
            "access_ttl": 300,
            "refresh_access_ttl": None,  # lifetime of access tokens from a refresh (default: access_ttl)
            "id_ttl": 300,
            "rotate_refresh": True,
            "issue_refresh_token": True,
            "claims_in_id_token": True,  # False: profile/email claims only from UserInfo
            "iss_param": True,  # send iss in the authorization response
            "advertise_iss": True,
            "advertise_par": True,
            "require_par": False,
            "advertise_revocation": True,
            "advertise_end_session": True,
            "default_user": "alice",
            "misbehave": "",  # see id_token(); applies to the code exchange and refreshes
            # Misbehaviour of refreshes only: any of id_token()'s, or "other_user" (the
            # refresh answers with tokens of another user).
            "refresh_misbehave": "",
            "authorize_error": "",  # e.g. access_denied
            "iss_override": None,  # value of the iss authorization-response parameter
            "token_delay": 0.0,
            "token_status": 0,  # answer the token endpoint with this status (500, 503, ...)
            "refresh_error": "",  # e.g. invalid_grant
            "id_token_on_refresh": True,
            "algs": ["RS256"],
            # UserInfo as a signed JWT (OIDC Core §5.3.2): "", "signed", or a broken variant:
            # "signed_bad_signature", "signed_other_sub", "signed_wrong_iss", "signed_wrong_aud",
            # "signed_es256" (an algorithm the client did not register), "not_json".
            "userinfo_mode": "",
            "publish_ec_key": False,
            "signing_alg": "RS256",  # ES256: every token signed with the EC key (FAPI 2.0 tests)
            "omit_expires_in": False,  # RFC 6749 makes expires_in only RECOMMENDED
            # Token exchange (RFC 8693) and client credentials: refuse with this OAuth error,
            # answer without issued_token_type ("malformed"), or live this long.
            "exchange_error": "",
            "exchange_malformed": False,
            "client_credentials_error": "",
            "route_token_ttl": None,  # default: access_ttl
            # DPoP (RFC 9449): "dpop" advertises and honours proofs (tokens bound to the
            # proof's key); "dpop_required" refuses token requests without one; "dpop_nonce"
            # demands the server nonce (400 use_dpop_nonce + DPoP-Nonce) and
            # "dpop_rotate_nonce" sends a new one with every answer; "dpop_ignore" issues
            # Bearer tokens whatever the client sends (an IdP that does not do DPoP).
            "dpop": False,
            "dpop_required": False,
            "dpop_nonce": False,
            "dpop_rotate_nonce": False,
            "dpop_ignore": False,
            "dpop_algs": ["ES256", "PS256", "EdDSA", "RS256"],
            # Answers replaced for the fuzz tests, by endpoint ("discovery", "jwks", "token",
            # "userinfo", "revocation", "par"): {"status", "content_type", "body"} replaces
            # the whole answer; {"set": {...}, "delete": [...]} edits the real JSON answer
            # (and "status" its status). See overridden().
            "overrides": {},
        }
        self.codes: dict[str, dict[str, Any]] = {}
        self.refresh: dict[str, dict[str, Any]] = {}
        self.par: dict[str, dict[str, Any]] = {}
        self.revoked: list[str] = []
        self.end_session_calls: list[dict[str, str]] = []
        self.stats: dict[str, int] = {
            "authorize": 0,
            "authorization_code": 0,
            "refresh_token": 0,
            "revocation": 0,
            "par": 0,
            "userinfo": 0,
            "jwks": 0,
            "discovery": 0,
            TOKEN_EXCHANGE: 0,
            "client_credentials": 0,
        }
        # Each token exchange / client credentials request: grant, audience, resource, scope.
        self.route_token_requests: list[dict[str, Any]] = []
        self.dpop = ProofVerifier()
        self.dpop_proofs: list[dict[str, Any]] = []  # endpoint, jkt, jti, nonce of each proof
        self.dpop_nonce_challenges = 0
        self.dpop_jkts: list[str | None] = []  # the dpop_jkt of each authorization (or PAR)
        self.client_auth_seen: list[str] = []
        self.assertion_audiences: list[dict[str, Any]] = []  # endpoint path, the assertion's aud
        self.access_tokens: dict[str, dict[str, Any]] = {}
        self.id_tokens_issued: list[str] = []

    @property
    def key(self) -> RSAKey:
        return self.keys[0]

    def jwks(self) -> dict[str, Any]:
        ec = self.config["publish_ec_key"] or self.config["signing_alg"] == "ES256"
        keys = [*self.keys, self.ec_key] if ec else self.keys
        return {"keys": [k.as_dict(private=False) for k in keys]}

    def sign_es256(self, claims: dict[str, Any], header: dict[str, Any]) -> str:
        return jwt.encode({**header, "alg": "ES256", "kid": "ec1"}, claims, self.ec_key, algorithms=["ES256"])

    def metadata(self) -> dict[str, Any]:
        c = self.config
        i = self.issuer
        meta: dict[str, Any] = {
            "issuer": i,
            "authorization_endpoint": f"{i}/authorize",
            "token_endpoint": f"{i}/token",
            "jwks_uri": f"{i}/jwks",
            "userinfo_endpoint": f"{i}/userinfo",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": c["algs"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "token_endpoint_auth_methods_supported": c["auth_methods"],
            "code_challenge_methods_supported": ["S256"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "backchannel_logout_supported": True,
            "backchannel_logout_session_supported": True,
        }
        if c["advertise_iss"]:
            meta["authorization_response_iss_parameter_supported"] = True
        if c["advertise_par"]:
            meta["pushed_authorization_request_endpoint"] = f"{i}/par"
            meta["require_pushed_authorization_requests"] = c["require_par"]
        if c["advertise_revocation"]:
            meta["revocation_endpoint"] = f"{i}/revoke"
        if c["advertise_end_session"]:
            meta["end_session_endpoint"] = f"{i}/end_session"
        if c["dpop"]:
            meta["dpop_signing_alg_values_supported"] = c["dpop_algs"]
        return meta

    # --- tokens ---------------------------------------------------------------------
    def sign(
        self, claims: dict[str, Any], header: dict[str, Any] | None = None, key: RSAKey | None = None
    ) -> str:
        if key is None and self.config["signing_alg"] == "ES256" and "alg" not in (header or {}):
            return self.sign_es256(claims, {"typ": "JWT", **(header or {})})
        k = key or self.key
        h = {"alg": "RS256", "kid": k.kid, "typ": "JWT"}
        h.update(header or {})
        return jwt.encode(h, claims, k, algorithms=[h["alg"]])

    def access_token(
        self,
        user: dict[str, Any],
        sid: str | None,
        scope: str,
        ttl: int,
        aud: str | list[str] = "api",
        jkt: str | None = None,
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user["sub"],
            "aud": aud,
            "azp": self.config["client_id"],
            "exp": now + ttl,
            "iat": now,
            "jti": secrets.token_hex(8),
            "scope": scope,
            "sid": sid,
            "preferred_username": user["preferred_username"],
        }
        if jkt is not None:
            claims["cnf"] = {"jkt": jkt}  # RFC 9449 §6.1
        token = self.sign(claims, {"typ": "at+jwt"})
        self.access_tokens[token] = {"user": user, "sid": sid, "jkt": jkt}
        return token

    def id_token(
        self,
        user: dict[str, Any],
        nonce: str | None,
        sid: str,
        access_token: str,
        misbehave: str = "",
        auth_time: int | None = None,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": user["sub"],
            "aud": self.config["client_id"],
            "exp": now + self.config["id_ttl"],
            "iat": now,
            "auth_time": auth_time or now,  # the original authentication's time, also on refresh
            "sid": sid,
            "at_hash": token_hash(access_token),
        }
        if self.config["claims_in_id_token"]:
            claims.update({k: v for k, v in user.items() if k != "sub"})
        if nonce is not None:
            claims["nonce"] = nonce
        header: dict[str, Any] = {}
        m = misbehave
        if m == "wrong_nonce":
            claims["nonce"] = "not-the-nonce"
        elif m == "missing_nonce":
            claims.pop("nonce", None)
        elif m == "expired":
            claims["iat"], claims["exp"] = now - 7200, now - 3600
        elif m == "stale_iat":  # a week old, yet not expired
            claims["iat"] = now - 7 * 86400
        elif m == "iat_hours_ago":
            claims["iat"] = now - 5 * 3600
        elif m == "auth_time_changed":
            claims["auth_time"] = now - 12345
        elif m == "azp_added":
            claims["azp"] = self.config["client_id"]
        elif m == "future_iat":
            claims["iat"] = now + 3600
            claims["exp"] = now + 7200
        elif m == "wrong_aud":
            claims["aud"] = "someone-else"
        elif m == "multi_aud_no_azp":
            claims["aud"] = [self.config["client_id"], "someone-else"]
        elif m == "wrong_azp":
            claims["azp"] = "someone-else"
        elif m == "wrong_iss":
            claims["iss"] = "https://evil.example.com"
        elif m == "missing_sub":
            claims.pop("sub")
        elif m == "bad_at_hash":
            claims["at_hash"] = token_hash("another-token")
        elif m == "missing_exp":
            claims.pop("exp")
        if m == "alg_none":
            head = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
            return f"{head}.{b64url(json.dumps(claims).encode())}."
        if m == "hs256_public_key":
            # The classic confusion: HMAC "signed" with the RSA public key as secret.
            return self.hmac_with_public_key({"alg": "HS256", "kid": self.key.kid, "typ": "JWT"}, claims)
        if m == "bad_signature":
            token = self.sign(claims, header)
            head, body, sig = token.split(".")
            return f"{head}.{body}.{sig[:-6]}{'AAAAAA' if not sig.endswith('AAAAAA') else 'BBBBBB'}"
        if m == "wrong_key":
            return self.sign(claims, header, key=self.other_key)
        if m == "signed_es256":
            return self.sign_es256(claims, {"typ": "JWT"})
        if m == "unknown_kid":
            rogue = RSAKey.generate_key(2048, parameters={"kid": "rogue"})
            return self.sign(claims, {"kid": "rogue"}, key=rogue)
        if m == "no_kid":
            return jwt.encode({"alg": "RS256", "typ": "JWT"}, claims, self.key, algorithms=["RS256"])
        return self.sign(claims, header)

    def hmac_with_public_key(self, header: dict[str, Any], claims: dict[str, Any]) -> str:
        # Libraries refuse to do this on purpose, so it is done by hand.
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        mac = hmac.new(self.key.as_pem(private=False), signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64url(mac)}"

    def logout_token(self, spec: dict[str, Any]) -> str:
        now = int(time.time())
        user = USERS.get(spec.get("user", "alice"), USERS["alice"])
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.config["client_id"],
            "iat": now,
            "exp": now + 120,
            "jti": secrets.token_hex(12),
            "events": {BACKCHANNEL_EVENT: {}},
        }
        if spec.get("sub", True):
            claims["sub"] = user["sub"]
        if spec.get("sid"):
            claims["sid"] = spec["sid"]
        for k, v in (spec.get("claims") or {}).items():
            if v is None:
                claims.pop(k, None)
            else:
                claims[k] = v
        header = {"typ": "logout+jwt", **(spec.get("header") or {})}
        forge = spec.get("forge", "")
        if forge == "alg_none":
            head = b64url(json.dumps({"alg": "none", "typ": "logout+jwt"}).encode())
            return f"{head}.{b64url(json.dumps(claims).encode())}."
        if forge == "wrong_key":
            return self.sign(claims, header, key=self.other_key)
        if forge == "es256":
            return self.sign_es256(claims, header)
        if forge == "bad_signature":
            token = self.sign(claims, header)
            head, body, sig = token.split(".")
            return f"{head}.{body}.{sig[::-1]}"
        if forge == "hs256_public_key":
            return self.hmac_with_public_key(
                {"alg": "HS256", "kid": self.key.kid, "typ": "logout+jwt"}, claims
            )
        return self.sign(claims, header)


async def read_form(request: Request) -> dict[str, Any]:
    """The form; a parameter given several times (RFC 8707 resource) becomes a list."""
    form: dict[str, Any] = {}
    for key, value in parse_qsl((await request.body()).decode(), keep_blank_values=True):
        if key not in form:
            form[key] = value
        elif isinstance(form[key], list):
            form[key].append(value)
        else:
            form[key] = [form[key], value]
    return form


def jwt_claims(token: str) -> dict[str, Any]:
    try:
        payload = token.split(".")[1]
        return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
    except (IndexError, ValueError):
        return {}


def create_app(issuer: str) -> Starlette:
    st = State(issuer)

    def oauth_error(error: str, description: str = "", status: int = 400) -> JSONResponse:
        return JSONResponse(
            {"error": error, "error_description": description},
            status_code=status,
            headers={"Cache-Control": "no-store"},
        )

    async def authenticate_client(request: Request, form: dict[str, str]) -> str | None:
        """The client id when authentication succeeds, else None."""
        c = st.config
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            try:
                raw = base64.b64decode(header[6:]).decode()
            except ValueError:
                return None
            cid, _, secret = raw.partition(":")
            cid, secret = unquote(cid), unquote(secret)
            st.client_auth_seen.append("client_secret_basic")
            ok = "client_secret_basic" in c["auth_methods"]
            return (
                cid
                if ok and cid == c["client_id"] and hmac.compare_digest(secret, c["client_secret"])
                else None
            )
        if "client_assertion" in form:
            st.client_auth_seen.append("private_key_jwt")
            if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
                return None
            if not c["client_jwk"]:
                return None
            key = import_key(c["client_jwk"])
            try:
                obj = jws.deserialize_compact(
                    form["client_assertion"], key, algorithms=["RS256", "ES256", "PS256"]
                )
            except Exception:
                return None
            claims = json.loads(obj.payload)
            st.assertion_audiences.append({"endpoint": request.url.path, "aud": claims.get("aud")})
            audiences = claims.get("aud") if isinstance(claims.get("aud"), list) else [claims.get("aud")]
            valid_aud = any(a in (st.issuer, f"{st.issuer}/token", f"{st.issuer}/par") for a in audiences)
            if (
                claims.get("iss") != c["client_id"]
                or claims.get("sub") != c["client_id"]
                or not valid_aud
                or claims.get("exp", 0) < time.time()
            ):
                return None
            return str(c["client_id"])
        if "client_secret" in form:
            st.client_auth_seen.append("client_secret_post")
            ok = "client_secret_post" in c["auth_methods"]
            if (
                ok
                and form.get("client_id") == c["client_id"]
                and hmac.compare_digest(form["client_secret"], c["client_secret"])
            ):
                return str(c["client_id"])
        return None

    async def discovery(request: Request) -> Response:
        st.stats["discovery"] += 1
        return JSONResponse(st.metadata())

    async def jwks(request: Request) -> Response:
        st.stats["jwks"] += 1
        return JSONResponse(st.jwks())

    def check_authz_params(params: dict[str, str]) -> str | None:
        if params.get("client_id") != st.config["client_id"]:
            return "unknown client_id"
        if params.get("response_type") != "code":
            return "response_type must be code"
        if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
            return "PKCE S256 is required"
        if not params.get("redirect_uri", "").endswith("/bff/callback"):
            return "redirect_uri not registered"
        if "openid" not in params.get("scope", "").split():
            return "scope must include openid"
        return None

    async def par(request: Request) -> Response:
        st.stats["par"] += 1
        form = await read_form(request)
        if await authenticate_client(request, form) is None:
            return oauth_error("invalid_client", "client authentication failed", 401)
        problem = check_authz_params(form)
        if problem:
            return oauth_error("invalid_request", problem)
        uri = f"urn:ietf:params:oauth:request_uri:{secrets.token_urlsafe(16)}"
        st.par[uri] = {
            "params": {k: str(v) for k, v in form.items() if not k.startswith("client_")}
            | {"client_id": st.config["client_id"]},
            "exp": time.time() + 60,
        }
        return JSONResponse({"request_uri": uri, "expires_in": 60}, status_code=201)

    async def authorize(request: Request) -> Response:
        st.stats["authorize"] += 1
        params = dict(request.query_params)
        if "request_uri" in params:
            entry = st.par.pop(params["request_uri"], None)
            if (
                entry is None
                or entry["exp"] < time.time()
                or params.get("client_id") != st.config["client_id"]
            ):
                return oauth_error("invalid_request_uri", "unknown or expired request_uri")
            params = entry["params"]
        elif st.config["require_par"]:
            return oauth_error("invalid_request", "PAR is required")
        problem = check_authz_params(params)
        if problem:
            return oauth_error("invalid_request", problem)
        redirect = params["redirect_uri"]
        answer: dict[str, str] = {"state": params.get("state", "")}
        iss = st.config["iss_override"] if st.config["iss_override"] is not None else st.issuer
        if st.config["iss_param"]:
            answer["iss"] = iss
        if st.config["authorize_error"]:
            answer["error"] = st.config["authorize_error"]
            answer["error_description"] = "The user denied the request"
            return RedirectResponse(f"{redirect}?{urlencode(answer)}", status_code=302)
        user_name = (
            request.query_params.get("login_hint") or params.get("login_hint") or st.config["default_user"]
        )
        user = USERS.get(user_name)
        if user is None:
            return oauth_error("invalid_request", "unknown user")
        code = secrets.token_urlsafe(24)
        st.codes[code] = {
            "user": user,
            "nonce": params.get("nonce"),
            "challenge": params["code_challenge"],
            "redirect_uri": redirect,
            "scope": params.get("scope", ""),
            "exp": time.time() + 60,
            "sid": secrets.token_hex(8),
            "used": False,
            "auth_time": int(time.time()),
            "dpop_jkt": params.get("dpop_jkt"),
        }
        st.dpop_jkts.append(params.get("dpop_jkt"))
        answer["code"] = code
        return RedirectResponse(f"{redirect}?{urlencode(answer)}", status_code=302)

    def issue(
        user: dict[str, Any],
        nonce: str | None,
        sid: str,
        scope: str,
        with_id: bool,
        refresh: bool = False,
        auth_time: int | None = None,
        jkt: str | None = None,
    ) -> dict[str, Any]:
        ttl = st.config["access_ttl"]
        if refresh and st.config["refresh_access_ttl"] is not None:
            ttl = st.config["refresh_access_ttl"]
        access = st.access_token(user, sid, scope, ttl, jkt=jkt)
        new_refresh = secrets.token_urlsafe(32)
        st.refresh[new_refresh] = {
            "user": user,
            "sid": sid,
            "scope": scope,
            "valid": True,
            "auth_time": auth_time,
            "jkt": jkt,
        }
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "DPoP" if jkt else "Bearer",
            "expires_in": ttl,
            "scope": scope,
        }
        if st.config["omit_expires_in"]:
            del body["expires_in"]
        if st.config["issue_refresh_token"]:
            body["refresh_token"] = new_refresh
        if with_id:
            misbehave = st.config["refresh_misbehave"] if refresh else ""
            misbehave = misbehave or st.config["misbehave"]
            if misbehave != "no_id_token":
                body["id_token"] = st.id_token(user, nonce, sid, access, misbehave, auth_time)
                st.id_tokens_issued.append(body["id_token"])
        return body

    async def token(request: Request) -> Response:
        form = await read_form(request)
        grant = form.get("grant_type", "")
        if grant in st.stats:
            st.stats[grant] += 1
        if st.config["token_delay"]:
            await asyncio.sleep(st.config["token_delay"])
        if st.config["token_status"]:
            return oauth_error("server_error", "configured failure", st.config["token_status"])
        if await authenticate_client(request, form) is None:
            return oauth_error("invalid_client", "client authentication failed", 401)
        jkt = dpop_proof(request, "POST", f"{st.issuer}/token", "token")
        if isinstance(jkt, Response):
            return jkt
        headers = {"Cache-Control": "no-store", **nonce_header()}
        if grant == "authorization_code":
            entry = st.codes.get(form.get("code", ""))
            if entry is None or entry["exp"] < time.time():
                return oauth_error("invalid_grant", "unknown or expired code")
            if entry["used"]:
                # RFC 6749 §4.1.2: a reused code revokes what it issued.
                for r in st.refresh.values():
                    if r["sid"] == entry["sid"]:
                        r["valid"] = False
                return oauth_error("invalid_grant", "code already used")
            entry["used"] = True
            if form.get("redirect_uri") != entry["redirect_uri"]:
                return oauth_error("invalid_grant", "redirect_uri mismatch")
            verifier = form.get("code_verifier", "")
            if b64url(hashlib.sha256(verifier.encode()).digest()) != entry["challenge"]:
                return oauth_error("invalid_grant", "PKCE verification failed")
            honoured = st.config["dpop"] and not st.config["dpop_ignore"]
            if honoured and entry.get("dpop_jkt") and entry["dpop_jkt"] != jkt:
                return oauth_error("invalid_grant", "the proof's key is not the one named by dpop_jkt")
            body = issue(
                entry["user"],
                entry["nonce"],
                entry["sid"],
                entry["scope"],
                True,
                auth_time=entry["auth_time"],
                jkt=jkt,
            )
            return JSONResponse(body, headers=headers)
        if grant == "refresh_token":
            if "scope" in form:
                return oauth_error("invalid_scope", "this provider refuses scope on refresh")
            if st.config["refresh_error"]:
                return oauth_error(st.config["refresh_error"], "configured refresh failure")
            entry = st.refresh.get(form.get("refresh_token", ""))
            if entry is None or not entry["valid"]:
                return oauth_error("invalid_grant", "refresh token invalid")
            if entry.get("jkt") and entry["jkt"] != jkt:
                return oauth_error("invalid_dpop_proof", "refresh with another key than the grant's")
            user = entry["user"]
            if st.config["refresh_misbehave"] == "other_user":
                user = next(u for u in USERS.values() if u["sub"] != user["sub"])
            body = issue(
                user,
                None,
                entry["sid"],
                entry["scope"],
                st.config["id_token_on_refresh"],
                refresh=True,
                auth_time=entry.get("auth_time"),
                jkt=jkt,
            )
            if st.config["rotate_refresh"]:
                entry["valid"] = False
            elif "refresh_token" in body:  # no rotation: hand back the same refresh token
                st.refresh.pop(body["refresh_token"], None)
                body["refresh_token"] = form["refresh_token"]
            return JSONResponse(body, headers=headers)
        if grant in (TOKEN_EXCHANGE, "client_credentials"):
            return route_token(grant, form, jkt)
        return oauth_error("unsupported_grant_type", grant)

    def dpop_proof(
        request: Request, method: str, url: str, endpoint: str, access_token: str | None = None
    ) -> Any:
        """The proof's key thumbprint, None without a (honoured) proof, or the error answer."""
        c = st.config
        proof = request.headers.get("dpop")
        if not c["dpop"] or c["dpop_ignore"]:
            return None
        if not proof:
            if c["dpop_required"]:
                return oauth_error("invalid_dpop_proof", "a DPoP proof is required")
            return None
        st.dpop.require_nonce = c["dpop_nonce"]
        try:
            claims = st.dpop.verify(proof, method, url, access_token=access_token)
        except ProofError as exc:
            if exc.error == "use_dpop_nonce":
                st.dpop_nonce_challenges += 1
                response = oauth_error("use_dpop_nonce", exc.message)
                response.headers["DPoP-Nonce"] = st.dpop.nonce
                return response
            return oauth_error("invalid_dpop_proof", exc.message)
        st.dpop_proofs.append(
            {"endpoint": endpoint, "jkt": claims["_jkt"], "jti": claims["jti"], "nonce": claims.get("nonce")}
        )
        if c["dpop_rotate_nonce"]:
            st.dpop.rotate_nonce()
        return claims["_jkt"]

    def nonce_header() -> dict[str, str]:
        return {"DPoP-Nonce": st.dpop.nonce} if st.config["dpop"] and st.config["dpop_nonce"] else {}

    def route_token(grant: str, form: dict[str, str | list[str]], jkt: str | None) -> Response:
        """Token exchange (RFC 8693) of one of our access tokens, or client credentials: a
        token whose aud is the requested audience and resources (else "api")."""
        resources = form.get("resource", [])
        resources = [resources] if isinstance(resources, str) else resources
        audience, scope = form.get("audience"), form.get("scope")
        st.route_token_requests.append(
            {"grant": grant, "audience": audience, "resource": resources, "scope": scope}
        )
        if grant == TOKEN_EXCHANGE:
            if st.config["exchange_error"]:
                return oauth_error(st.config["exchange_error"], "configured exchange refusal")
            if form.get("subject_token_type") != ACCESS_TOKEN_TYPE:
                return oauth_error("invalid_request", "subject_token_type must be an access token")
            subject = st.access_tokens.get(str(form.get("subject_token", "")))
            claims = jwt_claims(str(form.get("subject_token", "")))
            if subject is None or claims.get("exp", 0) < time.time():
                return oauth_error("invalid_request", "invalid subject token")
            user, sid = subject["user"], subject["sid"]
            if subject.get("jkt") and subject["jkt"] != jkt:
                return oauth_error("invalid_dpop_proof", "a bound subject token needs a proof of its key")
        else:
            if st.config["client_credentials_error"]:
                return oauth_error(st.config["client_credentials_error"], "configured refusal")
            user, sid = SERVICE_ACCOUNT, None
        aud: str | list[str] = [a for a in [audience, *resources] if isinstance(a, str)] or "api"
        ttl = st.config["route_token_ttl"]
        ttl = st.config["access_ttl"] if ttl is None else ttl
        body: dict[str, Any] = {
            "access_token": st.access_token(user, sid, str(scope or ""), ttl, aud, jkt),
            "token_type": "DPoP" if jkt else "Bearer",
            "expires_in": ttl,
        }
        if grant == TOKEN_EXCHANGE and not st.config["exchange_malformed"]:
            body["issued_token_type"] = ACCESS_TOKEN_TYPE
        return JSONResponse(body, headers={"Cache-Control": "no-store", **nonce_header()})

    async def revoke(request: Request) -> Response:
        st.stats["revocation"] += 1
        form = await read_form(request)
        if await authenticate_client(request, form) is None:
            return oauth_error("invalid_client", "client authentication failed", 401)
        tok = form.get("token", "")
        if tok in st.refresh:
            st.refresh[tok]["valid"] = False
        st.revoked.append(tok)
        return Response(status_code=200)

    async def userinfo(request: Request) -> Response:
        st.stats["userinfo"] += 1
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        entry = st.access_tokens.get(presented)
        if (
            entry is None
            or scheme not in ("Bearer", "DPoP")
            or (entry.get("jkt") is not None) != (scheme == "DPoP")
        ):
            return Response(
                status_code=401, headers={"WWW-Authenticate": f'{scheme or "Bearer"} error="invalid_token"'}
            )
        if entry.get("jkt"):
            jkt = dpop_proof(request, request.method, f"{st.issuer}/userinfo", "userinfo", presented)
            if jkt != entry["jkt"]:
                challenge = (
                    'DPoP error="use_dpop_nonce"'
                    if isinstance(jkt, Response) and st.config["dpop_nonce"]
                    else 'DPoP error="invalid_token"'
                )
                return Response(status_code=401, headers={"WWW-Authenticate": challenge, **nonce_header()})
        user = dict(entry["user"])
        if st.config["misbehave"] == "userinfo_other_sub":
            user["sub"] = "someone-else"
        mode = st.config["userinfo_mode"]
        if mode == "not_json":
            return Response("<html>oops</html>", media_type="text/html")
        if not mode:
            return JSONResponse(user)
        claims = {"iss": st.issuer, "aud": st.config["client_id"], **user}
        if mode == "signed_other_sub":
            claims["sub"] = "user-bob-0002"
        elif mode == "signed_wrong_iss":
            claims["iss"] = "https://evil.example.com"
        elif mode == "signed_wrong_aud":
            claims["aud"] = "someone-else"
        if mode == "signed_es256":
            jwt_text = st.sign_es256(claims, {"typ": "JWT"})
        else:
            jwt_text = st.sign(claims, {"typ": "JWT"})
        if mode == "signed_bad_signature":
            head, body, sig = jwt_text.split(".")
            jwt_text = f"{head}.{body}.{sig[::-1]}"
        return Response(jwt_text, media_type="application/jwt")

    async def end_session(request: Request) -> Response:
        params = dict(request.query_params)
        st.end_session_calls.append(params)
        target = params.get("post_logout_redirect_uri")
        if target:
            if "state" in params:  # RP-Initiated Logout 1.0 §3: passed back as sent
                target += ("&" if "?" in target else "?") + urlencode({"state": params["state"]})
            return RedirectResponse(target, status_code=302)
        return Response("signed out", media_type="text/plain")

    # --- control --------------------------------------------------------------------
    async def control_config(request: Request) -> Response:
        update = await request.json()
        unknown = set(update) - set(st.config)
        if unknown:
            return JSONResponse({"error": f"unknown config keys {sorted(unknown)}"}, status_code=400)
        st.config.update(update)
        return JSONResponse(st.config)

    async def control_reset(request: Request) -> Response:
        st.reset()
        return JSONResponse({"ok": True})

    async def control_stats(request: Request) -> Response:
        return JSONResponse(
            {
                "stats": st.stats,
                "revoked": st.revoked,
                "end_session": st.end_session_calls,
                "client_auth": st.client_auth_seen,
                "assertion_audiences": st.assertion_audiences,
                "valid_refresh_tokens": sum(1 for r in st.refresh.values() if r["valid"]),
                "route_token_requests": st.route_token_requests,
                "dpop_proofs": st.dpop_proofs,
                "dpop_nonce_challenges": st.dpop_nonce_challenges,
                "dpop_jkts": st.dpop_jkts,
            }
        )

    async def control_rotate(request: Request) -> Response:
        body = await request.json() if await request.body() else {}
        kid = body.get("kid") or f"k{secrets.token_hex(3)}"
        if body.get("kty") == "EC":
            new = ECKey.generate_key("P-256", parameters={"kid": kid, "use": "sig", "alg": "ES256"})
        else:
            new = RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})
        st.keys = [new] + (st.keys if body.get("keep_old", True) else [])
        return JSONResponse({"kid": kid, "keys": [k.kid for k in st.keys]})

    async def control_logout_token(request: Request) -> Response:
        return JSONResponse({"logout_token": st.logout_token(await request.json())})

    async def control_sign(request: Request) -> Response:
        body = await request.json()
        return JSONResponse({"token": st.sign(body["claims"], body.get("header"))})

    async def control_end_idp_session(request: Request) -> Response:
        body = await request.json()
        sub = USERS[body["user"]]["sub"]
        for r in st.refresh.values():
            if r["user"]["sub"] == sub:
                r["valid"] = False
        return JSONResponse({"ok": True})

    async def control_id_token(request: Request) -> Response:
        body = await request.json()
        user = USERS[body.get("user", "alice")]
        return JSONResponse(
            {
                "id_token": st.id_token(
                    user,
                    body.get("nonce"),
                    body.get("sid", "s1"),
                    body.get("access_token", "at"),
                    body.get("misbehave", ""),
                )
            }
        )

    async def control_tokens(request: Request) -> Response:
        """Every secret this provider handed out, so tests can look for leaks."""
        return JSONResponse(
            {
                "codes": list(st.codes),
                "refresh_tokens": list(st.refresh),
                "access_tokens": list(st.access_tokens),
                "id_tokens": st.id_tokens_issued,
            }
        )

    async def control_keyset(request: Request) -> Response:
        return JSONResponse({"keys": [k.as_dict(private=True) for k in st.keys]})

    def overridden(name: str, handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            response: Response = await handler(request)
            spec = st.config["overrides"].get(name)
            if not spec:
                return response
            status = spec.get("status") or response.status_code
            if "body" in spec:
                return Response(spec["body"], status_code=status, media_type=spec.get("content_type"))
            try:
                data = json.loads(response.body)
            except ValueError:
                return response
            if isinstance(data, dict):
                for key in spec.get("delete", []):
                    data.pop(key, None)
                data.update(spec.get("set", {}))
            return JSONResponse(data, status_code=status)

        return endpoint

    routes = [
        Route("/.well-known/openid-configuration", overridden("discovery", discovery)),
        Route("/jwks", overridden("jwks", jwks)),
        Route("/authorize", authorize),
        Route("/par", overridden("par", par), methods=["POST"]),
        Route("/token", overridden("token", token), methods=["POST"]),
        Route("/revoke", overridden("revocation", revoke), methods=["POST"]),
        Route("/userinfo", overridden("userinfo", userinfo), methods=["GET", "POST"]),
        Route("/end_session", end_session),
        Route("/_control/config", control_config, methods=["POST"]),
        Route("/_control/reset", control_reset, methods=["POST"]),
        Route("/_control/stats", control_stats),
        Route("/_control/rotate-keys", control_rotate, methods=["POST"]),
        Route("/_control/logout-token", control_logout_token, methods=["POST"]),
        Route("/_control/sign", control_sign, methods=["POST"]),
        Route("/_control/id-token", control_id_token, methods=["POST"]),
        Route("/_control/end-idp-session", control_end_idp_session, methods=["POST"]),
        Route("/_control/keys", control_keyset),
        Route("/_control/tokens", control_tokens),
    ]
    app = Starlette(routes=routes)
    app.state.provider = st
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--issuer")
    args = parser.parse_args()
    issuer = args.issuer or f"http://127.0.0.1:{args.port}"
    uvicorn.run(create_app(issuer), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
