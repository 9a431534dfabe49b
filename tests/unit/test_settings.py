"""Settings: every problem reported at once, one line each, secrets never shown."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bff.errors import ConfigError
from bff.settings import load_settings
from tests.support import SECRET

GOOD = {
    "BFF_ISSUER": "https://idp.example.com/realms/x",
    "BFF_CLIENT_ID": "bff",
    "BFF_CLIENT_SECRET": "super-secret-value",
    "BFF_PUBLIC_URL": "https://app.example.com",
    "BFF_SECRET_KEY": SECRET,
}


def problems(**env: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings({**GOOD, **env})
    return info.value.problems


def test_defaults_follow_the_spec():
    s = load_settings(GOOD)
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert s.discovery_url == "https://idp.example.com/realms/x/.well-known/openid-configuration"
    assert s.redis_url == "redis://localhost:6379/0" and s.session_store == "redis"
    assert s.scopes == ("openid", "profile", "email")  # no offline_access (see BFF_SCOPES)
    assert (s.session_idle_timeout, s.session_absolute_timeout) == (1800, 43200)
    assert s.post_logout_redirect_uri == "https://app.example.com/"
    assert s.redirect_uri == "https://app.example.com/bff/callback"
    assert s.cookie_name == "__Host-Http-bff_session" and s.secure_cookies
    assert (s.redis_timeout, s.id_token_max_iat_age) == (2.0, 600)
    assert s.token_refresh_skew == 60


def test_all_missing_required_settings_are_reported_together():
    with pytest.raises(ConfigError) as info:
        load_settings({})
    text = "\n".join(info.value.problems)
    for name in ("BFF_ISSUER", "BFF_CLIENT_ID", "BFF_CLIENT_SECRET", "BFF_PUBLIC_URL", "BFF_SECRET_KEY"):
        assert name in text


@pytest.mark.parametrize(
    "env,needle",
    [
        ({"BFF_ISSUER": "http://idp.example.com"}, "BFF_ISSUER must use https://"),
        ({"BFF_PUBLIC_URL": "http://app.example.com"}, "BFF_PUBLIC_URL must use https://"),
        ({"BFF_PUBLIC_URL": "https://app.example.com/path"}, "BFF_PUBLIC_URL must be an origin"),
        ({"BFF_ISSUER": "idp.example.com"}, "BFF_ISSUER must be an absolute http(s) URL"),
        ({"BFF_SECRET_KEY": "short"}, "at least 32 characters"),
        ({"BFF_SECRET_KEY": SECRET + ",short"}, "at least 32 characters"),
        ({"BFF_PORT": "eighty"}, "BFF_PORT must be a whole number"),
        ({"BFF_PORT": "70000"}, "BFF_PORT must be between 1 and 65535"),
        ({"BFF_SESSION_STORE": "postgres"}, "BFF_SESSION_STORE must be one of redis, memory"),
        ({"BFF_REDIS_URL": "http://x"}, "BFF_REDIS_URL must start with"),
        ({"BFF_SCOPES": "profile email"}, "must include openid"),
        ({"BFF_COOKIE_SAMESITE": "none"}, "BFF_COOKIE_SAMESITE must be one of lax, strict"),
        ({"BFF_API_ROUTES": "/api"}, "must look like /prefix=http://upstream"),
        ({"BFF_API_ROUTES": "/bff=http://x"}, "collides with the BFF's own"),
        ({"BFF_API_ROUTES": "/api=ftp://x"}, "must be an http(s) URL"),
        (
            {"BFF_API_ROUTES": '[{"prefix": "/api", "upstream": "http://x", "token": "admin"}]'},
            "route /api: token must be one of user, user-optional, none, client, user-or-client",
        ),
        (
            {"BFF_API_ROUTES": '[{"prefix": "/api", "upstream": "http://x", "timeout": 0}]'},
            "route /api: timeout must be a positive number",
        ),
        ({"BFF_API_ROUTES": '[{"prefix": "/api", "upstream": "http://x", "colour": 1}]'}, "unknown option"),
        ({"BFF_API_ROUTES": "[{"}, "not valid JSON"),
        ({"BFF_API_ROUTES": "/api=http://a,/api=http://b"}, "same prefix twice"),
        ({"BFF_API_ROUTES": "/api/../x=http://a"}, "'..' segment"),
        ({"BFF_ID_TOKEN_ALGS": "RS256,HS256"}, "only asymmetric"),
        ({"BFF_ID_TOKEN_ALGS": "none"}, "only asymmetric"),
        ({"BFF_ENCRYPTION_KEYS": "not-base64!"}, "BFF_ENCRYPTION_KEYS"),
        ({"BFF_ENCRYPTION_KEYS": "c2hvcnQ"}, "32 bytes"),
        ({"BFF_STATIC_DIR": "/nonexistent"}, "must be a folder holding index.html"),
        ({"BFF_CLIENT_AUTH_METHOD": "private_key_jwt"}, "BFF_CLIENT_PRIVATE_KEY is required"),
        ({"BFF_COOKIE_NAME": "__Host-x"}, None),
        ({"BFF_TRUSTED_PROXIES": "not-an-ip"}, "BFF_TRUSTED_PROXIES"),
        ({"BFF_EXTRA_AUTH_PARAMS": "state=x"}, "may not set state"),
        ({"BFF_INSECURE_ALLOW_HTTP": "perhaps"}, "must be true or false"),
        ({"BFF_SESSION_STORE": "memory", "BFF_WORKERS": "2"}, "BFF_WORKERS must be 1"),
        ({"BFF_REDIS_TIMEOUT": "soon"}, "BFF_REDIS_TIMEOUT must be a number of seconds"),
        ({"BFF_REDIS_TIMEOUT": "0"}, "BFF_REDIS_TIMEOUT must be between 0.1 and 60"),
        ({"BFF_REDIS_TIMEOUT": "0.5"}, None),
        ({"BFF_ID_TOKEN_MAX_IAT_AGE": "5"}, "BFF_ID_TOKEN_MAX_IAT_AGE must be between 10 and 86400"),
        ({"BFF_DPOP_CLIENT_KEY": '{"kty": "EC"}'}, "BFF_DPOP_CLIENT_KEY is not a readable private key"),
        (
            {"BFF_CLIENT_PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----"},
            "PEM or JWK",
        ),
    ],
)
def test_an_invalid_value_is_one_clear_line_naming_the_variable(env, needle):
    if needle is None:  # valid on https
        load_settings({**GOOD, **env})
        return
    found = problems(**env)
    assert len(found) == 1, found
    assert needle in found[0], found
    assert found[0].startswith("BFF_") and next(iter(env)) in found[0]


def test_http_is_allowed_for_loopback_and_when_explicitly_allowed():
    s = load_settings(
        {**GOOD, "BFF_ISSUER": "http://127.0.0.1:9/x", "BFF_PUBLIC_URL": "http://localhost:8080"}
    )
    assert s.cookie_name == "bff_session" and not s.secure_cookies
    s = load_settings({**GOOD, "BFF_ISSUER": "http://idp.internal", "BFF_INSECURE_ALLOW_HTTP": "true"})
    assert s.issuer == "http://idp.internal"


def test_routes_short_and_json_forms():
    s = load_settings({**GOOD, "BFF_API_ROUTES": "/api=http://a:1, /api/admin=https://b/base/"})
    assert [(r.prefix, r.upstream) for r in s.api_routes] == [
        ("/api/admin", "https://b/base"),
        ("/api", "http://a:1"),
    ]
    assert s.api_routes[1].token == "user" and not s.api_routes[1].strip_prefix
    s = load_settings(
        {
            **GOOD,
            "BFF_API_ROUTES": '[{"prefix": "/x/", "upstream": "http://a", "token": "none",'
            ' "strip_prefix": true, "timeout": 2.5}]',
        }
    )
    r = s.api_routes[0]
    assert (r.prefix, r.token, r.strip_prefix, r.timeout) == ("/x", "none", True, 2.5)


def test_repr_masks_secrets():
    s = load_settings({**GOOD, "BFF_REDIS_URL": "redis://:redispass@host:6379/0"})
    text = repr(s)
    for secret in ("super-secret-value", SECRET, "redispass"):
        assert secret not in text
    assert "bff" in text and "https://idp.example.com/realms/x" in text


def test_python_m_bff_without_issuer_prints_one_line_and_exits_non_zero(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        **{k: v for k, v in GOOD.items() if k != "BFF_ISSUER"},
    }
    result = subprocess.run(
        [sys.executable, "-m", "bff"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "bff: configuration error: BFF_ISSUER is required (the OIDC issuer URL, "
        "e.g. https://idp.example.com/realms/x)"
    ]
    assert "super-secret-value" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "url,needle",
    [
        ("redis+sentinel://h:port/mymaster", "invalid port"),
        ("redis+sentinel://h:26379/mymaster/zero", "invalid database"),
        ("redis+cluster://", "names no host"),
    ],
)
def test_a_malformed_sentinel_or_cluster_url_is_one_clear_line(url, needle):
    found = problems(BFF_REDIS_URL=url)
    assert len(found) == 1 and found[0].startswith("BFF_REDIS_URL") and needle in found[0], found


def test_route_token_policies_and_parameters_in_the_json_form():
    routes = json.dumps(
        [
            {"prefix": "/reports", "upstream": "http://r", "audience": "demo-reports", "scope": "b a a"},
            {
                "prefix": "/m2m",
                "upstream": "http://m",
                "token": "client",
                "resource": "https://api.example/x",
            },
            {
                "prefix": "/mixed",
                "upstream": "http://x",
                "token": "user-or-client",
                "resource": ["urn:b", "urn:a"],
            },
        ]
    )
    by_prefix = {r.prefix: r for r in load_settings({**GOOD, "BFF_API_ROUTES": routes}).api_routes}
    assert by_prefix["/reports"].audience == "demo-reports"
    assert by_prefix["/reports"].scope == "a b"  # normalised: the cache key does not depend on the spelling
    assert by_prefix["/m2m"].token == "client" and by_prefix["/m2m"].resource == ("https://api.example/x",)
    assert by_prefix["/mixed"].resource == ("urn:a", "urn:b")
    assert all(r.shapes_token for r in by_prefix.values())


def test_every_problem_of_every_route_is_reported_at_once():
    routes = json.dumps(
        [
            {"prefix": "/a", "upstream": "ftp://x", "token": "admin", "resource": "relative/path"},
            {"prefix": "/b", "upstream": "http://x", "token": "none", "audience": "api"},
            {
                "prefix": "/c",
                "upstream": "http://x",
                "resource": "https://x/#frag",
                "scope": "read caf\u00e9",
            },
        ]
    )
    found = problems(BFF_API_ROUTES=routes)
    assert len(found) == 6, found
    assert any("route /a: upstream must be" in p for p in found)
    assert any("route /a: token must be one of" in p for p in found)
    assert any("route /a: resource 'relative/path'" in p for p in found)
    assert any("route /b: audience, resource and scope need a token policy" in p for p in found)
    assert any("route /c: resource 'https://x/#frag'" in p for p in found)
    assert any("route /c: scope must be" in p for p in found)


@pytest.mark.parametrize("kind", ["rsa", "ed25519", "p521"])
def test_a_dpop_client_key_of_any_supported_type_loads_and_the_fapi2_rules_judge_it(kind):
    """An RSA or Ed25519 PEM (once a traceback at start-up) is read like the client assertion
    key; under fapi2 an RSA key signs PS256 and P-521 (ES512) is one clear unmet rule."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    private = {
        "rsa": lambda: rsa.generate_private_key(65537, 2048),
        "ed25519": ed25519.Ed25519PrivateKey.generate,
        "p521": lambda: ec.generate_private_key(ec.SECP521R1()),
    }[kind]()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    load_settings({**GOOD, "BFF_DPOP": "true", "BFF_DPOP_CLIENT_KEY": pem})
    found = problems(BFF_PROFILE="fapi2", BFF_DPOP_CLIENT_KEY=pem)
    assert all(line.startswith("BFF_") for line in found), found
    assert any("BFF_DPOP_CLIENT_KEY" in line for line in found) == (kind == "p521"), found
