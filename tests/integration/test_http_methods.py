"""A known endpoint called with a method it does not serve answers 405 with Allow and the
usual JSON error body; an unknown /bff path is a JSON 404 (never the SPA's index page)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/bff/backchannel-logout", "POST"),
        ("PUT", "/bff/user", "GET, HEAD"),
        ("POST", "/bff/user", "GET, HEAD"),
        ("DELETE", "/bff/login", "GET, HEAD"),
        ("POST", "/bff/callback", "GET, HEAD"),
        ("PATCH", "/bff/sessions", "DELETE, GET, HEAD"),
        ("GET", "/bff/sessions/abc", "DELETE"),
        ("PUT", "/bff/logout", "GET, HEAD, POST"),
        ("POST", "/healthz", "GET, HEAD"),
    ],
)
async def test_a_known_endpoint_with_another_method_is_405_with_allow(bff, method, path, allow):
    _, browser = bff
    r = await browser.request(method, path, csrf=True)
    assert r.status_code == 405, r.text
    assert sorted(m.strip() for m in r.headers["allow"].split(",")) == sorted(allow.split(", "))
    assert r.json()["error"] == "method_not_allowed"
    assert method in r.json()["message"]


async def test_an_unknown_bff_path_is_a_json_404_even_with_the_spa_served(make_bff, tmp_path):
    (tmp_path / "index.html").write_text("<!doctype html><title>spa</title>")
    _, browser = await make_bff(BFF_STATIC_DIR=str(tmp_path))
    r = await browser.get("/bff/nothing-here", csrf=True)
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"
    assert (await browser.get("/some/client/route")).text.startswith("<!doctype html>")
