"""End to end: the example SPA in headless Chromium, signing in through Keycloak's real
login form, against the native demo stack (demo/stack.py: Redis, Keycloak, the sample
API and the BFF serving spa-example/dist), started once per test session on free ports.

Run alone: ``.venv/bin/pytest -m e2e``. Screenshots of every step and the processes'
logs go to test-artifacts/e2e/. The stack and the browser are fixtures in conftest.py.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from demo.stack import DEMO_USERS, Stack
from tests.e2e.conftest import ARTIFACTS, REFRESH_SKEW, UI_TIMEOUT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

expect.set_options(timeout=UI_TIMEOUT)


class Shots:
    """Numbered screenshots in test-artifacts/e2e/, one per step."""

    def __init__(self, prefix: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.n = 0

    def __call__(self, page: Page, step: str) -> None:
        self.n += 1
        page.screenshot(path=str(ARTIFACTS / f"{self.prefix}-{self.n:02d}-{step}.png"), full_page=True)


def sign_in(
    page: Page, stack: Stack, username: str, shots: Shots | None = None, back_to: str | None = None
) -> None:
    """From the SPA's signed-out screen through Keycloak's login form and back (to the BFF's
    public URL, or ``back_to``)."""
    expect(page.get_by_test_id("signed-out")).to_be_visible()
    page.get_by_test_id("login-button").click()
    page.wait_for_url(f"{stack.config.keycloak_url}/realms/demo/protocol/openid-connect/auth?**")
    expect(page.locator("#password")).to_be_visible()
    page.fill("#username", username)
    page.fill("#password", DEMO_USERS[username])
    if shots:
        shots(page, "keycloak-login-form")
    page.click("#kc-login")
    page.wait_for_url(f"{back_to or stack.config.public_url}/**")
    expect(page.get_by_test_id("signed-in")).to_be_visible()


def open_spa(context: BrowserContext, stack: Stack, path: str = "/") -> Page:
    page = context.new_page()
    page.goto(stack.config.public_url + path)
    expect(page.get_by_test_id("signed-in").or_(page.get_by_test_id("signed-out"))).to_be_visible()
    return page


def bff_status(page: Page, path: str = "/bff/user") -> int:
    """Status of an XHR-style call from the page (X-CSRF, same-origin cookies)."""
    script = 'async (p) => (await fetch(p, {headers: {"X-CSRF": "1"}, credentials: "same-origin"})).status'
    status: int = page.evaluate(script, path)
    return status


def call_api(page: Page) -> dict[str, Any]:
    """Click the API button and return what the SPA shows (the sample API's answer)."""
    before = (
        page.get_by_test_id("api-result").get_attribute("data-calls") if _shown(page, "api-result") else None
    )
    page.get_by_test_id("call-api").click()
    result = page.get_by_test_id("api-result")
    expect(result).to_be_visible()
    if before is not None:
        expect(result).not_to_have_attribute("data-calls", before)
    answer: dict[str, Any] = json.loads(result.locator("pre").inner_text())
    return answer


def _shown(page: Page, testid: str) -> bool:
    return page.get_by_test_id(testid).count() > 0


def api_seen(stack: Stack) -> list[dict[str, Any]]:
    """What the sample API validated (its debug log: jti, sub, iat, exp; no tokens)."""
    r = httpx.get(f"{stack.config.api_url}/debug/seen", timeout=5.0)
    r.raise_for_status()
    seen: list[dict[str, Any]] = r.json()["seen"]
    return seen


def metric(stack: Stack, name: str, **labels: str) -> float:
    text = httpx.get(f"{stack.config.public_url}/metrics", timeout=5.0).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(r"^(\w+)(?:\{(.*)\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# --- the steps -----------------------------------------------------------------------------


def test_sign_in_shows_claims_and_calls_the_api(stack: Stack, contexts: Callable[[], BrowserContext]) -> None:
    shots = Shots("1-sign-in")
    context = contexts()
    page = open_spa(context, stack, "/profile?tab=1")
    expect(page.get_by_test_id("signed-out")).to_be_visible()
    shots(page, "signed-out")

    sign_in(page, stack, "alice", shots)
    # returnTo brought the browser back where it started.
    assert page.url == f"{stack.config.public_url}/profile?tab=1"
    expect(page.get_by_test_id("user-name")).to_have_text("Alice Liddell")
    expect(page.get_by_test_id("claim-preferred_username")).to_contain_text("alice")
    expect(page.get_by_test_id("claim-email")).to_contain_text("alice@example.com")
    expect(page.get_by_test_id("claim-iss")).to_contain_text(stack.config.issuer)
    sub = page.get_by_test_id("signed-in").get_attribute("data-sub")
    assert sub and sub == stack.user_id("alice")
    shots(page, "signed-in-claims")

    # No token in the browser: the BFF's cookies are HttpOnly and hold no JWT, script sees
    # no cookie at all, and nothing is kept in web storage.
    bff_cookies = {
        c["name"]: c for c in context.cookies(stack.config.public_url) if c["name"].startswith("bff")
    }
    assert "bff_session" in bff_cookies
    assert bff_cookies["bff_session"]["sameSite"] == "Lax"
    for cookie in bff_cookies.values():
        assert cookie["httpOnly"] is True
        assert "eyJ" not in cookie["value"]
    assert page.evaluate("document.cookie") == ""
    assert not page.evaluate("Object.keys(localStorage).length + Object.keys(sessionStorage).length")

    answer = call_api(page)
    assert answer["sub"] == sub
    assert answer["preferred_username"] == "alice"
    assert "demo-api" in answer["aud"]
    assert answer["token"]["expires_in"] > 0
    shots(page, "api-answer")

    # The sample API validated (signature, iss, aud, exp) an access token of this user.
    seen = [s for s in api_seen(stack) if s["jti"] == answer["token"]["jti"] and s["path"] == "/api/whoami"]
    assert len(seen) == 1
    assert seen[0]["sub"] == sub
    assert seen[0]["preferred_username"] == "alice"
    assert seen[0]["azp"] == "bff"
    assert seen[0]["exp"] > seen[0]["seen_at"]

    # The demo's BFF asks for "openid profile email" (the default; see BFF_SCOPES); the
    # realm still grants offline_access to clients that ask for it.
    client_uuid = stack.admin("GET", "/clients", params={"clientId": "bff"}).json()[0]["id"]
    optional = stack.admin("GET", f"/clients/{client_uuid}/optional-client-scopes").json()
    assert "offline_access" in {s["name"] for s in optional}
    roles = stack.admin("GET", f"/users/{sub}/role-mappings/realm/composite").json()
    assert "offline_access" in {r["name"] for r in roles}

    # The session list knows this browser.
    rows = page.get_by_test_id("session-row").filter(has=page.locator("text=this browser"))
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Chrome on Linux")


def test_expiring_access_token_is_refreshed_at_keycloak(
    stack: Stack, contexts: Callable[[], BrowserContext]
) -> None:
    shots = Shots("2-refresh")
    page = open_spa(contexts(), stack)
    sign_in(page, stack, "alice")
    user_id = stack.user_id("alice")
    first = call_api(page)
    first_expiry = page.get_by_test_id("access-token-expires").get_attribute("data-value")

    def refreshes_at_keycloak() -> int:
        r = stack.admin("GET", "/events", params={"type": "REFRESH_TOKEN", "user": user_id, "client": "bff"})
        r.raise_for_status()
        return len(r.json())

    events_before = refreshes_at_keycloak()
    refreshed_before = metric(stack, "bff_token_refreshes_total", outcome="ok")

    # Wait until the token is inside the refresh window (see REFRESH_SKEW).
    due = first["token"]["exp"] - REFRESH_SKEW + 1
    time.sleep(max(0.0, due - time.time()))
    second = call_api(page)
    shots(page, "api-answer-after-refresh")

    assert second["sub"] == first["sub"]
    assert second["token"]["jti"] != first["token"]["jti"]
    assert second["token"]["iat"] > first["token"]["iat"]
    assert second["token"]["exp"] > first["token"]["exp"]
    assert second["token"]["jti"] in {s["jti"] for s in api_seen(stack)}
    # Keycloak logged the refresh of this user's token for the bff client.
    wait_until(lambda: refreshes_at_keycloak() > events_before, 10.0, "Keycloak's REFRESH_TOKEN event")
    assert refreshes_at_keycloak() == events_before + 1
    assert metric(stack, "bff_token_refreshes_total", outcome="ok") == refreshed_before + 1
    # The BFF shows the new expiry on the next /bff/user.
    page.get_by_test_id("reload-user").click()
    expect(page.get_by_test_id("access-token-expires")).not_to_have_attribute(
        "data-value", first_expiry or ""
    )
    shots(page, "new-token-expiry")


def test_second_session_ended_from_the_first(stack: Stack, contexts: Callable[[], BrowserContext]) -> None:
    shots = Shots("3-second-session")
    first = open_spa(contexts(), stack)
    sign_in(first, stack, "alice")
    second = open_spa(contexts(), stack)
    sign_in(second, stack, "alice")
    call_api(second)
    second_id = second.get_by_test_id("session-info").get_attribute("data-session-id")
    first_id = first.get_by_test_id("session-info").get_attribute("data-session-id")
    assert second_id and first_id and second_id != first_id

    first.get_by_test_id("refresh-sessions").click()
    row = first.locator(f'[data-testid="session-row"][data-session-id="{second_id}"]')
    expect(row).to_have_attribute("data-current", "false")
    expect(first.locator(f'[data-testid="session-row"][data-session-id="{first_id}"]')).to_have_attribute(
        "data-current", "true"
    )
    shots(first, "first-sees-both-sessions")

    row.get_by_test_id("end-session").click()
    expect(row).to_have_count(0)
    shots(first, "second-session-ended")

    # The second browser is signed out: its next call gets 401 and the SPA says so.
    second.get_by_test_id("call-api").click()
    expect(second.get_by_test_id("signed-out")).to_be_visible()
    expect(second.get_by_test_id("signed-out-reason")).to_have_attribute("data-reason", "expired")
    shots(second, "second-signed-out")
    second.reload()
    expect(second.get_by_test_id("signed-out")).to_be_visible()
    # ... and the first one is not.
    assert bff_status(first) == 200
    call_api(first)


def test_logout_ends_the_session_everywhere_and_asks_for_the_password_again(
    stack: Stack, contexts: Callable[[], BrowserContext]
) -> None:
    shots = Shots("4-logout")
    context = contexts()
    page = open_spa(context, stack)
    sign_in(page, stack, "alice")
    sid = page.get_by_test_id("claim-sid").locator("td").inner_text()
    # While Keycloak's SSO session lives, signing in again needs no password: Keycloak
    # sends the browser straight back (so the password prompt below proves the logout).
    page.goto(f"{stack.config.public_url}/bff/login?returnTo=/")
    page.wait_for_url(f"{stack.config.public_url}/")
    expect(page.get_by_test_id("signed-in")).to_be_visible()
    assert page.get_by_test_id("claim-sid").locator("td").inner_text() == sid
    user_id = stack.user_id("alice")
    # Keycloak holds the browser's SSO session this ID token belongs to.
    assert sid in {s["id"] for s in stack.admin("GET", f"/users/{user_id}/sessions").json()}
    other_tab = open_spa(context, stack)
    expect(other_tab.get_by_test_id("signed-in")).to_be_visible()

    page.get_by_test_id("logout-button").click()
    # The BFF sends the browser to Keycloak's end_session_endpoint, which comes back here.
    page.wait_for_url(f"{stack.config.public_url}/")
    expect(page.get_by_test_id("signed-out")).to_be_visible()
    shots(page, "signed-out-after-logout")
    # The other tab heard about it (BroadcastChannel) without reloading.
    expect(other_tab.get_by_test_id("signed-out")).to_be_visible()
    expect(other_tab.get_by_test_id("signed-out-reason")).to_have_attribute("data-reason", "logout")
    shots(other_tab, "other-tab-signed-out")
    assert bff_status(page) == 401
    assert not [c for c in context.cookies(stack.config.public_url) if c["name"] == "bff_session"]

    # Keycloak's session is over too, online and offline (the refresh token was revoked).
    online = stack.admin("GET", f"/users/{user_id}/sessions").json()
    assert sid not in {s["id"] for s in online}
    client_uuid = stack.admin("GET", "/clients", params={"clientId": "bff"}).json()[0]["id"]
    offline = stack.admin("GET", f"/users/{user_id}/offline-sessions/{client_uuid}").json()
    assert sid not in {s["id"] for s in offline}

    # Signing in again needs the password: no single sign-on left at Keycloak.
    page.get_by_test_id("login-button").click()
    page.wait_for_url(f"{stack.config.keycloak_url}/realms/demo/protocol/openid-connect/auth?**")
    expect(page.locator("#password")).to_be_visible()
    expect(page.locator("#password")).to_have_value("")
    shots(page, "login-asks-for-password-again")


def test_backchannel_logout_from_keycloak_ends_the_bff_session(
    stack: Stack, contexts: Callable[[], BrowserContext]
) -> None:
    shots = Shots("5-backchannel-logout")
    page = open_spa(contexts(), stack)
    sign_in(page, stack, "bob")
    call_api(page)
    shots(page, "bob-signed-in")
    received_before = metric(stack, "bff_backchannel_logouts_total", outcome="ok")
    bob = stack.user_id("bob")
    sid = page.get_by_test_id("claim-sid").locator("td").inner_text()
    assert sid in {s["id"] for s in stack.admin("GET", f"/users/{bob}/sessions").json()}

    # An administrator ends bob's sessions at Keycloak; Keycloak posts a logout token to
    # the BFF's /bff/backchannel-logout.
    r = stack.admin("POST", f"/users/{bob}/logout")
    assert r.status_code == 204, r.text

    # The BFF session is gone without any refresh attempt: /bff/user reads the session
    # store only, and it says 401 once the logout token has been processed.
    wait_until(lambda: bff_status(page) == 401, 15.0, "the BFF session to end")
    assert metric(stack, "bff_backchannel_logouts_total", outcome="ok") >= received_before + 1

    page.get_by_test_id("call-api").click()
    expect(page.get_by_test_id("signed-out")).to_be_visible()
    shots(page, "bob-signed-out-by-keycloak")
    page.reload()
    expect(page.get_by_test_id("signed-out")).to_be_visible()
