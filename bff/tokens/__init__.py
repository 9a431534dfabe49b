"""Tokens for upstream calls: the session's own access token (user.py: refresh, single
flight), and tokens of a route's own (route.py: token exchange, client credentials), both
obtained once at a time per key across processes (flight.py and a store lock, re-checked)."""

from .route import Credential, RouteTokens
from .user import TokenManager, revoke_token

__all__ = ["Credential", "RouteTokens", "TokenManager", "revoke_token"]
