"""Validation of ``returnTo``: only a path on this origin, never somewhere else."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

_MAX_LENGTH = 2048


def _looks_local(path: str) -> bool:
    if not path.startswith("/") or path.startswith(("//", "/\\")):
        return False
    if any(ord(c) < 0x21 or c in "\\\x7f" for c in path):
        return False  # whitespace, controls or backslashes: browsers "fix" these in surprising ways
    parts = urlsplit(path)
    return not parts.scheme and not parts.netloc


def safe_return_to(value: str | None, default: str = "/") -> str:
    """``value`` when it is a local absolute path (with query/fragment), else ``default``.

    Encoded variants are decoded repeatedly and every layer must still look local, so
    ``/%2F%2Fevil.com`` or ``%2F%5Cevil.com`` cannot become an off-site redirect later.
    """
    if not value or len(value) > _MAX_LENGTH:
        return default
    layer = value
    for _ in range(4):
        if not _looks_local(layer):
            return default
        decoded = unquote(layer)
        if decoded == layer:
            return value
        layer = decoded
    return default  # more than four layers of encoding is not a real path
