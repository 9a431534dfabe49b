"""The objects a running BFF is made of, built once by app.create_app."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from .dbsc.binding import DeviceBinding
from .gate import SessionGate
from .metrics import Metrics
from .oidc.client import OIDCClient
from .oidc.provider import Provider
from .oidc.validation import Expectations
from .security.cookies import Cookies
from .session.store import SessionStore
from .settings import Settings
from .tokens import RouteTokens, TokenManager


@dataclass
class Services:
    settings: Settings
    store: SessionStore
    http: httpx.AsyncClient
    provider: Provider
    client: OIDCClient
    tokens: TokenManager
    route_tokens: RouteTokens
    cookies: Cookies
    metrics: Metrics
    checks: Expectations
    gate: SessionGate
    binding: DeviceBinding
    clock: Callable[[], float] = field(default=time.time)
