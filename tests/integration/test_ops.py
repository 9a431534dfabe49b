"""Health, readiness, metrics, request ids, the served SPA, check-config and serving processes."""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.support import BffProc, bff_env, free_port


async def test_health_and_readiness(bff):
    _, browser = bff
    r = await browser.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = await browser.get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"] == {"session_store": "ok", "idp_metadata": "ok"}


async def test_metrics_count_logins_refreshes_proxied_calls_and_sessions(make_bff, idp):
    idp.configure(access_ttl=0)
    app, browser = await make_bff(BFF_TOKEN_REFRESH_SKEW="60")
    await browser.login()
    await browser.get("/api/echo", csrf=True)
    await browser.get("/api/status/404", csrf=True)
    signed_out = await make_bff.new_browser(app)
    await signed_out.get("/bff/callback?state=nope")
    text = (await browser.get("/metrics")).text
    for line in (
        "bff_logins_started_total 1.0",
        "bff_logins_completed_total 1.0",
        'bff_logins_failed_total{reason="unknown_state"} 1.0',
        'bff_token_refreshes_total{outcome="ok"}',
        'bff_proxy_requests_total{route="/api",status="200"} 1.0',
        'bff_proxy_requests_total{route="/api",status="404"} 1.0',
        'bff_proxy_request_duration_seconds_bucket{le="0.5",route="/api"}',
        "bff_idp_request_duration_seconds_count",
        "bff_sessions_estimate 1.0",
    ):
        assert line in text, line


async def test_request_id_is_returned_and_passed_upstream(bff):
    _, browser = bff
    await browser.login()
    r = await browser.get("/api/echo", csrf=True, headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert r.json()["headers"]["x-request-id"] == ["abc-123"]
    r = await browser.get("/api/echo", csrf=True, headers={"x-request-id": "bad id\twith spaces"})
    assert r.headers["x-request-id"] != "bad id\twith spaces"
    assert r.json()["headers"]["x-request-id"] == [r.headers["x-request-id"]]


async def test_the_spa_is_served_with_index_fallback_and_security_headers(make_bff, tmp_path):
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><title>spa</title>")
    (tmp_path / "assets" / "app-1234.js").write_text("console.log(1)")
    _, browser = await make_bff(BFF_STATIC_DIR=str(tmp_path), BFF_FRAME_ANCESTORS="'self'")
    r = await browser.get("/")
    assert r.status_code == 200 and "spa" in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'self'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert (await browser.get("/some/client/route")).text == r.text
    asset = await browser.get("/assets/app-1234.js")
    assert asset.status_code == 200 and "immutable" in asset.headers["cache-control"]
    r = await browser.get("/bff/nope", csrf=True)
    assert r.status_code == 404 and r.json()["error"] == "not_found"


async def test_wrong_method_is_a_json_405(bff):
    _, browser = bff
    r = await browser.request("PUT", "/bff/user", csrf=True)
    assert r.status_code == 405
    assert r.json()["error"] == "method_not_allowed"


def _env(idp, redis_url, **extra):
    clean = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    return {**clean, **bff_env(idp, redis_url, "http://localhost:8080", **extra)}


def test_check_config_reports_and_exits_0_when_everything_is_reachable(idp, redis_url, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bff", "check-config"],
        env=_env(idp, redis_url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Redis answers" in result.stdout
    assert "IdP metadata loaded" in result.stdout
    assert "result: ok" in result.stdout
    assert "test-secret" not in result.stdout


def test_check_config_fails_clearly_when_redis_is_unreachable(idp, redis_url, tmp_path):
    env = _env(idp, redis_url, BFF_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    result = subprocess.run(
        [sys.executable, "-m", "bff", "check-config"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "FAIL  Redis" in result.stdout


def test_python_m_bff_serves_on_host_and_port_with_workers(idp, redis_url, upstream, tmp_path):
    env = bff_env(
        idp, redis_url, "http://localhost:8080", BFF_WORKERS="2", BFF_API_ROUTES=f"/api={upstream.url}"
    )
    proc = BffProc(env, log=tmp_path / "bff.log")
    proc.start()
    try:
        assert httpx.get(f"{proc.url}/healthz").json() == {"status": "ok"}
        for _ in range(4):
            httpx.get(f"{proc.url}/bff/login", timeout=10)
        metrics = httpx.get(f"{proc.url}/metrics", timeout=10).text
        assert "bff_logins_started_total 4.0" in metrics  # summed over both workers
    finally:
        proc.stop()
