"""Smoke tests of what is installed: run by scripts/test-wheel against the wheel installed in
a fresh virtual environment (with no checkout on sys.path), and in the normal suite against
the development install. A file missing from the package fails here."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import bff
from tests.support import BffProc, Browser, bff_env

pytestmark = pytest.mark.smoke
BIN = Path(sys.executable).parent


def test_the_package_under_test_is_the_installed_one():
    where = Path(bff.__file__).resolve()
    if os.environ.get("BFF_TEST_WHEEL"):
        assert "site-packages" in where.parts, where
    assert (where.parent / "py.typed").is_file()
    from importlib.metadata import version

    assert version("oidc-bff") == bff.__version__


def test_the_bff_command_is_installed_and_answers_help():
    result = subprocess.run([str(BIN / "bff"), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "check-config" in result.stdout and "keygen" in result.stdout


def test_bff_check_config_against_a_real_provider_and_redis(idp, redis_url, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **bff_env(idp, redis_url, "http://localhost:8080")}
    result = subprocess.run(
        [str(BIN / "bff"), "check-config"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "result: ok" in result.stdout


def test_a_bff_process_logs_in_proxies_and_logs_out(idp, redis_url, upstream, tmp_path):
    env = bff_env(idp, redis_url, "http://127.0.0.1:0", BFF_API_ROUTES=f"/api={upstream.url}")
    proc = BffProc(env, log=tmp_path / "bff.log")
    proc.env["BFF_PUBLIC_URL"] = proc.url
    proc.start()
    try:

        async def drive() -> None:
            async with httpx.AsyncClient(timeout=30) as client:
                browser = Browser(client, proc.url)
                assert (await browser.login()).status_code == 302
                assert (await browser.get("/bff/user", csrf=True)).status_code == 200
                echo = (await browser.get("/api/echo", csrf=True)).json()
                assert echo["headers"]["authorization"][0].startswith("Bearer ")
                assert (await browser.request("POST", "/bff/logout", csrf=True)).status_code == 302
                assert (await browser.get("/bff/user", csrf=True)).status_code == 401
                await browser.aclose()

        asyncio.run(drive())
    finally:
        proc.stop()
