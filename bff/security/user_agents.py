"""What the BFF keeps of a User-Agent: its browser family and system, no fingerprint detail
(shown in the session list; compared by the optional browser-change policy)."""

from __future__ import annotations

import functools
import re

_BROWSERS = [
    ("Edg/", "Edge"),
    ("OPR/", "Opera"),
    ("Firefox/", "Firefox"),
    ("Chrome/", "Chrome"),
    ("Chromium/", "Chromium"),
    ("Safari/", "Safari"),
    ("curl/", "curl"),
    ("python-httpx", "httpx"),
]
_SYSTEMS = [
    ("Android", "Android"),
    ("iPhone", "iOS"),
    ("iPad", "iPadOS"),
    ("Windows", "Windows"),
    ("Mac OS X", "macOS"),
    ("CrOS", "ChromeOS"),
    ("Linux", "Linux"),
]


@functools.lru_cache(maxsize=1024)
def user_agent_summary(ua: str) -> str:
    """'Chrome on Linux' - enough to recognise a device, without fingerprint detail. Memoised:
    with the browser-change policy on it runs on every use of a session, and browsers repeat."""
    if not ua:
        return "unknown"
    browser = next((name for marker, name in _BROWSERS if marker in ua), None)
    system = next((name for marker, name in _SYSTEMS if marker in ua), None)
    if "HeadlessChrome" in ua:
        browser = "Headless Chrome"
    if browser and system:
        return f"{browser} on {system}"
    if browser or system:
        return str(browser or system)
    return re.sub(r"[^\w ./-]", "", ua.split(" ")[0])[:40] or "unknown"
