"""Login, callback, logout and back-channel logout."""

from __future__ import annotations

import hmac
import logging
import secrets
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..dpop import FAPI_ALGS, PREFERRED_ALGS, DPoPKey, choose_alg
from ..error_handlers import json_error, page_error, wants_html
from ..errors import (
    BadRequest,
    IdPUnavailable,
    LoginFailed,
    LogoutTokenInvalid,
    ServiceUnavailable,
    TooManyRequests,
)
from ..oidc.client import TokenResponse, new_pkce
from ..oidc.errors import OIDCError, TokenError
from ..oidc.validation import (
    LOGOUT_TOKEN_MAX_AGE,
    validate_id_token,
    validate_logout_token,
    validate_userinfo,
)
from ..security.cookies import binding_hash
from ..security.csrf import check_csrf
from ..security.redirects import safe_return_to
from ..security.user_agents import user_agent_summary
from ..services import Services
from ..session.models import LoginTransaction, Session, logout_sid, new_session_id
from .common import client_ip, current_session, revoke_tokens, services

audit = logging.getLogger("bff.audit")
log = logging.getLogger("bff.auth")

# The post-logout redirect URI the BFF sends to the IdP (register it there).
POST_LOGOUT_PATH = "/bff/post-logout"


def _redirect(url: str, *cookies: str) -> Response:
    response = RedirectResponse(url, status_code=302)
    for cookie in cookies:
        response.headers.append("set-cookie", cookie)
    return response


async def login(request: Request) -> Response:
    svc = services(request)
    return_to = safe_return_to(request.query_params.get("returnTo"))
    cookie_header = request.headers.get("cookie", "")
    binding = svc.cookies.login_binding(cookie_header)
    new_cookie: list[str] = []
    if binding is None:
        binding, set_cookie = svc.cookies.new_login_binding()
        new_cookie.append(set_cookie)
    state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    verifier, challenge = new_pkce()
    dpop = await _new_dpop_key(svc)
    tx = LoginTransaction(
        state,
        nonce,
        verifier,
        return_to,
        binding_hash(binding),
        int(svc.clock()),
        dpop.export() if dpop else None,
    )
    if not await svc.store.save_transaction(tx, svc.settings.login_timeout, svc.settings.max_pending_logins):
        raise TooManyRequests(
            "Too many sign-ins are in progress in this browser; finish one or wait a few minutes.",
            code="too_many_pending_logins",
        )
    try:
        url = await svc.client.build_authorization_url(state, nonce, challenge, dpop.jkt if dpop else None)
    except TokenError as exc:
        raise LoginFailed(
            f"The identity provider refused the authorization request ({exc.error}).", code="par_failed"
        ) from exc
    except OIDCError as exc:
        raise ServiceUnavailable(
            f"The identity provider is misconfigured: {exc.message}", code=exc.code
        ) from exc
    svc.metrics.logins_started.inc()
    return _redirect(url, *new_cookie)


async def _new_dpop_key(svc: Services) -> DPoPKey | None:
    """With BFF_DPOP: the session's key, made now so the authorization request can name it
    (``dpop_jkt``); an algorithm the IdP lists, ES256 preferred (FAPI 2.0: PS256, ES256 or
    EdDSA only). An IdP that lists none gets ES256 proofs, which it may ignore."""
    if not svc.settings.dpop:
        return None
    try:
        supported = (await svc.provider.metadata()).dpop_signing_alg_values_supported
    except OIDCError as exc:
        raise ServiceUnavailable(
            f"The identity provider is misconfigured: {exc.message}", code=exc.code
        ) from exc
    fapi = svc.settings.profile == "fapi2"
    alg = choose_alg(supported, FAPI_ALGS if fapi else PREFERRED_ALGS) or (None if fapi else "ES256")
    if alg is None:
        raise ServiceUnavailable(
            "The identity provider offers no DPoP algorithm the profile allows.", code="dpop_alg"
        )
    return DPoPKey.generate(alg)


def _fail(svc: Services, reason: str, message: str) -> LoginFailed:
    svc.metrics.logins_failed.labels(reason).inc()
    audit.warning("login refused", extra={"event": "login_failed", "reason": reason})
    return LoginFailed(message, code=reason)


async def callback(request: Request) -> Response:
    svc = services(request)
    params = request.query_params
    state = params.get("state")
    tx = await svc.store.take_transaction(state) if state else None
    binding = svc.cookies.login_binding(request.headers.get("cookie", ""))
    if tx is None or binding is None or not hmac.compare_digest(binding_hash(binding), tx.browser_binding):
        return await _stray_callback(request, svc, state, tx, binding)
    await _check_authorization_response(svc, params)
    tokens, claims = await _redeem(svc, params.get("code"), tx)
    userinfo = await _userinfo(svc, tokens, claims, tx.dpop_key)
    if tokens.refresh_token is None and "offline_access" in svc.settings.scopes:
        log.warning(
            "offline_access was requested but the IdP issued no refresh token; API access "
            "ends when the access token expires (see BFF_SCOPES in docs/configuration.md)"
        )
    session = await _start_session(request, svc, tokens, claims, userinfo, tx.dpop_key)
    cookies = [svc.cookies.set_session(session.id)]
    if await svc.store.pending_logins(tx.browser_binding) == 0:
        cookies.append(svc.cookies.clear_login())  # no other tab of this browser is signing in
    response = _redirect(svc.settings.public_url + tx.return_to, *cookies)
    offer = await svc.binding.offer(session)  # DBSC: the response that creates the session offers it
    if offer is not None:
        response.headers["secure-session-registration"] = offer
    return response


async def _stray_callback(
    request: Request, svc: Services, state: str | None, tx: LoginTransaction | None, binding: str | None
) -> Response:
    """A callback whose login this browser cannot complete (used or expired state, no or
    another login-binding cookie). A browser that is signed in already (a second tab's
    late callback, a replayed callback URL) goes back to the app; any other is refused."""
    if await current_session(request, touch=False, enforce=False) is not None:
        log.info("callback for a browser that is signed in already; back to the application")
        cookies = []
        if binding is not None and await svc.store.pending_logins(binding_hash(binding)) == 0:
            cookies.append(svc.cookies.clear_login())
        return _redirect(svc.settings.public_url + (tx.return_to if tx else "/"), *cookies)
    if not state:
        raise _fail(svc, "missing_state", "The sign-in response has no state; start again.")
    if tx is None:
        raise _fail(
            svc, "unknown_state", "This sign-in response is unknown, already used or expired; start again."
        )
    raise _fail(svc, "browser_mismatch", "This sign-in was started in another browser; start again here.")


async def _check_authorization_response(svc: Services, params: Any) -> None:
    """RFC 9207 ``iss`` (mix-up defence) and the IdP's ``error``, before the code is used."""
    meta = await svc.provider.metadata()
    iss = params.get("iss")
    if iss is not None and iss != svc.settings.issuer:
        raise _fail(svc, "iss_mismatch", "The sign-in response came from an unexpected issuer (mix-up).")
    if iss is None and (
        meta.authorization_response_iss_parameter_supported or svc.settings.profile == "fapi2"
    ):
        raise _fail(svc, "iss_missing", "The sign-in response lacks the issuer the IdP promised to send.")
    if params.get("error"):
        error = params["error"][:64]
        reason = "access_denied" if error == "access_denied" else "idp_error"
        text = (
            "You cancelled the sign-in or access was denied."
            if error == "access_denied"
            else (f"The identity provider refused the sign-in ({error}).")
        )
        raise _fail(svc, reason, text)


async def _redeem(
    svc: Services, code: str | None, tx: LoginTransaction
) -> tuple[TokenResponse, dict[str, Any]]:
    """Exchange the code and validate the ID token fully: the tokens and the ID token's claims."""
    if not code:
        raise _fail(svc, "missing_code", "The sign-in response has no authorization code.")
    try:
        dpop = DPoPKey.load(tx.dpop_key) if tx.dpop_key else None
        tokens = await svc.client.exchange_code(code, tx.code_verifier, dpop)
    except TokenError as exc:
        raise _fail(svc, "code_exchange", f"The identity provider refused the code ({exc.error}).") from exc
    if not tokens.id_token:
        raise _fail(svc, "id_token_missing", "The identity provider returned no ID token.")
    try:
        claims = await validate_id_token(
            tokens.id_token,
            svc.provider,
            await svc.checks(),
            nonce=tx.nonce,
            access_token=tokens.access_token,
        )
    except OIDCError as exc:
        raise _fail(svc, exc.code, f"The ID token was refused: {exc.message}.") from exc
    return tokens, claims


async def _start_session(
    request: Request,
    svc: Services,
    tokens: TokenResponse,
    claims: dict[str, Any],
    userinfo: dict[str, Any] | None,
    dpop_key: str | None,
) -> Session:
    """A new session (never the browser's previous one: session fixation), within the
    per-user limit; the sessions the limit ends are revoked."""
    now = int(svc.clock())
    previous = await current_session(request, touch=False, enforce=False)
    if previous is not None:
        await svc.store.delete(previous.id)
    assert tokens.id_token is not None
    session = Session(
        id=new_session_id(),
        sub=claims["sub"],
        id_token=tokens.id_token,
        access_token=tokens.access_token,
        access_expires_at=tokens.expires_at,
        access_lifetime=tokens.lifetime,
        refresh_token=tokens.refresh_token,
        created_at=now,
        expires_at=now + svc.settings.session_absolute_timeout,
        last_seen=svc.store.seen(),
        idp_sid=claims.get("sid") if isinstance(claims.get("sid"), str) else None,
        user_agent=user_agent_summary(request.headers.get("user-agent", "")),
        ip=client_ip(request),
        userinfo=userinfo or None,
        dpop_key=dpop_key,
        access_token_type=tokens.token_type,
    )
    ended = await svc.store.create(session, svc.settings.max_sessions_per_user)
    for old in ended:
        svc.metrics.logouts.labels("session_limit").inc()
        if old.idp_sid is None or old.idp_sid != session.idp_sid:  # a shared grant stays alive
            await revoke_tokens(svc, old)
        audit.info(
            "session ended", extra={"event": "session_ended", "reason": "session limit", "sub": old.sub}
        )
    svc.metrics.logins_completed.inc()
    audit.info("login", extra={"event": "login", "sub": session.sub, "client": session.ip})
    return session


# Claims that show a scope's answer made it into the ID token (OIDC Core §5.4).
_SCOPE_CLAIMS = {
    "profile": ("name", "preferred_username", "given_name", "family_name", "nickname"),
    "email": ("email",),
}


async def _userinfo(
    svc: Services, tokens: TokenResponse, claims: dict[str, Any], dpop_key: str | None
) -> dict[str, Any] | None:
    """UserInfo claims when configured, or (auto) when the ID token lacks the requested profile
    or email claims: OIDC Core lets an IdP return those only from UserInfo. Under ``auto`` any
    failure only costs those claims (except a UserInfo naming another subject); under
    ``true`` it fails the login."""
    mode = svc.settings.fetch_userinfo
    if mode == "false":
        return None
    if mode == "auto":
        missing = [
            s
            for s in svc.settings.scopes
            if s in _SCOPE_CLAIMS and not any(c in claims for c in _SCOPE_CLAIMS[s])
        ]
        if not missing or (await svc.provider.metadata()).userinfo_endpoint is None:
            return None
    try:
        bound = tokens.token_type == "DPoP"  # noqa: S105 - a scheme name
        dpop = DPoPKey.load(dpop_key) if bound and dpop_key else None
        answer = await svc.client.userinfo(tokens.access_token, dpop)
        return await validate_userinfo(answer, svc.provider, await svc.checks(), claims["sub"]) or None
    except OIDCError as exc:
        if mode == "true" or exc.code == "userinfo_sub":
            raise _fail(svc, exc.code, f"The UserInfo answer was refused: {exc.message}.") from exc
        log.warning("UserInfo refused; showing the ID token's claims only", extra={"reason": exc.code})
    except IdPUnavailable:
        if mode == "true":
            raise
        log.warning("UserInfo unavailable; showing the ID token's claims only")
    return None


async def logout(request: Request) -> Response:
    svc = services(request)
    if request.method == "POST":
        check_csrf(request.headers, svc.settings.public_url)
    session = await current_session(request, touch=False, enforce=False)  # ending is never gated
    post_logout = svc.settings.post_logout_redirect_uri
    if session is None:
        return _redirect(post_logout, svc.cookies.clear_session())
    if request.method == "GET":
        sid = request.query_params.get("sid", "")
        if not hmac.compare_digest(sid.encode(), logout_sid(session.id).encode()):
            raise BadRequest(
                "Logging out by link needs this session's sid (see logout_url in /bff/user).",
                code="logout_sid_mismatch",
            )
    await svc.store.delete(session.id)
    svc.metrics.logouts.labels("logout").inc()
    audit.info("logout", extra={"event": "logout", "sub": session.sub})
    await revoke_tokens(svc, session)
    state, state_cookie = svc.cookies.new_logout_state()
    landing = f"{svc.settings.public_url}{POST_LOGOUT_PATH}"
    try:
        url = await svc.client.end_session_url(session.id_token, landing, state)
    except (IdPUnavailable, OIDCError):
        url = None
    response = (
        _redirect(post_logout, svc.cookies.clear_session())  # no RP-initiated logout at the IdP
        if url is None
        else _redirect(url, svc.cookies.clear_session(), state_cookie)
    )
    if session.dbsc_key:
        # DBSC: the bound cookie goes; the browser's DBSC session ends at its next refresh,
        # which is answered 401. No Clear-Site-Data "cookies": it would clear the cookies of
        # the whole registrable domain (sibling apps included), and Chromium 156 does not end
        # DBSC sessions on it anyway (docs/security.md).
        response.headers.append("set-cookie", svc.cookies.clear_bound())
    return response


async def post_logout(request: Request) -> Response:
    """Where the IdP sends the browser back after RP-initiated logout (the
    post_logout_redirect_uri registered at the IdP): the ``state`` must be the one this
    browser's logout sent; then on to BFF_POST_LOGOUT_REDIRECT_URI."""
    svc = services(request)
    expected = svc.cookies.logout_state(request.headers.get("cookie", ""))
    state = request.query_params.get("state", "")
    if expected is None or not hmac.compare_digest(state.encode(), expected.encode()):
        audit.warning("logout return refused", extra={"event": "logout_state_mismatch"})
        error = BadRequest(
            "This sign-out response does not belong to a sign-out started in this browser;"
            " you are signed out of this application.",
            code="logout_state_mismatch",
        )
        response = page_error(error, "Sign-out not recognised") if wants_html(request) else json_error(error)
        response.headers.append("set-cookie", svc.cookies.clear_logout())
        return response
    return _redirect(svc.settings.post_logout_redirect_uri, svc.cookies.clear_logout())


async def backchannel_logout(request: Request) -> Response:
    svc = services(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        svc.metrics.backchannel.labels("invalid").inc()
        raise LogoutTokenInvalid("Send the logout_token form-encoded.", code="invalid_request")
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    values = form.get("logout_token", [])
    token = values[0] if len(values) == 1 else None
    if not isinstance(token, str) or not token:
        svc.metrics.backchannel.labels("invalid").inc()
        raise LogoutTokenInvalid("The logout_token parameter is missing.", code="invalid_request")
    checks = await svc.checks()
    try:
        claims = await validate_logout_token(token, svc.provider, checks)
    except OIDCError as exc:
        svc.metrics.backchannel.labels("invalid").inc()
        audit.warning("logout token refused", extra={"event": "backchannel_refused", "reason": exc.code})
        raise LogoutTokenInvalid(f"The logout token was refused: {exc.message}.") from exc
    exp = claims.get("exp")
    ttl = LOGOUT_TOKEN_MAX_AGE + 2 * checks.skew
    if isinstance(exp, int | float):
        ttl = max(ttl, int(exp) - checks.now + checks.skew)
    if not await svc.store.remember_jti(claims["jti"], ttl):
        svc.metrics.backchannel.labels("replay").inc()
        raise LogoutTokenInvalid(
            "The logout token was already used (jti replay).", code="invalid_logout_token"
        )
    sub, sid = claims.get("sub"), claims.get("sid")
    if sid is not None:
        targets = [s for s in await svc.store.sessions_by_idp_sid(sid) if sub is None or s.sub == sub]
    else:
        assert isinstance(sub, str)  # validate_logout_token requires sub or sid
        targets = await svc.store.sessions_of(sub)
    for target in targets:
        await svc.store.delete(target.id)
        svc.metrics.logouts.labels("backchannel").inc()
    svc.metrics.backchannel.labels("ok").inc()
    audit.info(
        "back-channel logout",
        extra={"event": "backchannel_logout", "sub": sub, "sessions_ended": len(targets)},
    )
    return Response(status_code=200, headers={"Cache-Control": "no-store"})
