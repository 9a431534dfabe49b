"""The BFF's exceptions. Each knows its HTTP status and a stable machine-readable code;
error_handlers.py is the one place they become responses.

    BFFError (500 internal_error)
    ├── ConfigError                 start-up only: every configuration problem, one line each
    ├── BadRequest (400 bad_request)
    │   ├── LoginFailed (400)       callback refused: state, iss, code exchange, ID token, IdP error=
    │   └── LogoutTokenInvalid (400 invalid_logout_token)
    ├── NotAuthenticated (401 not_authenticated)
    │   └── SessionEnded (401 session_ended)   the BFF ended the session (refresh refused)
    ├── Forbidden (403 forbidden)
    │   ├── CsrfRejected (403 csrf_rejected)
    │   └── RouteTokenRefused (403 route_token_refused)   the IdP refused a route's own token
    ├── NotFound (404 not_found)
    ├── PayloadTooLarge (413 payload_too_large)
    ├── TooManyRequests (429 too_many_requests)
    ├── HeadersTooLarge (431 headers_too_large)
    ├── UpstreamUnavailable (502 upstream_unavailable)
    ├── IdPError (502 idp_error)    an IdP answer that breaks the protocol
    ├── ServiceUnavailable (503)
    │   ├── IdPUnavailable (503 idp_unavailable)
    │   └── StoreUnavailable (503 session_store_unavailable)
    └── UpstreamTimeout (504 upstream_timeout)

OIDC-level failures that are not yet tied to a request (bad ID token, IdP answered
with an OAuth error) are raised as ``OIDCError`` / ``TokenError`` from bff.oidc and
translated by the caller, which knows whether it is a login, a refresh or a logout; one
that no caller translated becomes IdPError (error_handlers.from_protocol_error).
"""

from __future__ import annotations


class BFFError(Exception):
    status = 500
    code = "internal_error"
    message = "The BFF failed to handle the request."

    def __init__(self, message: str | None = None, *, code: str | None = None) -> None:
        self.message = message or type(self).message
        if code is not None:
            self.code = code
        super().__init__(self.message)


class ConfigError(BFFError):
    """Invalid configuration; carries every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems), code="config_error")


class BadRequest(BFFError):
    status = 400
    code = "bad_request"
    message = "The request is not valid."


class LoginFailed(BadRequest):
    code = "login_failed"
    message = "The login could not be completed."


class LogoutTokenInvalid(BadRequest):
    code = "invalid_logout_token"
    message = "The logout token is not valid."


class NotAuthenticated(BFFError):
    status = 401
    code = "not_authenticated"
    message = "No valid session: log in first."


class SessionEnded(NotAuthenticated):
    code = "session_ended"
    message = "The session has ended: log in again."


class Forbidden(BFFError):
    status = 403
    code = "forbidden"
    message = "This request is not allowed."


class CsrfRejected(Forbidden):
    code = "csrf_rejected"
    message = "Missing or wrong anti-forgery header (send X-CSRF: 1) or a cross-site request."


class RouteTokenRefused(Forbidden):
    code = "route_token_refused"
    message = "The identity provider refused a token for this API."


class NotFound(BFFError):
    status = 404
    code = "not_found"
    message = "Not found."


class PayloadTooLarge(BFFError):
    status = 413
    code = "payload_too_large"
    message = "The request body is too large."


class TooManyRequests(BFFError):
    status = 429
    code = "too_many_requests"
    message = "Too many requests."


class HeadersTooLarge(BFFError):
    status = 431
    code = "headers_too_large"
    message = "The request headers are too large."


class UpstreamUnavailable(BFFError):
    status = 502
    code = "upstream_unavailable"
    message = "The upstream API could not be reached."


class IdPError(BFFError):
    status = 502
    code = "idp_error"
    message = "The identity provider's answer could not be used."


class ServiceUnavailable(BFFError):
    status = 503
    code = "service_unavailable"
    message = "A service the BFF depends on is unavailable; try again shortly."


class IdPUnavailable(ServiceUnavailable):
    code = "idp_unavailable"
    message = "The identity provider could not be reached; try again shortly."


class StoreUnavailable(ServiceUnavailable):
    code = "session_store_unavailable"
    message = "The session store is unavailable; try again shortly."


class UpstreamTimeout(BFFError):
    status = 504
    code = "upstream_timeout"
    message = "The upstream API did not answer in time."
