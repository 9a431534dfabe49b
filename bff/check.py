"""``bff check-config``: the settings are valid; now reach Redis and the IdP and check that
what is configured fits what the IdP offers. Prints a short report; exit code 0 or 1.
"""

from __future__ import annotations

import httpx

from .errors import BFFError
from .oidc.errors import OIDCError
from .oidc.provider import Provider
from .profiles import metadata_problems
from .session.redis_store import connect
from .settings import Settings


class Report:
    def __init__(self) -> None:
        self.failed = False

    def ok(self, text: str) -> None:
        print(f"  ok    {text}")

    def warn(self, text: str) -> None:
        print(f"  warn  {text}")

    def fail(self, text: str) -> None:
        self.failed = True
        print(f"  FAIL  {text}")


async def profile_problems(settings: Settings) -> list[str] | None:
    """The profile's unmet metadata rules; None when the metadata cannot be loaded."""
    async with httpx.AsyncClient(timeout=10.0) as http:
        try:
            meta = await Provider(http, settings.discovery_url, settings.issuer).metadata()
        except (BFFError, OIDCError):
            return None
    return metadata_problems(settings, meta)


async def check_config(settings: Settings) -> int:
    report = Report()
    print("bff check-config")
    report.ok(f"settings valid (public URL {settings.public_url}, redirect URI {settings.redirect_uri})")
    if settings.session_store == "memory":
        report.warn("BFF_SESSION_STORE=memory: sessions live in one process and vanish on restart")
    else:
        client = connect(settings.redis_url)
        try:
            await client.ping()
            report.ok("Redis answers")
        except Exception as exc:  # any failure is reported, not raised
            report.fail(f"Redis at BFF_REDIS_URL does not answer: {type(exc).__name__}: {exc}")
        finally:
            await client.aclose()

    async with httpx.AsyncClient(timeout=10.0) as http:
        provider = Provider(http, settings.discovery_url, settings.issuer)
        try:
            meta = await provider.metadata()
            report.ok(f"IdP metadata loaded from {settings.discovery_url}; issuer matches")
            keys = await provider.keys()
            report.ok(f"IdP JWKS loaded ({len(keys.keys)} signing key(s))")
        except (BFFError, OIDCError) as exc:
            report.fail(f"IdP metadata or keys: {exc}")
            return 1
    algs = [a for a in settings.id_token_algs if a in meta.id_token_signing_alg_values_supported]
    if algs:
        report.ok(f"ID token algorithms usable: {', '.join(algs)}")
    else:
        report.fail("the IdP signs ID tokens with no algorithm BFF_ID_TOKEN_ALGS allows")
    methods = meta.token_endpoint_auth_methods_supported
    if settings.client_auth_method != "auto" and settings.client_auth_method not in methods:
        report.fail(
            f"BFF_CLIENT_AUTH_METHOD={settings.client_auth_method} is not offered by the IdP"
            f" ({', '.join(methods)})"
        )
    else:
        report.ok(f"client authentication offered by the IdP: {', '.join(methods)}")
    supported_scopes = meta.raw.get("scopes_supported")
    if isinstance(supported_scopes, list):
        missing = [s for s in settings.scopes if s not in supported_scopes]
        if missing:
            report.warn(f"scopes not advertised by the IdP: {', '.join(missing)}")
        else:
            report.ok(f"scopes advertised: {' '.join(settings.scopes)}")
    if "offline_access" not in settings.scopes and "offline_access" in (supported_scopes or []):
        report.ok(
            "offline_access not requested: refresh tokens come with the login where the IdP"
            " issues them so (Keycloak does); see BFF_SCOPES"
        )
    problems = metadata_problems(settings, meta)  # the profile's rules, PAR among them
    for problem in problems:
        report.fail(problem)
    if settings.profile == "fapi2" and not problems:
        report.ok("the IdP meets the FAPI 2.0 profile's rules for this client")
    if (
        settings.profile != "fapi2"
        and settings.use_par
        and meta.pushed_authorization_request_endpoint is None
    ):
        report.fail("BFF_USE_PAR=true but the IdP has no pushed_authorization_request_endpoint")
    if meta.end_session_endpoint is None:
        report.warn("the IdP has no end_session_endpoint: logout ends only the BFF session")
    if meta.revocation_endpoint is None:
        report.warn("the IdP has no revocation_endpoint: refresh tokens are not revoked at logout")
    if meta.raw.get("backchannel_logout_supported") is not True:
        report.warn("the IdP does not advertise back-channel logout")
    if settings.public_url.startswith("http://"):
        report.warn("BFF_PUBLIC_URL is http://: cookies are not Secure (fine for local development only)")
    print("result: " + ("FAILED" if report.failed else "ok"))
    return 1 if report.failed else 0
