"""Fixtures for the end-to-end tests: the native demo stack (demo/stack.py) on free ports
and headless Chromium driven by Playwright, each started once for the tests/e2e package
and stopped right after its last test.

Package scope, not session scope, on purpose: Playwright's sync API keeps an asyncio loop
running in the main thread while it is open, and pytest-asyncio cannot run any async test
or fixture while that is so; the stack (Keycloak's JVM above all) should not idle through
the rest of the suite either. Tests here are therefore synchronous.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Playwright, sync_playwright

from demo.stack import Stack, StackError, config_for_tests
from tests.support import ROOT

ARTIFACTS = ROOT / "test-artifacts" / "e2e"
CHROMIUM = "/usr/bin/chromium"
# Flags Chromium needs here (as root, in a closed network). Playwright gives every launch
# a fresh, temporary profile (--user-data-dir) of its own and refuses one passed in args.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The realm gives access tokens 60 s. The BFF refreshes a token that expires within
# BFF_TOKEN_REFRESH_SKEW seconds; with 55 a token counts as "about to expire" 5 s after it
# was issued, so the refresh test waits ~6 s instead of a minute. Keycloak still does a
# real refresh (with refresh-token rotation) exactly as it would at expiry.
REFRESH_SKEW = 55
UI_TIMEOUT = 20_000  # ms, for anything that involves Keycloak


@pytest.fixture(scope="package")
def stack() -> Iterator[Stack]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in [*ARTIFACTS.glob("*.png"), *ARTIFACTS.glob("logs/*.log")]:
        old.unlink()
    for attempt in range(3):
        config = config_for_tests(
            ARTIFACTS / "logs",
            BFF_TOKEN_REFRESH_SKEW=str(REFRESH_SKEW),
            BFF_LOG_FORMAT="text",
        )
        stack = Stack(config)
        try:
            stack.start()
        except StackError as exc:
            # Ports are picked before the processes bind them; another process on the
            # machine may take one in between. Only that is worth another try.
            if attempt == 2 or "already in use" not in str(exc).lower():
                raise
            continue
        break
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run ./scripts/install")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield launched
    launched.close()


@pytest.fixture
def contexts(browser: Browser) -> Iterator[Callable[[], BrowserContext]]:
    """new_context(): a separate browser profile (own cookies), closed after the test."""
    made: list[BrowserContext] = []

    def new_context() -> BrowserContext:
        context = browser.new_context(viewport={"width": 1100, "height": 900})
        context.set_default_timeout(UI_TIMEOUT)
        made.append(context)
        return context

    yield new_context
    for context in made:
        context.close()
