"""docker-compose.yml and the native demo stack (demo/stack.py) describe the same demo:
the same services, the same published ports, the same BFF_* variables with matching
values, the same Keycloak version and realm, and the realm file agrees with both.

docker-compose.yml keeps to a plain YAML subset (block mappings and lists, flow lists of
scalars, quoted or plain scalars, comments), read here by a small reader so the test
needs no YAML library.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from demo import stack as native

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


# --- a reader for the YAML subset -------------------------------------------------------


def _scalar(text: str) -> Any:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [_scalar(part) for part in _split_flow(inner)] if inner else []
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return json.loads(text)  # YAML double-quoted escapes are a superset of JSON's
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    return text


def _split_flow(text: str) -> list[str]:
    parts, current, quote = [], "", ""
    for ch in text:
        if quote:
            current += ch
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
            current += ch
        elif ch == ",":
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts]


def _strip_comment(line: str) -> str:
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def read_yaml_subset(text: str) -> Any:
    lines: list[tuple[int, str]] = []
    for raw in text.splitlines():
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise ValueError(f"tab indentation: {raw!r}")
        line = _strip_comment(raw)
        if line.strip():
            lines.append((len(line) - len(line.lstrip()), line.strip()))
    pos = 0

    def block(indent: int) -> Any:
        nonlocal pos
        if pos >= len(lines):
            return None
        if lines[pos][1].startswith("- ") or lines[pos][1] == "-":
            items: list[Any] = []
            while pos < len(lines) and lines[pos][0] == indent and lines[pos][1].startswith("-"):
                item = lines[pos][1][1:].strip()
                pos += 1
                if not item:
                    items.append(block(lines[pos][0]))
                elif re.match(r"^[\w.-]+:(\s|$)", item):
                    raise ValueError(f"mappings inside lists are outside the subset: {item!r}")
                else:
                    items.append(_scalar(item))
            return items
        mapping: dict[str, Any] = {}
        while pos < len(lines) and lines[pos][0] == indent:
            m = re.match(r'^("[^"]*"|[^:]+):(?:\s+(.*))?$', lines[pos][1])
            if not m:
                raise ValueError(f"not a 'key: value' line: {lines[pos][1]!r}")
            key = str(_scalar(m.group(1)))
            pos += 1
            if m.group(2) is not None and m.group(2) != "":
                mapping[key] = _scalar(m.group(2))
            elif pos < len(lines) and lines[pos][0] > indent:
                mapping[key] = block(lines[pos][0])
            else:
                mapping[key] = None
        return mapping

    result = block(0)
    if pos != len(lines):
        raise ValueError(f"unexpected indentation at {lines[pos][1]!r}")
    return result


def test_reader_handles_the_subset() -> None:
    doc = read_yaml_subset(
        'a: 1\nb:\n  c: "x # y"  # comment\n  d: [e, "f g", \'h\']\n  l:\n    - "8080:80"\n    - z\n'
    )
    assert doc == {"a": "1", "b": {"c": "x # y", "d": ["e", "f g", "h"], "l": ["8080:80", "z"]}}


# --- the agreement --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = read_yaml_subset(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svc: dict[str, dict[str, Any]] = compose["services"]
    return svc


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment must be a mapping"
    return {str(k): str(v) for k, v in env.items()}


def test_same_services(services: dict[str, dict[str, Any]]) -> None:
    config = native.StackConfig()
    assert set(services) == set(native.CONTAINER_PORTS) == set(config.ports)


def test_same_published_ports(services: dict[str, dict[str, Any]]) -> None:
    config = native.StackConfig()
    for name, service in services.items():
        published = {str(p) for p in service.get("ports") or []}
        if name in native.PUBLISHED:
            assert published == {f"{config.ports[name]}:{native.CONTAINER_PORTS[name]}"}, name
        else:
            assert not published, f"{name} must not be published by docker-compose"


def test_same_bff_variables(services: dict[str, dict[str, Any]]) -> None:
    config = native.StackConfig()
    compose_env = _env(services["bff"])
    native_env = config.bff_env()
    compose_names = {k for k in compose_env if k.startswith("BFF_")}
    assert compose_names == set(native_env) == set(native.BFF_VARIABLES)

    # Same values where both see the same thing; container host names where they differ.
    for name in (
        "BFF_ISSUER",
        "BFF_CLIENT_ID",
        "BFF_CLIENT_SECRET",
        "BFF_PUBLIC_URL",
        "BFF_SCOPES",
        "BFF_DPOP",
    ):
        assert compose_env[name] == native_env[name], name
    assert compose_env["BFF_SECRET_KEY"] == native_env["BFF_SECRET_KEY"]
    kc_inside = f"http://keycloak:{native.CONTAINER_PORTS['keycloak']}"
    assert compose_env["BFF_DISCOVERY_URL"] == native_env["BFF_DISCOVERY_URL"].replace(
        config.keycloak_url, kc_inside
    )
    assert compose_env["BFF_PORT"] == str(native.CONTAINER_PORTS["bff"])
    assert compose_env["BFF_HOST"] == "0.0.0.0"
    assert compose_env["BFF_REDIS_URL"] == f"redis://redis:{native.CONTAINER_PORTS['redis']}/0"
    assert compose_env["BFF_API_ROUTES"] == native.api_routes(f"http://api:{native.CONTAINER_PORTS['api']}")
    assert native_env["BFF_API_ROUTES"] == native.api_routes(config.api_url)


def test_same_keycloak(services: dict[str, dict[str, Any]]) -> None:
    config = native.StackConfig()
    kc = services["keycloak"]
    assert kc["image"] == f"quay.io/keycloak/keycloak:{native.KEYCLOAK_VERSION}"
    command = kc["command"]
    native_args = config.keycloak_args()
    for arg in ("start-dev", "--db=dev-mem", "--import-realm"):
        assert arg in command and arg in native_args, arg
    assert f"--http-port={native.CONTAINER_PORTS['keycloak']}" in command
    env = _env(kc)
    native_env = config.keycloak_env()
    # The issuer the browser sees is the same in both.
    assert env["KC_HOSTNAME"] == config.keycloak_url
    assert f"--hostname={config.keycloak_url}" in native_args
    assert env["KC_HOSTNAME_BACKCHANNEL_DYNAMIC"] == "true"
    for name in (
        "KC_BOOTSTRAP_ADMIN_USERNAME",
        "KC_BOOTSTRAP_ADMIN_PASSWORD",
        "DEMO_BFF_URL",
        "DEMO_EMBEDDED_URL",
    ):
        assert env[name] == native_env[name], name
    assert env["DEMO_BACKCHANNEL_LOGOUT_URL"] == (
        f"http://bff:{native.CONTAINER_PORTS['bff']}/bff/backchannel-logout"
    )
    assert native_env["DEMO_BACKCHANNEL_LOGOUT_URL"] == f"{config.public_url}/bff/backchannel-logout"
    mounts = [str(v).split(":") for v in kc["volumes"]]
    assert ["./keycloak/realm-demo.json", "/opt/keycloak/data/import/realm-demo.json", "ro"] in mounts
    assert native.REALM_FILE == ROOT / "keycloak" / "realm-demo.json"


def test_same_api(services: dict[str, dict[str, Any]]) -> None:
    config = native.StackConfig()
    env = _env(services["api"])
    native_env = config.api_env()
    assert set(env) <= set(native_env)
    assert env["DEMO_API_ISSUER"] == native_env["DEMO_API_ISSUER"] == config.issuer
    assert env["DEMO_API_AUDIENCE"] == native_env["DEMO_API_AUDIENCE"] == native.API_AUDIENCE
    assert (
        env["DEMO_API_REPORTS_AUDIENCE"] == native_env["DEMO_API_REPORTS_AUDIENCE"] == native.REPORTS_AUDIENCE
    )
    assert env["DEMO_API_PORT"] == str(native.CONTAINER_PORTS["api"])
    kc_inside = f"http://keycloak:{native.CONTAINER_PORTS['keycloak']}"
    assert env["DEMO_API_JWKS_URL"] == native_env["DEMO_API_JWKS_URL"].replace(config.keycloak_url, kc_inside)
    assert services["api"]["command"] == ["python", "-m", "demo.sample_api"]


def test_bff_image_serves_the_built_spa(services: dict[str, dict[str, Any]]) -> None:
    dockerfile = DOCKERFILE.read_text()
    static_dir = _env(services["bff"])["BFF_STATIC_DIR"]
    assert re.search(rf"^COPY --from=spa /spa/dist {re.escape(static_dir)}$", dockerfile, re.M)
    assert services["bff"]["build"] == "." and services["api"]["build"] == "."


def test_realm_agrees_with_both() -> None:
    realm = json.loads(native.REALM_FILE.read_text())
    config = native.StackConfig()
    assert realm["realm"] == native.REALM
    (client,) = [c for c in realm["clients"] if c["clientId"] == native.CLIENT_ID]
    assert client["secret"] == native.CLIENT_SECRET
    assert not client["publicClient"]
    default_bff = "${DEMO_BFF_URL:" + config.public_url + "}"
    default_embedded = "${DEMO_EMBEDDED_URL:" + config.embedded_url + "}"
    default_secure = "${DEMO_SECURE_URL:" + config.secure_url + "}"
    origins = (default_bff, default_embedded, default_secure)
    assert client["redirectUris"] == [f"{o}/bff/callback" for o in origins]
    attrs = client["attributes"]
    assert attrs["post.logout.redirect.uris"] == "##".join(f"{o}/bff/post-logout" for o in origins)
    # Token exchange for the reports API's audience and the BFF's own client credentials.
    assert attrs["standard.token.exchange.enabled"] == "true" and client["serviceAccountsEnabled"]
    assert native.REPORTS_AUDIENCE in client["optionalClientScopes"]
    assert native.REPORTS_AUDIENCE in {c["clientId"] for c in realm["clients"]}
    # The DPoP switch (DEMO_DPOP=1) uses a client whose tokens Keycloak issues DPoP-bound only.
    (dpop,) = [c for c in realm["clients"] if c["clientId"] == native.DPOP_CLIENT_ID]
    assert dpop["secret"] == native.DPOP_CLIENT_SECRET
    assert dpop["attributes"]["dpop.bound.access.tokens"] == "true"
    assert dpop["redirectUris"] == client["redirectUris"]
    dpop_env = native.StackConfig(dpop=True).bff_env()
    assert (dpop_env["BFF_CLIENT_ID"], dpop_env["BFF_DPOP"]) == (native.DPOP_CLIENT_ID, "true")
    assert attrs["backchannel.logout.url"] == (
        "${DEMO_BACKCHANNEL_LOGOUT_URL:" + config.public_url + "/bff/backchannel-logout}"
    )
    assert attrs["pkce.code.challenge.method"] == "S256"
    assert attrs["backchannel.logout.session.required"] == "true"
    audiences = [
        m["config"]["included.custom.audience"]
        for m in client["protocolMappers"]
        if m["protocolMapper"] == "oidc-audience-mapper"
    ]
    assert audiences == [native.API_AUDIENCE]
    users = {u["username"]: u for u in realm["users"]}
    for name, password in native.DEMO_USERS.items():
        assert users[name]["credentials"][0]["value"] == password
        assert not users[name]["credentials"][0]["temporary"]
        assert users[name]["requiredActions"] == []
