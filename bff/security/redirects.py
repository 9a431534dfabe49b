"""Validation of ``returnTo``: only a path on this origin, never somewhere else."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

_MAX_LENGTH = 2048


def _looks_local(path: str, raw: bool) -> bool:
    if not path.startswith("/") or path.startswith(("//", "/\\")):
        return False
    if any(ord(c) < (0x21 if raw else 0x20) or (raw and ord(c) > 0x7E) or c in "\\\x7f" for c in path):
        return False  # whitespace, controls, non-ASCII, backslashes: browsers "fix" these in odd ways
    parts = urlsplit(path)
    if parts.scheme or parts.netloc:
        return False
    # Dot segments and empty segments could normalise into "//host" in a browser or router.
    segments = parts.path.split("/")[1:]
    return "//" not in parts.path and not any(seg in (".", "..") for seg in segments)


def safe_return_to(value: str | None, default: str = "/") -> str:
    """``value`` when it is a local absolute path (with query/fragment), else ``default``.

    Encoded variants are decoded repeatedly and every layer must still look local, so
    ``/%2F%2Fevil.com`` or ``%2F%5Cevil.com`` cannot become an off-site redirect later.
    """
    if not value or len(value) > _MAX_LENGTH:
        return default
    layer = value
    for depth in range(4):
        if not _looks_local(layer, raw=depth == 0):
            return default
        decoded = unquote(layer)
        if decoded == layer:
            return value
        layer = decoded
    return default  # more than four layers of encoding is not a real path
