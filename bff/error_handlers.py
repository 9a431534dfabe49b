"""The one place errors become responses: JSON for API calls, a small page for navigations.

A browser that navigates (login, callback, logout links) gets a readable page with a
way back; JavaScript callers (which send X-CSRF or accept JSON) get
``{"error": code, "message": text}``. Unexpected exceptions become a 500 without
their details (those go to the log, redacted).
"""

from __future__ import annotations

import html
import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from .errors import BFFError, IdPError, NotAuthenticated
from .oidc.errors import OIDCError, TokenError

log = logging.getLogger("bff.errors")

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 4rem auto; padding: 0 1rem">
<h1>{title}</h1><p>{message}</p><p><small>Error code: <code>{code}</code></small></p>
<p><a href="/">Back to the application</a> &middot; <a href="/bff/login">Sign in again</a></p>
</body></html>"""


def json_error(exc: BFFError) -> Response:
    headers = {"Cache-Control": "no-store"}
    if isinstance(exc, NotAuthenticated):
        headers["WWW-Authenticate"] = 'Cookie realm="bff"'
    return JSONResponse({"error": exc.code, "message": exc.message}, status_code=exc.status, headers=headers)


def wants_html(request: Request) -> bool:
    if request.headers.get("x-csrf") is not None:
        return False
    accept = request.headers.get("accept", "")
    return request.method == "GET" and "text/html" in accept


def page_error(exc: BFFError, title: str | None = None) -> Response:
    title = title or ("Sign-in failed" if exc.status < 500 else "Service unavailable")
    body = _PAGE.format(title=title, message=html.escape(exc.message), code=html.escape(exc.code))
    return HTMLResponse(body, status_code=exc.status, headers={"Cache-Control": "no-store"})


async def handle_bff_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BFFError)
    if exc.status >= 500:
        log.warning("request failed", extra={"code": exc.code, "error": exc.message})
    return page_error(exc) if wants_html(request) else json_error(exc)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def _http_message(request: Request, exc: HTTPException) -> str:
    if exc.status_code == 404:
        return f"No endpoint at {request.url.path}."
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return f"{request.method} is not allowed on {request.url.path} (allowed: {allowed})."
    return str(exc.detail)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (unknown path, wrong method) in the same JSON shape; a 405
    keeps its Allow header."""
    assert isinstance(exc, HTTPException)
    error = BFFError(_http_message(request, exc), code=_HTTP_CODES.get(exc.status_code, "http_error"))
    error.status = exc.status_code
    response = json_error(error)
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


def from_protocol_error(exc: OIDCError | TokenError) -> BFFError:
    """An IdP answer that broke the protocol where no caller translated it: 502, named."""
    code = exc.code if isinstance(exc, OIDCError) else exc.error
    return IdPError(f"The identity provider's answer could not be used ({code}).")


async def handle_protocol_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OIDCError | TokenError)
    log.warning("identity provider answer refused", extra={"error": str(exc)})
    return await handle_bff_error(request, from_protocol_error(exc))


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", exc_info=exc)
    return json_error(BFFError())
