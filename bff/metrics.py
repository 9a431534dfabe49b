"""Prometheus metrics, in a registry owned by the app (several apps can live in one test
process). With BFF_WORKERS > 1 the prometheus_client multiprocess mode aggregates the
workers' figures (PROMETHEUS_MULTIPROC_DIR is set by ``python -m bff``).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prom_multiprocess

_LATENCY = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._sessions(self.registry)
        self._tokens(self.registry)
        self._traffic(self.registry)
        self._realtime_and_binding(self.registry)

    def _sessions(self, r: CollectorRegistry) -> None:
        """Logins, logouts, back-channel logouts, the store."""
        self.logins_started = Counter("bff_logins_started", "Logins started (/bff/login).", registry=r)
        self.logins_completed = Counter(
            "bff_logins_completed", "Logins completed with a new session.", registry=r
        )
        self.logins_failed = Counter(
            "bff_logins_failed", "Callbacks refused, by reason.", ["reason"], registry=r
        )
        self.logouts = Counter("bff_logouts", "Sessions ended, by how.", ["how"], registry=r)
        self.backchannel = Counter(
            "bff_backchannel_logouts", "Back-channel logout tokens, by outcome.", ["outcome"], registry=r
        )
        self.store_errors = Counter("bff_session_store_errors", "Session store (Redis) failures.", registry=r)
        self.sessions = Gauge(
            "bff_sessions_estimate",
            "Live sessions (estimated from the store).",
            registry=r,
            multiprocess_mode="max",
        )

    def _tokens(self, r: CollectorRegistry) -> None:
        """User-token refreshes and routes' own tokens."""
        self.refreshes = Counter(
            "bff_token_refreshes", "Access-token refreshes, by outcome.", ["outcome"], registry=r
        )
        self.route_tokens = Counter(
            "bff_route_token_requests",
            "Token requests for routes' own tokens, by kind (exchange, client_credentials) and outcome.",
            ["kind", "outcome"],
            registry=r,
        )
        self.route_token_cache = Counter(
            "bff_route_token_cache",
            "Routes' own tokens served from the cache (hit), obtained (miss), or obtained by"
            " another caller while this one waited (shared), by kind.",
            ["kind", "result"],
            registry=r,
        )

    def _traffic(self, r: CollectorRegistry) -> None:
        """Proxied calls and IdP calls."""
        self.proxied = Counter(
            "bff_proxy_requests",
            "Proxied API requests, by route and status.",
            ["route", "status"],
            registry=r,
        )
        self.proxy_latency = Histogram(
            "bff_proxy_request_duration_seconds",
            "Time to the upstream's response headers.",
            ["route"],
            buckets=_LATENCY,
            registry=r,
        )
        self.idp_latency = Histogram(
            "bff_idp_request_duration_seconds",
            "Calls to the IdP.",
            ["endpoint"],
            buckets=_LATENCY,
            registry=r,
        )

    def _realtime_and_binding(self, r: CollectorRegistry) -> None:
        """WebSockets and device-bound sessions."""
        self.websockets_open = Gauge(
            "bff_websockets_open", "WebSockets open through the BFF.", registry=r, multiprocess_mode="livesum"
        )
        self.websocket_messages = Counter(
            "bff_websocket_messages", "WebSocket messages relayed, by direction.", ["direction"], registry=r
        )
        self.websocket_closes = Counter(
            "bff_websocket_closes",
            "WebSockets closed (by whom or why) or refused (refused_<status>).",
            ["reason"],
            registry=r,
        )
        self.dbsc = Counter(
            "bff_dbsc_events",
            "Device-bound sessions: registered, refreshed, refused, skipped_<reason>, theft_suspected ...",
            ["event"],
            registry=r,
        )

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            prom_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
