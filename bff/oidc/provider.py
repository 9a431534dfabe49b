"""IdP metadata (OpenID Connect Discovery 1.0) and the JWKS cache.

Metadata is fetched once (retried with backoff until it succeeds) and its ``issuer``
must equal BFF_ISSUER exactly, even when it is fetched from BFF_DISCOVERY_URL. The
JWKS is cached; a token signed with an unknown ``kid`` triggers one refetch, at most
every ``refetch_interval`` seconds, so a flood of forged kids cannot hammer the IdP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from joserfc.jwk import KeySet

from ..errors import IdPUnavailable
from .errors import OIDCError

log = logging.getLogger("bff.oidc")


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None = None
    revocation_endpoint: str | None = None
    userinfo_endpoint: str | None = None
    pushed_authorization_request_endpoint: str | None = None
    token_endpoint_auth_methods_supported: tuple[str, ...] = ("client_secret_basic",)
    revocation_endpoint_auth_methods_supported: tuple[str, ...] = ("client_secret_basic",)
    id_token_signing_alg_values_supported: tuple[str, ...] = ("RS256",)
    token_endpoint_auth_signing_alg_values_supported: tuple[str, ...] = ()
    dpop_signing_alg_values_supported: tuple[str, ...] = ()
    authorization_response_iss_parameter_supported: bool = False
    require_pushed_authorization_requests: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, data: object, expected_issuer: str) -> ProviderMetadata:
        """Validate discovery metadata. Endpoints of an https issuer must be https too."""
        if not isinstance(data, dict):
            raise OIDCError("discovery_invalid", "IdP metadata is not a JSON object")
        if data.get("issuer") != expected_issuer:
            raise OIDCError(
                "discovery_issuer_mismatch",
                f"IdP metadata names issuer {data.get('issuer')!r}, expected {expected_issuer!r}",
            )
        schemes = ("https://",) if expected_issuer.startswith("https://") else ("https://", "http://")
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(data.get(name), str) or not data[name].startswith(schemes):
                raise OIDCError(
                    "discovery_invalid", f"IdP metadata lacks a valid {name} ({' or '.join(schemes)})"
                )

        def strs(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
            value = data.get(name)
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return tuple(value)
            return default

        def url(name: str) -> str | None:
            value = data.get(name)
            if value is None:
                return None
            if not isinstance(value, str) or not value.startswith(schemes):
                raise OIDCError("discovery_invalid", f"IdP metadata has an invalid {name}")
            return value

        token_methods = strs("token_endpoint_auth_methods_supported", ("client_secret_basic",))
        return cls(
            issuer=data["issuer"],
            authorization_endpoint=data["authorization_endpoint"],
            token_endpoint=data["token_endpoint"],
            jwks_uri=data["jwks_uri"],
            end_session_endpoint=url("end_session_endpoint"),
            revocation_endpoint=url("revocation_endpoint"),
            userinfo_endpoint=url("userinfo_endpoint"),
            pushed_authorization_request_endpoint=url("pushed_authorization_request_endpoint"),
            token_endpoint_auth_methods_supported=token_methods,
            revocation_endpoint_auth_methods_supported=strs(
                "revocation_endpoint_auth_methods_supported", token_methods
            ),
            id_token_signing_alg_values_supported=strs("id_token_signing_alg_values_supported", ("RS256",)),
            token_endpoint_auth_signing_alg_values_supported=strs(
                "token_endpoint_auth_signing_alg_values_supported", ()
            ),
            dpop_signing_alg_values_supported=strs("dpop_signing_alg_values_supported", ()),
            authorization_response_iss_parameter_supported=data.get(
                "authorization_response_iss_parameter_supported"
            )
            is True,
            require_pushed_authorization_requests=data.get("require_pushed_authorization_requests") is True,
            raw=data,
        )


class Provider:
    """Holds the IdP's metadata and keys for the life of the process."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        discovery_url: str,
        issuer: str,
        *,
        refetch_interval: float = 10.0,
        jwks_max_age: float = 3600.0,
        clock: Any = time.monotonic,
        check: Callable[[ProviderMetadata], list[str]] | None = None,
    ) -> None:
        self._http = http
        self._discovery_url = discovery_url
        self._issuer = issuer
        self._refetch_interval = refetch_interval
        self._jwks_max_age = jwks_max_age
        self._clock = clock
        self._check = check  # the security profile's rules on the metadata (profiles.py)
        self._metadata: ProviderMetadata | None = None
        self._keys: KeySet | None = None
        self._keys_fetched_at = float("-inf")
        self._last_refetch = float("-inf")
        self._meta_lock = asyncio.Lock()
        self._keys_lock = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        return self._metadata is not None

    async def _get_json(self, url: str, what: str) -> object:
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise IdPUnavailable(f"The identity provider could not be reached ({what}).") from exc
        if response.status_code >= 500:
            raise IdPUnavailable(
                f"The identity provider failed to serve its {what} ({response.status_code})."
            )
        if response.status_code != 200:
            raise OIDCError(f"{what}_unavailable", f"IdP answered {response.status_code} for its {what}")
        try:
            return response.json()
        except ValueError:
            raise OIDCError(f"{what}_invalid", f"IdP {what} is not JSON") from None

    async def metadata(self) -> ProviderMetadata:
        if self._metadata is not None:
            return self._metadata
        async with self._meta_lock:
            if self._metadata is None:
                data = await self._get_json(self._discovery_url, "metadata")
                meta = ProviderMetadata.parse(data, self._issuer)
                problems = self._check(meta) if self._check else []
                if problems:  # not kept: every use fails with the reasons, readiness too
                    raise OIDCError("profile_unmet", "; ".join(problems))
                self._metadata = meta
                log.info("loaded IdP metadata", extra={"issuer": self._issuer})
        return self._metadata

    async def load_with_retry(self, max_delay: float = 30.0) -> None:
        """Start-up: retry discovery and the JWKS with backoff until both succeed."""
        delay = 0.5
        while True:
            try:
                await self.metadata()
                await self.keys()
                return
            except Exception as exc:  # anything the IdP serves must not end the retries
                log.warning(
                    "IdP metadata not loaded yet; retrying", extra={"error": str(exc), "retry_in": delay}
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)

    async def _fetch_keys(self) -> KeySet:
        meta = await self.metadata()
        data = await self._get_json(meta.jwks_uri, "jwks")
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise OIDCError("jwks_invalid", "IdP JWKS has no keys list")
        usable = [
            k
            for k in data["keys"]
            if isinstance(k, dict) and k.get("use", "sig") == "sig" and k.get("kty") in ("RSA", "EC", "OKP")
        ]
        try:
            keys = KeySet.import_key_set({"keys": usable})
        except Exception as exc:  # joserfc raises several types for malformed keys
            raise OIDCError("jwks_invalid", f"IdP JWKS could not be read: {exc}") from None
        self._keys = keys
        self._keys_fetched_at = self._clock()
        return keys

    async def keys(self) -> KeySet:
        if self._keys is not None and self._clock() - self._keys_fetched_at < self._jwks_max_age:
            return self._keys
        async with self._keys_lock:
            if self._keys is not None and self._clock() - self._keys_fetched_at < self._jwks_max_age:
                return self._keys
            try:
                return await self._fetch_keys()
            except (IdPUnavailable, OIDCError) as exc:
                if self._keys is not None:  # keep validating with the keys we have
                    log.warning("IdP JWKS refetch failed; keeping the cached keys", extra={"error": str(exc)})
                    return self._keys
                raise

    def cached_keys(self) -> KeySet | None:
        return self._keys

    async def refetch_keys(self) -> KeySet | None:
        """Refetch for an unknown kid; None when rate-limited (the caller fails cleanly)."""
        async with self._keys_lock:
            now = self._clock()
            if now - self._last_refetch < self._refetch_interval:
                return None
            self._last_refetch = now
            try:
                return await self._fetch_keys()
            except (IdPUnavailable, OIDCError):
                return None
