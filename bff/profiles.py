"""The FAPI 2.0 Security Profile's client rules (``BFF_PROFILE=fapi2``), checked once on the
configuration (start-up, check-config) and once on the IdP's metadata (start-up when it can
be reached, check-config, and whenever the metadata is loaded). Each unmet rule is one line.

What the profile makes the BFF do is in the code that does it: PAR always (settings), PKCE
S256 (always), RFC 9207 ``iss`` required at the callback, ``private_key_jwt`` with the
issuer as the assertion's audience, DPoP with server nonces, and only PS256, ES256 or EdDSA
for any signature the BFF checks (ID tokens, logout tokens, signed UserInfo) or makes
(client assertions, DPoP proofs). Mutual-TLS client authentication and mTLS-bound tokens,
which FAPI 2.0 allows instead, are not supported by this BFF.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .dpop import FAPI_ALGS as FAPI2_ALGS  # one list for proofs, keys and ID tokens
from .oidc.provider import ProviderMetadata
from .settings import Settings


def _key_alg(text: str) -> str | None:
    from .oidc.client import load_signing_key

    try:
        return load_signing_key(text)[1]
    except (ValueError, KeyError, TypeError):
        return None  # settings reports unreadable keys itself when they are used


def fapi2_config_problems(
    raw: Callable[[str], str | None], values: dict[str, Any], profile: dict[str, Any]
) -> list[str]:
    """The configuration's unmet rules (``raw`` reads a variable as it was given)."""
    problems: list[str] = []
    lead = "BFF_PROFILE=fapi2 needs"
    key = values.get("client_private_key")
    if not key:
        problems.append(f"{lead} BFF_CLIENT_PRIVATE_KEY (private_key_jwt; mTLS is not supported)")
    elif (alg := _key_alg(key)) not in FAPI2_ALGS:
        problems.append(
            f"{lead} a BFF_CLIENT_PRIVATE_KEY for PS256, ES256 or EdDSA, got {alg or 'an unreadable key'}"
        )
    if values.get("client_auth_method") not in ("auto", "private_key_jwt"):
        problems.append(f"{lead} BFF_CLIENT_AUTH_METHOD=private_key_jwt, got {values['client_auth_method']}")
    if not raw("BFF_ID_TOKEN_ALGS") or not set(values["id_token_algs"]) <= set(FAPI2_ALGS):
        problems.append(
            f"{lead} BFF_ID_TOKEN_ALGS set to the client's registered algorithm, one of PS256, ES256,"
            f" EdDSA (got {raw('BFF_ID_TOKEN_ALGS') or 'the default RS256'})"
        )
    if raw("BFF_USE_PAR") is not None and not values["use_par"]:  # set, and set to false
        problems.append(f"{lead} PAR: remove BFF_USE_PAR=false")
    if not profile["dpop"]:
        problems.append(f"{lead} DPoP: remove BFF_DPOP=false")
    client_key = profile.get("dpop_client_key")
    if client_key and _dpop_key_alg(client_key) not in FAPI2_ALGS:
        problems.append(f"{lead} a BFF_DPOP_CLIENT_KEY for PS256, ES256 or EdDSA")
    return problems


def _dpop_key_alg(text: str) -> str | None:
    from .dpop import deployment_key

    try:
        return deployment_key("", text).alg
    except (ValueError, KeyError, TypeError):
        return None


def fapi2_metadata_problems(
    meta: ProviderMetadata, id_token_algs: tuple[str, ...], key_alg: str | None
) -> list[str]:
    """The IdP's unmet rules, from its discovery metadata."""
    problems: list[str] = []
    lead = "BFF_PROFILE=fapi2: the IdP"
    if meta.pushed_authorization_request_endpoint is None:
        problems.append(f"{lead} has no pushed_authorization_request_endpoint (PAR is required)")
    if not meta.authorization_response_iss_parameter_supported:
        problems.append(f"{lead} does not send iss in authorization responses (RFC 9207 is required)")
    if "private_key_jwt" not in meta.token_endpoint_auth_methods_supported:
        problems.append(f"{lead} does not offer private_key_jwt client authentication")
    signing = meta.token_endpoint_auth_signing_alg_values_supported
    if signing and key_alg not in signing:
        problems.append(f"{lead} does not accept client assertions signed with {key_alg}")
    if not set(FAPI2_ALGS) & set(meta.dpop_signing_alg_values_supported):
        problems.append(f"{lead} offers no DPoP proof algorithm among PS256, ES256, EdDSA")
    if not set(id_token_algs) & set(meta.id_token_signing_alg_values_supported):
        problems.append(
            f"{lead} signs ID tokens with none of BFF_ID_TOKEN_ALGS ({', '.join(id_token_algs)}); it offers"
            f" {', '.join(meta.id_token_signing_alg_values_supported)}"
        )
    methods = meta.raw.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        problems.append(f"{lead} does not support PKCE S256")
    return problems


def metadata_problems(settings: Settings, meta: ProviderMetadata) -> list[str]:
    """The configured profile's rules the IdP's metadata does not meet (none without one)."""
    if settings.profile != "fapi2":
        return []
    key_alg = _key_alg(settings.client_private_key) if settings.client_private_key else None
    return fapi2_metadata_problems(meta, settings.id_token_algs, key_alg)
