"""Hypothesis-driven answers from the identity provider: the real test provider replaces (or
edits) what its discovery, JWKS, token, UserInfo, revocation and PAR endpoints answer, and
the flows that use each endpoint run against it (login and callback, user, proxied call,
ending all sessions, back-channel logout, logout and its landing). Whatever the IdP says, no
/bff endpoint and no proxied call answers 500 or ``internal_error``: a broken IdP is a clear
4xx/502/503.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import PUBLIC_URL
from tests.scenarios import post_logout_token
from tests.support import Browser, InProcessBffs, ProviderProc, UpstreamProc, bff_env

KEYS = {
    "discovery": [
        "issuer",
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "userinfo_endpoint",
        "revocation_endpoint",
        "end_session_endpoint",
        "pushed_authorization_request_endpoint",
        "token_endpoint_auth_methods_supported",
        "id_token_signing_alg_values_supported",
        "authorization_response_iss_parameter_supported",
        "require_pushed_authorization_requests",
    ],
    "jwks": ["keys"],
    "token": ["access_token", "token_type", "expires_in", "refresh_token", "id_token", "scope", "error"],
    "userinfo": ["sub", "email", "name", "iss", "aud"],
    "revocation": ["error", "error_description"],
    "par": ["request_uri", "expires_in", "error"],
}
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
    st.sampled_from(["RS256", "none", "Bearer", "DPoP", "http://127.0.0.1:1/x", "eyJhbGciOiJub25lIn0.e30."]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)


def answers(endpoint: str) -> st.SearchStrategy[dict[str, Any]]:
    keys = st.sampled_from(KEYS[endpoint])
    replaced = st.fixed_dictionaries(
        {
            "status": st.sampled_from([200, 201, 204, 302, 400, 401, 404, 500, 503]),
            "content_type": st.sampled_from(
                ["application/json", "text/html", "application/jwt", "text/plain"]
            ),
            "body": st.one_of(text, json_values.map(json.dumps)),
        }
    )
    edited = st.fixed_dictionaries(
        {
            "set": st.dictionaries(keys, json_values, max_size=3),
            "delete": st.lists(keys, max_size=2),
            "status": st.sampled_from([None, 200, 400, 401]),
        }
    )
    return st.one_of(replaced, edited)


cases = st.sampled_from(list(KEYS)).flatmap(lambda e: st.tuples(st.just(e), answers(e)))


def assert_clean(response: httpx.Response, what: str) -> None:
    assert response.status_code != 500, (what, response.text[:300])
    if response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
        assert response.json().get("error") != "internal_error", (what, response.text[:300])


async def _login(browser: Browser) -> httpx.Response:
    r = await browser.start_login()
    assert_clean(r, "login")
    if r.status_code != 302 or "/authorize" not in r.headers["location"]:
        return r
    back = await browser.authorize(r.headers["location"])
    if back.status_code != 302 or "/bff/callback" not in back.headers.get("location", ""):
        return back
    r = await browser.get(back.headers["location"])
    assert_clean(r, "callback")
    return r


async def _flow(endpoint: str, answer: dict[str, Any], idp: ProviderProc, env: dict[str, str]) -> None:
    """Run what uses ``endpoint`` while the provider gives ``answer`` there."""
    running = InProcessBffs(PUBLIC_URL)
    try:
        fresh_metadata = endpoint in ("discovery", "jwks")
        if not fresh_metadata:  # a session first, with the endpoint still well behaved
            app = await running.app(env)
            browser = await running.browser(app)
            assert (await _login(browser)).status_code == 302
        idp.configure(overrides={endpoint: answer})
        if fresh_metadata:
            app = await running.app(env, wait=False)
            browser = await running.browser(app)
        if endpoint in ("discovery", "jwks", "token", "userinfo", "par"):
            await _login(browser)
        for method, path in (("GET", "/bff/user"), ("GET", "/api/echo"), ("GET", "/readyz")):
            assert_clean(await browser.request(method, path, csrf=True), path)
        # Ending sessions from the list revokes their tokens; a back-channel logout is checked
        # against the discovery document and the JWKS; logout revokes and asks for the IdP's
        # end-session URL.
        assert_clean(await browser.request("DELETE", "/bff/sessions", csrf=True), "end all")
        await _login(browser)
        logout_token = idp.logout_token(user="alice")
        assert_clean(await post_logout_token(browser, logout_token), "back-channel logout")
        await _login(browser)
        assert_clean(await browser.request("POST", "/bff/logout", csrf=True), "logout")
        assert_clean(await browser.get("/bff/post-logout?state=x"), "post-logout")
    finally:
        idp.configure(overrides={})
        await running.close()


@pytest.fixture
def fuzz_env(idp: ProviderProc, redis_url: str, upstream: UpstreamProc) -> dict[str, str]:
    idp.configure(access_ttl=0)  # every proxied call refreshes: the token endpoint again
    return bff_env(
        idp,
        redis_url,
        PUBLIC_URL,
        BFF_API_ROUTES=f"/api={upstream.url}",
        BFF_TOKEN_REFRESH_SKEW="60",
        BFF_FETCH_USERINFO="true",
        BFF_USE_PAR="true",
    )


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=cases)
async def test_no_answer_of_the_idp_makes_the_bff_fail_with_a_500(idp, fuzz_env, case):
    endpoint, answer = case
    idp.configure(access_ttl=0)
    await _flow(endpoint, answer, idp, fuzz_env)
