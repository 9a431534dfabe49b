"""Hypothesis-driven requests against every /bff endpoint: no input produces a 500."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bff.security.cookies import CookieCodec
from tests.support import SECRET

PATHS = [
    "/bff/login",
    "/bff/callback",
    "/bff/logout",
    "/bff/user",
    "/bff/sessions",
    "/bff/sessions/x",
    "/bff/backchannel-logout",
    "/bff/",
    "/bff/unknown",
    "/healthz",
    "/readyz",
    "/api/echo",
    "/api/../x",
]
PARAMS = ["returnTo", "state", "code", "iss", "error", "error_description", "sid", "session_state", "x"]
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)

requests = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"]),
        "path": st.one_of(
            st.sampled_from(PATHS),
            header_text.map(lambda t: "/bff/" + t.replace("?", "").replace("#", "").replace(" ", "")),
        ),
        "params": st.dictionaries(st.sampled_from(PARAMS), text, max_size=4),
        "csrf": st.sampled_from([None, "1", "0", ""]),
        "cookie": st.sampled_from(["none", "garbage", "valid-signature-unknown-id", "session"]),
        "content_type": st.sampled_from(
            [None, "application/x-www-form-urlencoded", "application/json", "text/plain"]
        ),
        "body": st.one_of(
            st.just(b""), st.binary(max_size=200), text.map(lambda t: ("logout_token=" + t).encode())
        ),
        "extra": st.dictionaries(
            st.sampled_from(["origin", "sec-fetch-site", "accept", "x-request-id", "content-length"]),
            header_text,
            max_size=2,
        ),
    }
)


@pytest.fixture(scope="module")
def fuzz_state():
    return {}


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(req=requests)
async def test_no_request_makes_the_bff_fail_with_a_500(bff, req):
    app, browser = bff
    if "bff_session" not in browser.cookies:
        await browser.login()
    session = browser.cookies["bff_session"]
    cookie = {
        "none": "",
        "garbage": "bff_session=%%%garbage; bff_login=x",
        "valid-signature-unknown-id": "bff_session=" + CookieCodec((SECRET,), "bff.session").encode("nope"),
        "session": f"bff_session={session}",
    }[req["cookie"]]
    headers = {k: v for k, v in req["extra"].items() if k != "content-length"}
    if cookie:
        headers["cookie"] = cookie
    if req["csrf"] is not None:
        headers["x-csrf"] = req["csrf"]
    if req["content_type"]:
        headers["content-type"] = req["content_type"]
    response = await browser.bff.request(
        req["method"],
        browser.public_url + req["path"],
        params=req["params"],
        headers=headers,
        content=req["body"] if req["method"] != "GET" else None,
    )
    assert response.status_code < 500, (req, response.status_code, response.text[:300])
    if req["path"].startswith("/bff/") and response.status_code >= 400 and req["method"] != "HEAD":
        assert "error" in response.json() or "text/html" in response.headers["content-type"]
