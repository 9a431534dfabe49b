"""Anti-forgery checks for calls made by the SPA's JavaScript.

Layered, each enough on its own for the browsers that support it:
1. ``X-CSRF: 1`` must be present. A cross-site form, link or image cannot set a custom
   header, and a cross-site fetch that sets one needs a CORS preflight the BFF never
   grants.
2. ``Sec-Fetch-Site: cross-site`` (Fetch Metadata) is refused.
3. An ``Origin`` header that is present and not the BFF's own origin is refused.

Navigations that must work cross-site (the IdP redirecting to /bff/callback, the IdP
posting to /bff/backchannel-logout) are not checked here.
"""

from __future__ import annotations

from starlette.datastructures import Headers

from ..errors import CsrfRejected


def refuse_cross_site(sec_fetch_site: str | None, origin: str | None, own_origin: str) -> None:
    """Layers 2 and 3 (for every /bff endpoint a browser may reach, and the API routes)."""
    if sec_fetch_site is not None and sec_fetch_site.lower() == "cross-site":
        raise CsrfRejected("Cross-site requests are refused (Sec-Fetch-Site: cross-site).")
    if origin is not None and origin != own_origin:
        raise CsrfRejected("Requests from another origin are refused.")


def check_csrf(headers: Headers, own_origin: str) -> None:
    """All three layers: for every call made by the SPA's JavaScript."""
    if headers.get("x-csrf") != "1":
        raise CsrfRejected()
    refuse_cross_site(headers.get("sec-fetch-site"), headers.get("origin"), own_origin)
