"""Protocol-level failures, independent of any request.

``OIDCError`` says a message from the IdP broke a rule (its ``code`` names the rule,
e.g. ``id_token_nonce``). ``TokenError`` is an OAuth error answer from the token,
PAR or revocation endpoint (``error`` is the OAuth error code). Callers map them to
BFF errors, because only they know whether a login, a refresh or a logout failed.
"""

from __future__ import annotations


class OIDCError(Exception):
    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class TokenError(Exception):
    def __init__(self, error: str, description: str = "", status: int = 400) -> None:
        self.error = error
        self.description = description
        self.status = status
        super().__init__(f"{error}: {description}" if description else error)
