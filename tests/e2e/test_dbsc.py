"""Device-bound sessions in a real browser: headless Chromium with DBSC's software keys
signs in through Keycloak to a BFF served over https (a test certificate Chromium is told
to trust by its key), registers a device key, refreshes its bound cookie by proof; the
session cookie copied into another, non-DBSC browser stops working once the bound cookie
it came with expires.

The flags Chromium 156 needs (docs/security.md): the DeviceBoundSessions feature without
origin-trial tokens or refresh quota, software keys (no TPM here), the DevTools events, and
``--ignore-certificate-errors-spki-list`` (plain http, or --ignore-certificate-errors, makes
Chromium ignore DBSC).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Playwright, expect

from demo.stack import Service, Stack
from tests.e2e.conftest import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, UI_TIMEOUT
from tests.e2e.test_browser import Shots, bff_status, call_api, sign_in, wait_until
from tests.tls import self_signed

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

DBSC_FEATURES = (
    "--enable-features=DeviceBoundSessions:RequireOriginTrialTokens/false/RefreshQuota/false,"
    "EnableBoundSessionCredentialsSoftwareKeysForManualTesting,DeviceBoundSessionsDevTools"
)
BOUND_COOKIE_TTL = 15  # seconds: short, so the test sees a refresh and a copied cookie die


@pytest.fixture
def secure_bff(stack: Stack, tmp_path: Path) -> Iterator[tuple[Service, str]]:
    """The BFF on the stack's https origin with DBSC optional, served by uvicorn with TLS."""
    certificate = self_signed(tmp_path, "localhost", dns=("localhost",), prefix="bff-")
    key_file, cert_file, spki = certificate.key_file, certificate.cert_file, certificate.spki_sha256
    config = stack.config
    env = {k: v for k, v in config.bff_env().items() if k not in ("BFF_HOST", "BFF_PORT")}
    env.update(
        BFF_PUBLIC_URL=config.secure_url,
        BFF_DEVICE_BOUND_SESSIONS="optional",
        BFF_DBSC_COOKIE_TTL=str(BOUND_COOKIE_TTL),
        BFF_LOG_FORMAT="text",
        BFF_ENV_FILE=os.devnull,
        PATH=os.environ.get("PATH", ""),
    )
    cmd = [sys.executable, "-m", "uvicorn", "bff.app:app_from_env", "--factory", "--host", "127.0.0.1"]
    cmd += [
        "--port",
        str(config.secure_port),
        "--ssl-keyfile",
        str(key_file),
        "--ssl-certfile",
        str(cert_file),
    ]
    service = Service(
        "bff-dbsc",
        cmd,
        env,
        config.secure_port,
        lambda: httpx.get(f"{config.secure_url}/readyz", verify=str(cert_file), timeout=2).status_code == 200,
        ARTIFACTS / "logs" / "bff-dbsc.log",
    )
    service.start()
    try:
        service.wait_ready()
        yield service, spki
    finally:
        service.stop()


@pytest.fixture
def dbsc_browser(playwright: Playwright, secure_bff: tuple[Service, str]) -> Iterator[Browser]:
    _, spki = secure_bff
    args = [*CHROMIUM_ARGS, DBSC_FEATURES, f"--ignore-certificate-errors-spki-list={spki}"]
    launched = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
    yield launched
    launched.close()


def dbsc_metric(stack: Stack, event: str) -> float:
    text = httpx.get(f"{stack.config.secure_url}/metrics", verify=False, timeout=5).text  # noqa: S501 - test cert
    for line in text.splitlines():
        if line.startswith(f'bff_dbsc_events_total{{event="{event}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_a_dbsc_browser_binds_its_session_and_a_copied_cookie_stops_working(
    stack: Stack, secure_bff: tuple[Service, str], dbsc_browser: Browser, browser: Browser
) -> None:
    shots = Shots("10-dbsc")
    context = dbsc_browser.new_context(viewport={"width": 1100, "height": 900})
    context.set_default_timeout(UI_TIMEOUT)
    page = context.new_page()
    events: list[dict[str, Any]] = []
    cdp = context.new_cdp_session(page)

    def record(event: dict[str, Any]) -> None:
        events.append(event)
        (ARTIFACTS / "dbsc-events.json").write_text(json.dumps(events, indent=1))

    cdp.on("Network.deviceBoundSessionEventOccurred", record)
    cdp.on("Network.deviceBoundSessionsAdded", record)
    cdp.send("Network.enable")
    cdp.send("Network.enableDeviceBoundSessions", {"enable": True})
    page.goto(stack.config.secure_url + "/")
    sign_in(page, stack, "alice", shots, back_to=stack.config.secure_url)

    # The browser registers a device key (the BFF's metrics and /bff/user say so).
    wait_until(lambda: dbsc_metric(stack, "registered") >= 1, 20.0, "the DBSC registration")
    binding = page.evaluate(
        'async () => (await (await fetch("/bff/user", {headers: {"X-CSRF": "1"}})).json()).device_binding'
    )
    assert binding == {"state": "bound", "deadline": None}
    cookies = {c["name"]: c for c in context.cookies(stack.config.secure_url)}
    assert {"__Host-Http-bff_session", "__Host-bff_bound"} <= set(cookies)
    assert cookies["__Host-bff_bound"]["httpOnly"] and cookies["__Host-bff_bound"]["secure"]
    shots(page, "bound")

    # Requests go on working across the bound cookie's expiry: the browser refreshes it by
    # proof of its key (proactively: less than 120 s is always left of a 15 s cookie).
    copied = [cookies["__Host-Http-bff_session"], cookies["__Host-bff_bound"]]
    for _ in range(4):
        assert call_api(page)["sub"] == stack.user_id("alice"), events
        time.sleep(BOUND_COOKIE_TTL / 2)
    assert dbsc_metric(stack, "refreshed") >= 1, events
    assert bff_status(page) == 200

    # The same cookies copied into another browser (no DBSC, no device key): refused once the
    # copied bound cookie expires, and at once with the session cookie alone.
    thief = browser.new_context(ignore_https_errors=True)
    thief.add_cookies(
        [
            {
                k: c[k]
                for k in ("name", "value", "domain", "path", "secure", "httpOnly", "sameSite", "expires")
            }
            for c in copied
        ]
    )
    stolen = thief.new_page()
    stolen.goto(stack.config.secure_url + "/")
    assert bff_status(stolen) in (200, 401)  # the copied bound cookie may still be alive
    time.sleep(max(0.0, copied[1]["expires"] - time.time()) + 1)
    status = stolen.evaluate('async () => (await fetch("/bff/user", {headers: {"X-CSRF": "1"}})).json()')
    assert status["error"] == "device_binding_required"
    thief.clear_cookies()
    thief.add_cookies(
        [{k: copied[0][k] for k in ("name", "value", "domain", "path", "secure", "httpOnly", "sameSite")}]
    )
    status = stolen.evaluate('async () => (await fetch("/bff/user", {headers: {"X-CSRF": "1"}})).json()')
    assert status["error"] == "device_binding_required"
    thief.close()
    # ... while the device that holds the key still works.
    expect(page.get_by_test_id("signed-in")).to_be_visible()
    assert bff_status(page) == 200
    shots(page, "still-signed-in-on-the-device")
    # Chromium's own account (DevTools events): a session created and refreshed by proof.
    succeeded = {k for e in events if e.get("succeeded") for k in e if k.endswith("EventDetails")}
    assert {"creationEventDetails", "refreshEventDetails"} <= succeeded, events
    context.close()
