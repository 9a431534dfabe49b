"""The confidential client: authorization request, code exchange, refresh, revocation,
UserInfo and the end-session URL, named after the protocol steps.

Client authentication is chosen from the IdP's metadata unless configured:
private_key_jwt when a key is set, else client_secret_basic, else client_secret_post.
"""

from __future__ import annotations

import base64
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import httpx
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.jwk import Key

from ..challenges import challenge_error
from ..dpop import DPoPKey, Nonces
from ..errors import IdPUnavailable
from ..keys import load_private_key
from ..settings import Settings
from .errors import OIDCError, TokenError
from .provider import Provider, ProviderMetadata

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - RFC 8693 URN
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - RFC 8693 URN

# A token endpoint form; a list value is sent as repeated parameters (RFC 8707 resource).
Form = dict[str, str | list[str]]


@dataclass(frozen=True, slots=True)
class TokenResponse:
    access_token: str
    expires_at: int
    lifetime: int  # expires_in as given, or the assumed lifetime when absent
    refresh_token: str | None
    id_token: str | None
    scope: str | None
    issued_token_type: str | None = None  # RFC 8693 answers
    token_type: str = "Bearer"  # noqa: S105 - a scheme name

    def __repr__(self) -> str:
        return f"TokenResponse(expires_at={self.expires_at}, has_refresh={self.refresh_token is not None})"


def new_pkce() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge), RFC 7636."""
    verifier = secrets.token_urlsafe(48)
    return verifier, create_s256_code_challenge(verifier)


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = urlencode(params)
    return urlunsplit(parts._replace(query=f"{parts.query}&{query}" if parts.query else query))


def _oauth_error(response: httpx.Response) -> str | None:
    try:
        data = response.json()
    except ValueError:
        return None
    return data.get("error") if isinstance(data, dict) and isinstance(data.get("error"), str) else None


def _add_target(form: Form, audience: str | None, resource: tuple[str, ...], scope: str | None) -> None:
    if audience:
        form["audience"] = audience
    if resource:
        form["resource"] = list(resource)
    if scope:
        form["scope"] = scope


def load_signing_key(text: str) -> tuple[Key, str]:
    """The client assertion key (BFF_CLIENT_PRIVATE_KEY) and its algorithm."""
    return load_private_key(text, "BFF_CLIENT_PRIVATE_KEY")


class OIDCClient:
    def __init__(self, settings: Settings, http: httpx.AsyncClient, provider: Provider) -> None:
        self.settings = settings
        self.http = http
        self.provider = provider
        self.nonces = Nonces()  # the IdP's DPoP nonces, by endpoint origin
        self._signing: tuple[Key, str] | None = None
        if settings.client_private_key:
            self._signing = load_signing_key(settings.client_private_key)

    # --- client authentication ------------------------------------------------------
    def auth_method(self, supported: tuple[str, ...]) -> str:
        configured = self.settings.client_auth_method
        if configured != "auto":
            return configured
        if self._signing is not None and ("private_key_jwt" in supported or not self.settings.client_secret):
            return "private_key_jwt"
        if "client_secret_basic" in supported or "client_secret_post" not in supported:
            return "client_secret_basic"
        return "client_secret_post"

    def _authenticate(self, method: str, audience: str, form: Form, headers: dict[str, str]) -> None:
        client_id = self.settings.client_id
        if method == "client_secret_basic":
            # RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
            pair = f"{quote(client_id, safe='')}:{quote(self.settings.client_secret or '', safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        elif method == "client_secret_post":
            form["client_id"] = client_id
            form["client_secret"] = self.settings.client_secret or ""
        elif method == "private_key_jwt":
            if self._signing is None:
                raise OIDCError("client_auth", "private_key_jwt needs BFF_CLIENT_PRIVATE_KEY")
            key, alg = self._signing
            now = int(time.time())
            claims = {
                "iss": client_id,
                "sub": client_id,
                "aud": audience,
                "jti": secrets.token_urlsafe(16),
                "iat": now,
                "exp": now + 60,
            }
            form["client_id"] = client_id
            form["client_assertion_type"] = ASSERTION_TYPE
            form["client_assertion"] = jwt.encode(
                {"alg": alg, "kid": key.kid or ""}, claims, key, algorithms=[alg]
            )
        else:
            raise OIDCError("client_auth", f"unsupported client authentication {method}")

    async def _post(
        self, url: str, form: Form, method: str, audience: str, what: str, dpop: DPoPKey | None = None
    ) -> httpx.Response:
        """POST a form to the IdP with client authentication and, with ``dpop``, a proof. An
        answer ``use_dpop_nonce`` with a new ``DPoP-Nonce`` is tried once more with it (a new
        proof and a new client assertion: both are single use)."""
        for attempt in (1, 2):
            headers = {"Accept": "application/json"}
            attempt_form = dict(form)
            self._authenticate(method, audience, attempt_form, headers)
            if dpop is not None:
                headers["DPoP"] = dpop.proof("POST", url, nonce=self.nonces.get(url))
            try:
                response = await self.http.post(url, data=attempt_form, headers=headers)
            except httpx.HTTPError as exc:
                raise IdPUnavailable(f"The identity provider could not be reached ({what}).") from exc
            if dpop is None or not self.nonces.update(url, response.headers.get):
                break
            if attempt == 2 or response.status_code != 400 or _oauth_error(response) != "use_dpop_nonce":
                break
        if response.status_code >= 500:
            raise IdPUnavailable(f"The identity provider failed ({what}: HTTP {response.status_code}).")
        return response

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            raise TokenError(
                "invalid_response", "the IdP's answer is not JSON", response.status_code
            ) from None
        if not isinstance(data, dict):
            raise TokenError(
                "invalid_response", "the IdP's answer is not a JSON object", response.status_code
            )
        return data

    def _raise_for_error(self, response: httpx.Response) -> dict[str, Any]:
        data = self._json(response)
        if (response.status_code != 200 and response.status_code != 201) or "error" in data:
            error = data.get("error") if isinstance(data.get("error"), str) else "invalid_response"
            desc = data.get("error_description") if isinstance(data.get("error_description"), str) else ""
            raise TokenError(str(error), str(desc), response.status_code)
        return data

    # --- protocol steps -------------------------------------------------------------
    async def build_authorization_url(
        self, state: str, nonce: str, code_challenge: str, dpop_jkt: str | None = None
    ) -> str:
        """The authorization request (by PAR when configured or required); ``dpop_jkt`` (RFC
        9449 §10) binds the code to the session's DPoP key."""
        meta = await self.provider.metadata()
        params = {
            "response_type": "code",
            "client_id": self.settings.client_id,
            "redirect_uri": self.settings.redirect_uri,
            "scope": " ".join(self.settings.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
            **dict(self.settings.extra_auth_params),
        }
        if dpop_jkt:
            params["dpop_jkt"] = dpop_jkt
        use_par = meta.pushed_authorization_request_endpoint is not None and (
            self.settings.use_par or meta.require_pushed_authorization_requests
        )
        if use_par:
            assert meta.pushed_authorization_request_endpoint is not None
            method = self.auth_method(meta.token_endpoint_auth_methods_supported)
            response = await self._post(
                meta.pushed_authorization_request_endpoint,
                dict(params),
                method,
                meta.issuer,
                "pushed authorization request",
            )
            self.nonces.update(meta.pushed_authorization_request_endpoint, response.headers.get)
            data = self._raise_for_error(response)
            request_uri = data.get("request_uri")
            if not isinstance(request_uri, str) or not request_uri:
                raise TokenError("invalid_response", "the PAR answer has no request_uri")
            params = {"client_id": self.settings.client_id, "request_uri": request_uri}
        elif self.settings.use_par:
            raise OIDCError("par_unsupported", "BFF_USE_PAR is on but the IdP advertises no PAR endpoint")
        return _with_query(meta.authorization_endpoint, params)

    def _audience(self, meta: ProviderMetadata) -> str:
        """The client assertion's audience at the token and revocation endpoints: the token
        endpoint (RFC 7523 allows it, every IdP accepts it), under FAPI 2.0 the issuer
        identifier as a string (the FAPI 2.0 Security Profile's rule for private_key_jwt)."""
        return meta.issuer if self.settings.profile == "fapi2" else meta.token_endpoint

    async def _token_request(self, form: Form, what: str, dpop: DPoPKey | None = None) -> TokenResponse:
        meta = await self.provider.metadata()
        method = self.auth_method(meta.token_endpoint_auth_methods_supported)
        response = await self._post(meta.token_endpoint, form, method, self._audience(meta), what, dpop)
        data = self._raise_for_error(response)
        access_token = data.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise TokenError("invalid_response", "the token response has no access_token")
        token_type = self._token_type(data.get("token_type"), dpop)
        lifetime = self._lifetime(data.get("expires_in"))
        expires_at = int(time.time()) + lifetime
        refresh_token = data.get("refresh_token")
        id_token = data.get("id_token")
        scope = data.get("scope")
        return TokenResponse(
            access_token=access_token,
            expires_at=expires_at,
            lifetime=lifetime,
            refresh_token=refresh_token if isinstance(refresh_token, str) and refresh_token else None,
            id_token=id_token if isinstance(id_token, str) and id_token else None,
            scope=scope if isinstance(scope, str) else None,
            issued_token_type=data.get("issued_token_type")
            if isinstance(data.get("issued_token_type"), str)
            else None,
            token_type=token_type,
        )

    def _lifetime(self, expires_in: object) -> int:
        """Seconds the access token lives. ``expires_in`` is only RECOMMENDED (RFC 6749 §5.1):
        without it the token is assumed to live BFF_ASSUMED_TOKEN_LIFETIME, so it is still
        refreshed (never "forever"). A number of seconds, or its ASCII digits in a string (some
        IdPs quote it), is used; anything else (negative, not finite, text, a boolean) makes
        the whole answer malformed."""
        if expires_in is None:
            return self.settings.assumed_token_lifetime
        if isinstance(expires_in, str) and expires_in.isascii() and expires_in.isdigit():
            return int(expires_in)
        number = (
            expires_in if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) else -1
        )
        if math.isfinite(number) and number >= 0:
            return int(number)
        raise TokenError("invalid_response", "the token response's expires_in is not a number of seconds")

    def _token_type(self, token_type: object, dpop: DPoPKey | None) -> str:
        """``DPoP`` or ``Bearer``, as issued: a DPoP token only when a proof was sent; a Bearer
        token despite a proof (an IdP without DPoP) only when the profile does not require DPoP."""
        kind = token_type.lower() if isinstance(token_type, str) else None
        if kind == "dpop" and dpop is not None:
            return "DPoP"
        if kind == "bearer" and (dpop is None or self.settings.profile != "fapi2"):
            return "Bearer"
        if kind == "bearer":
            raise TokenError(
                "invalid_response", "the IdP issued a Bearer token, but the profile requires DPoP"
            )
        raise TokenError("invalid_response", f"unsupported token_type {token_type!r}")

    async def exchange_code(
        self, code: str, code_verifier: str, dpop: DPoPKey | None = None
    ) -> TokenResponse:
        form: Form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.settings.redirect_uri,
            "code_verifier": code_verifier,
        }
        return await self._token_request(form, "code exchange", dpop)

    async def refresh(self, refresh_token: str, dpop: DPoPKey | None = None) -> TokenResponse:
        # No scope parameter: asking again for scopes is refused by strict IdPs (invalid_scope).
        return await self._token_request(
            {"grant_type": "refresh_token", "refresh_token": refresh_token}, "token refresh", dpop
        )

    async def exchange_token(
        self,
        subject_token: str,
        *,
        audience: str | None,
        resource: tuple[str, ...],
        scope: str | None,
        dpop: DPoPKey | None = None,
    ) -> TokenResponse:
        """RFC 8693 token exchange of the user's access token for one meant for ``audience``
        (and/or RFC 8707 ``resource``), with the client's usual authentication."""
        form: Form = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "requested_token_type": ACCESS_TOKEN_TYPE,
        }
        _add_target(form, audience, resource, scope)
        tokens = await self._token_request(form, "token exchange", dpop)
        if tokens.issued_token_type != ACCESS_TOKEN_TYPE:
            raise TokenError("invalid_response", f"issued_token_type is {tokens.issued_token_type!r}")
        return tokens

    async def client_credentials(
        self,
        *,
        audience: str | None,
        resource: tuple[str, ...],
        scope: str | None,
        dpop: DPoPKey | None = None,
    ) -> TokenResponse:
        """RFC 6749 §4.4: the BFF's own token (``audience`` and ``resource`` as parameters)."""
        form: Form = {"grant_type": "client_credentials"}
        _add_target(form, audience, resource, scope)
        return await self._token_request(form, "client credentials", dpop)

    async def revoke(self, token: str, hint: str = "refresh_token") -> bool:
        """RFC 7009. True when the IdP confirmed; False when it has no revocation endpoint."""
        meta = await self.provider.metadata()
        if meta.revocation_endpoint is None:
            return False
        method = self.auth_method(meta.revocation_endpoint_auth_methods_supported)
        response = await self._post(
            meta.revocation_endpoint,
            {"token": token, "token_type_hint": hint},
            method,
            self._audience(meta),
            "token revocation",
        )
        if response.status_code != 200:
            self._raise_for_error(response)
        return True

    async def userinfo(self, access_token: str, dpop: DPoPKey | None = None) -> dict[str, Any] | str:
        """The UserInfo answer: its JSON claims, or the signed JWT (``application/jwt``, OIDC
        Core §5.3.2) for validation.validate_userinfo to check. ``{}`` without an endpoint.
        A DPoP-bound token goes with the DPoP scheme and a proof (one retry for a nonce)."""
        meta = await self.provider.metadata()
        if meta.userinfo_endpoint is None:
            return {}
        url = meta.userinfo_endpoint
        for attempt in (1, 2):
            headers = {"Accept": "application/json, application/jwt"}
            headers["Authorization"] = f"{'DPoP' if dpop else 'Bearer'} {access_token}"
            if dpop is not None:
                headers["DPoP"] = dpop.proof(
                    "GET", url, access_token=access_token, nonce=self.nonces.get(url)
                )
            try:
                response = await self.http.get(url, headers=headers)
            except httpx.HTTPError as exc:
                raise IdPUnavailable("The identity provider could not be reached (userinfo).") from exc
            renewed = dpop is not None and self.nonces.update(url, response.headers.get)
            challenge = challenge_error(response.headers.get_list("www-authenticate"), "dpop")
            if not (
                renewed and attempt == 1 and response.status_code == 401 and challenge == "use_dpop_nonce"
            ):
                break
        if response.status_code >= 500:
            raise IdPUnavailable("The identity provider failed (userinfo).")
        if response.status_code != 200:
            raise OIDCError("userinfo_failed", f"UserInfo answered {response.status_code}")
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/jwt":
            return response.text.strip()
        try:
            return self._json(response)
        except TokenError as exc:
            raise OIDCError("userinfo_invalid", exc.description) from None

    async def end_session_url(
        self, id_token_hint: str | None, post_logout_redirect_uri: str, state: str | None = None
    ) -> str | None:
        """The IdP's RP-initiated logout URL, or None when it has no end_session_endpoint."""
        meta = await self.provider.metadata()
        if meta.end_session_endpoint is None:
            return None
        params = {"client_id": self.settings.client_id, "post_logout_redirect_uri": post_logout_redirect_uri}
        if id_token_hint:
            params["id_token_hint"] = id_token_hint
        if state:
            params["state"] = state
        return _with_query(meta.end_session_endpoint, params)
