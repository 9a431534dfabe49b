"""End to end, beyond the first wave: per-route tokens (a token exchanged for the reports
API's audience, the BFF's own client-credentials token) and the BFF embedded in the example
FastAPI host app, each after a real Keycloak login in headless Chromium."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from demo.stack import DPOP_CLIENT_ID, DPOP_CLIENT_SECRET, REPORTS_AUDIENCE, Service, Stack, _http_ok
from tests.e2e.conftest import ARTIFACTS, REFRESH_SKEW
from tests.e2e.test_browser import Shots, api_seen, call_api, open_spa, sign_in
from tests.support import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def xhr(page: Page, path: str) -> dict[str, Any]:
    script = """async (p) => {
        const r = await fetch(p, {headers: {"X-CSRF": "1"}, credentials: "same-origin"});
        return {status: r.status, body: await r.json()};
    }"""
    answer: dict[str, Any] = page.evaluate(script, path)
    return answer


def shown(page: Page, testid: str) -> dict[str, Any]:
    result = page.get_by_test_id(testid)
    expect(result).to_be_visible()
    answer: dict[str, Any] = json.loads(result.locator("pre").inner_text())
    return answer


def test_each_api_gets_a_token_for_its_own_audience(
    stack: Stack, contexts: Callable[[], BrowserContext]
) -> None:
    shots = Shots("6-route-tokens")
    page = open_spa(contexts(), stack)
    sign_in(page, stack, "alice")
    user_id = stack.user_id("alice")
    own = call_api(page)  # /api: the login's token, audience demo-api
    page.get_by_test_id("call-reports").click()
    reports = shown(page, "reports-result")
    page.get_by_test_id("call-status").click()
    status = shown(page, "status-result")
    shots(page, "three-apis")

    assert own["sub"] == user_id and "demo-api" in own["aud"]
    # Exchanged (RFC 8693) for the reports API: the same user, only that audience.
    assert reports["api"] == "reports" and reports["sub"] == user_id
    assert reports["aud"] == REPORTS_AUDIENCE
    # The BFF's own token: its service account, not the user.
    assert status["api"] == "status" and status["sub"] != user_id
    assert status["azp"] == "bff" and REPORTS_AUDIENCE in status["aud"]
    jtis = {own["token"]["jti"], reports["token"]["jti"], status["token"]["jti"]}
    assert len(jtis) == 3
    assert jtis <= {s["jti"] for s in api_seen(stack)}  # each validated by the API it reached
    # The exchanged token is cached: the next call reuses it.
    page.get_by_test_id("call-reports").click()
    expect(page.get_by_test_id("reports-result")).to_have_attribute("data-jti", reports["token"]["jti"])


@pytest.fixture
def embedded(stack: Stack) -> Iterator[Service]:
    """examples/fastapi_host served by uvicorn on the stack's embedded port, against the
    stack's Keycloak, Redis and sample API."""
    config = stack.config
    env = {k: v for k, v in config.bff_env().items() if k not in ("BFF_HOST", "BFF_PORT", "BFF_STATIC_DIR")}
    env.update(
        BFF_PUBLIC_URL=config.embedded_url,
        BFF_ENV_FILE=os.devnull,
        EXAMPLE_UPSTREAM_URL=f"{config.api_url}/api/whoami",
        PATH=os.environ.get("PATH", ""),
    )
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "examples" / "fastapi_host")]
    cmd += ["main:app", "--host", "127.0.0.1", "--port", str(config.embedded_port)]
    yield from _serve_on_the_embedded_port(stack, "embedded", cmd, env, "/local/health")


def test_sign_in_and_a_local_api_call_through_the_embedded_form(
    stack: Stack, embedded: Service, contexts: Callable[[], BrowserContext]
) -> None:
    shots = Shots("7-embedded")
    page = contexts().new_page()
    page.goto(stack.config.embedded_url + "/")
    sign_in(page, stack, "bob", shots, back_to=stack.config.embedded_url)
    assert page.url.startswith(stack.config.embedded_url)
    shots(page, "signed-in-on-the-host-app")
    user_id = stack.user_id("bob")
    summary = xhr(page, "/local/summary")
    assert summary["status"] == 200, summary
    assert summary["body"]["sub"] == user_id
    upstream = summary["body"]["upstream"]
    assert upstream["status"] == 200 and upstream["body"]["sub"] == user_id  # the API took bob's token
    assert xhr(page, "/api/whoami")["body"]["sub"] == user_id  # and a proxied call, same process
    assert httpx.get(f"{stack.config.embedded_url}/local/summary", timeout=10).status_code == 403


@pytest.fixture
def dpop_bff(stack: Stack) -> Iterator[Service]:
    """A second BFF process, DPoP on, signing in with the realm's bff-dpop client (Keycloak
    issues it DPoP-bound tokens only), on the stack's embedded port (registered for both)."""
    config = stack.config
    env = dict(config.bff_env())
    env.update(
        BFF_PORT=str(config.embedded_port),
        BFF_PUBLIC_URL=config.embedded_url,
        BFF_CLIENT_ID=DPOP_CLIENT_ID,
        BFF_CLIENT_SECRET=DPOP_CLIENT_SECRET,
        BFF_DPOP="true",
        BFF_ENV_FILE=os.devnull,
        PATH=os.environ.get("PATH", ""),
    )
    yield from _serve_on_the_embedded_port(stack, "bff-dpop", [sys.executable, "-m", "bff"], env, "/readyz")


def _serve_on_the_embedded_port(
    stack: Stack, name: str, cmd: list[str], env: dict[str, str], ready_path: str
) -> Iterator[Service]:
    """Run a second server on the stack's embedded port until the test is done."""
    port, url = stack.config.embedded_port, stack.config.embedded_url
    service = Service(name, cmd, env, port, _http_ok(url + ready_path), ARTIFACTS / "logs" / f"{name}.log")
    service.start()
    try:
        service.wait_ready()
        yield service
    finally:
        service.stop()


def test_dpop_bound_tokens_sign_in_call_refresh_and_sign_out(
    stack: Stack, dpop_bff: Service, contexts: Callable[[], BrowserContext]
) -> None:
    shots = Shots("8-dpop")
    page = contexts().new_page()
    page.goto(stack.config.embedded_url + "/")
    sign_in(page, stack, "alice", shots, back_to=stack.config.embedded_url)
    first = call_api(page)
    assert first["token"]["dpop_bound"] is True  # the sample API checked cnf.jkt against the proof
    seen = {s["jti"]: s for s in api_seen(stack)}
    jkt = seen[first["token"]["jti"]]["dpop_jkt"]
    assert jkt
    page.get_by_test_id("call-reports").click()
    reports = shown(page, "reports-result")
    assert reports["token"]["dpop_bound"] is True  # the exchanged token is bound to the same key
    # Refresh (with a proof of the same key) once the token is within the refresh window.
    time.sleep(max(0.0, first["token"]["exp"] - REFRESH_SKEW + 1 - time.time()))
    second = call_api(page)
    shots(page, "after-refresh")
    assert second["token"]["jti"] != first["token"]["jti"] and second["token"]["dpop_bound"] is True
    assert {s["jti"]: s for s in api_seen(stack)}[second["token"]["jti"]]["dpop_jkt"] == jkt
    page.get_by_test_id("logout-button").click()
    page.wait_for_url(f"{stack.config.embedded_url}/")
    expect(page.get_by_test_id("signed-out")).to_be_visible()
    assert xhr(page, "/bff/user")["status"] == 401


def test_the_live_panel_gets_messages_through_the_bff_and_stops_when_the_session_ends(
    stack: Stack, contexts: Callable[[], BrowserContext]
) -> None:
    shots = Shots("9-websocket")
    page = open_spa(contexts(), stack)
    sign_in(page, stack, "alice")
    panel = page.get_by_test_id("live-panel")
    expect(panel).to_have_attribute("data-state", "open")
    expect(page.get_by_test_id("live-last")).to_contain_text("Server time")
    page.wait_for_function(
        "() => Number(document.querySelector('[data-testid=live-panel]').dataset.ticks) >= 3", timeout=10_000
    )
    shots(page, "live-messages")
    live = [s for s in api_seen(stack) if s["path"] == "/api/live"]
    assert live and live[-1]["sub"] == stack.user_id("alice")  # the API validated the BFF's token
    # The session ends without this page doing anything (an administrator signs alice out at
    # Keycloak, which sends a back-channel logout): the BFF closes the socket with 4401.
    assert stack.admin("POST", f"/users/{stack.user_id('alice')}/logout").status_code == 204
    expect(panel).to_have_attribute("data-state", "closed", timeout=10_000)
    expect(page.get_by_test_id("live-state")).to_contain_text("4401")
    shots(page, "live-closed-by-logout")
