"""The demo's sample API (demo/sample_api.py) against real Keycloak tokens: it answers a
valid access token for its audience, and refuses everything else with a 401 JSON error.

Tokens come from two throw-away clients created through Keycloak's admin API for this
test (password grant, so no browser): one whose access tokens carry the "demo-api"
audience like the bff client's, one without it.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from demo.stack import API_AUDIENCE, DEMO_USERS, REALM, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@pytest.fixture(scope="module")
def probe_clients(stack: Stack) -> Iterator[dict[str, str]]:
    """client ids: "aud" (demo-api audience mapper) and "noaud"; deleted afterwards."""
    suffix = uuid.uuid4().hex[:8]
    made: dict[str, str] = {}
    for kind in ("aud", "noaud"):
        client_id = f"e2e-probe-{kind}-{suffix}"
        mappers = []
        if kind == "aud":
            mappers = [
                {
                    "name": "demo-api audience",
                    "protocol": "openid-connect",
                    "protocolMapper": "oidc-audience-mapper",
                    "config": {"included.custom.audience": API_AUDIENCE, "access.token.claim": "true"},
                }
            ]
        r = stack.admin(
            "POST",
            "/clients",
            json={
                "clientId": client_id,
                "publicClient": True,
                "standardFlowEnabled": False,
                "directAccessGrantsEnabled": True,
                "protocolMappers": mappers,
            },
        )
        assert r.status_code == 201, r.text
        made[kind] = client_id
    yield made
    for client_id in made.values():
        found = stack.admin("GET", "/clients", params={"clientId": client_id}).json()
        for client in found:
            stack.admin("DELETE", f"/clients/{client['id']}")


def tokens(stack: Stack, client_id: str) -> dict[str, Any]:
    r = httpx.post(
        f"{stack.config.issuer}/protocol/openid-connect/token",
        data={
            "grant_type": "password",
            "client_id": client_id,
            "username": "alice",
            "password": DEMO_USERS["alice"],
            "scope": "openid",
        },
        timeout=10.0,
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def whoami(stack: Stack, authorization: str | None) -> httpx.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    return httpx.get(f"{stack.config.api_url}/api/whoami", headers=headers, timeout=10.0)


def assert_refused(response: httpx.Response, error: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"] == error
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_sample_api_accepts_only_valid_access_tokens_for_its_audience(
    stack: Stack, probe_clients: dict[str, str]
) -> None:
    good = tokens(stack, probe_clients["aud"])
    access = good["access_token"]

    # Positive control: a real access token of the realm with the API's audience.
    r = whoami(stack, f"Bearer {access}")
    assert r.status_code == 200, r.text
    assert r.json()["preferred_username"] == "alice"
    assert API_AUDIENCE in r.json()["aud"]

    # No token, or another scheme.
    assert_refused(whoami(stack, None), "invalid_request")
    assert_refused(whoami(stack, "Basic YWxpY2U6YWxpY2UtcGFzc3dvcmQ="), "invalid_request")
    assert_refused(whoami(stack, "Bearer not-a-jwt"), "invalid_token")

    # Valid signature and issuer, but not for this API: no demo-api audience.
    other = tokens(stack, probe_clients["noaud"])["access_token"]
    assert API_AUDIENCE not in json.loads(_unb64(other.split(".")[1])).get("aud", [])
    assert_refused(whoami(stack, f"Bearer {other}"), "invalid_token")

    # The ID token of the same login: audience is the client, and it is not an access token.
    assert_refused(whoami(stack, f"Bearer {good['id_token']}"), "invalid_token")

    # Claims changed after signing (someone else's sub): the signature no longer matches.
    header, payload, signature = access.split(".")
    claims = json.loads(_unb64(payload))
    forged = _b64(json.dumps({**claims, "sub": str(uuid.uuid4())}).encode())
    assert_refused(whoami(stack, f"Bearer {header}.{forged}.{signature}"), "invalid_token")

    # Unsigned ("alg": "none") with the same claims.
    none_header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    assert_refused(whoami(stack, f"Bearer {none_header}.{payload}."), "invalid_token")

    # A real Keycloak token from another realm (master): other issuer, other keys.
    assert_refused(whoami(stack, f"Bearer {stack.admin_token()}"), "invalid_token")

    # The debug log holds what was accepted, never a token.
    seen = httpx.get(f"{stack.config.api_url}/debug/seen", timeout=5.0).text
    assert access not in seen and header not in seen
    assert json.loads(_unb64(payload))["jti"] in seen


def test_bff_refuses_the_api_without_a_session(stack: Stack) -> None:
    base = stack.config.public_url
    r = httpx.get(f"{base}/api/whoami", headers={"X-CSRF": "1"}, timeout=10.0)
    assert r.status_code == 401
    assert r.json()["error"] == "not_authenticated"
    # Without the anti-forgery header the BFF refuses before looking at the session.
    r = httpx.get(f"{base}/api/whoami", timeout=10.0)
    assert r.status_code in (401, 403)
    assert "error" in r.json()
    assert REALM == "demo"
