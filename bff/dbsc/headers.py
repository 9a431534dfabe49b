"""The DBSC header fields, as structured fields (RFC 9651) through http-sf.

Chrome sends ``Secure-Session-Response`` and ``Sec-Secure-Session-Id`` unquoted (the draft
says sf-string); both parse here, as a String or as a Token (a JWT and the identifiers the
BFF hands out are valid tokens).
"""

from __future__ import annotations

from typing import Any

import http_sf
from http_sf import Token

ALGORITHMS = ("ES256", "RS256")


def registration(path: str, challenge: str) -> str:
    """``Secure-Session-Registration: (ES256 RS256);path="...";challenge="..."``"""
    inner: Any = ([Token(a) for a in ALGORITHMS], {"path": path, "challenge": challenge})
    return str(http_sf.ser([inner]))


def challenge(value: str, session_identifier: str) -> str:
    """``Secure-Session-Challenge: "<challenge>";id="<session identifier>"``"""
    member: Any = (value, {"id": session_identifier})
    return str(http_sf.ser([member]))


def item_value(header: str | None) -> str | None:
    """The value of a header holding one String (or, as Chrome sends it, one Token)."""
    if not header:
        return None
    try:
        parsed: Any = http_sf.parse(header.encode("latin-1"), tltype="item")
    except (http_sf.StructuredFieldError, ValueError, UnicodeError):
        return None
    value = parsed[0]
    return str(value) if isinstance(value, str | Token) else None


def skipped(header: str | None) -> list[tuple[str, str | None]]:
    """``Secure-Session-Skipped``: [(reason, session_identifier)] (empty when absent or bad)."""
    if not header:
        return []
    try:
        members: Any = http_sf.parse(header.encode("latin-1"), tltype="list")
    except (http_sf.StructuredFieldError, ValueError, UnicodeError):
        return []
    out: list[tuple[str, str | None]] = []
    for value, params in members:
        if isinstance(value, str | Token):
            identifier = params.get("session_identifier")
            out.append((str(value), identifier if isinstance(identifier, str) else None))
    return out
