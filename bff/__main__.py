"""``python -m bff`` / ``bff``: serve; ``bff check-config``: validate and probe; ``bff keygen``."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

from .errors import ConfigError
from .settings import Settings, load_settings


def _load() -> Settings:
    try:
        from dotenv import load_dotenv

        load_dotenv(os.environ.get("BFF_ENV_FILE", ".env"), override=False)
        return load_settings()
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"bff: configuration error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def _preflight(settings: Settings) -> None:
    """With BFF_PROFILE=fapi2, the IdP's metadata must meet the profile before the BFF serves:
    every unmet rule is printed and the start refused. An IdP that cannot be reached yet is
    checked again when the metadata loads (the BFF stays not ready if it then fails)."""
    if settings.profile != "fapi2":
        return
    import asyncio

    from .check import profile_problems

    problems = asyncio.run(profile_problems(settings))
    if problems is None:
        print(
            "bff: the IdP's metadata could not be loaded yet; the FAPI 2.0 rules are checked when it is",
            file=sys.stderr,
        )
        return
    for problem in problems:
        print(f"bff: configuration error: {problem}", file=sys.stderr)
    if problems:
        raise SystemExit(2)


def _server_class() -> type:
    import uvicorn

    class BFFServer(uvicorn.Server):
        """uvicorn's server, but a graceful shutdown first closes the proxied WebSockets with
        1001 (going away) and waits for their close handshakes; uvicorn alone sends 1012."""

        async def shutdown(self, sockets: list[Any] | None = None) -> None:
            from .websocket import close_everywhere

            await close_everywhere()
            await super().shutdown(sockets)

    return BFFServer


def _Server(config: Any) -> Any:
    return _server_class()(config)


def serve(settings: Settings) -> None:
    import uvicorn

    from .log import setup_logging

    _preflight(settings)
    setup_logging(settings.log_format, settings.log_level)
    options: dict[str, object] = {
        "host": settings.host,
        "port": settings.port,
        "proxy_headers": False,  # X-Forwarded-* is handled by the app, from BFF_TRUSTED_PROXIES only
        "server_header": False,
        "access_log": False,  # the app writes one line per request itself
        "log_config": None,
        "h11_max_incomplete_event_size": settings.max_header_size,
        "timeout_graceful_shutdown": 30,
        "timeout_keep_alive": 30,
        "ws": "websockets-sansio",
        "ws_max_size": settings.ws_max_message_size,
    }
    try:
        import uvloop  # noqa: F401

        options["loop"] = "uvloop"
    except ImportError:
        options["loop"] = "asyncio"
    try:
        import httptools  # noqa: F401

        options["http"] = "httptools"
    except ImportError:
        options["http"] = "h11"
    if settings.workers > 1:
        # Each worker's app closes its WebSockets with 1001 itself (app_from_env).
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bff-metrics-")
        uvicorn.run("bff.app:app_from_env", factory=True, workers=settings.workers, **options)  # type: ignore[arg-type]
        return
    from .app import create_app

    _Server(uvicorn.Config(create_app(settings), **options)).run()  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bff", description="OAuth 2.0 / OIDC backend-for-frontend")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve the BFF (the default)")
    sub.add_parser("check-config", help="validate the settings and reach Redis and the IdP")
    sub.add_parser("keygen", help="print a new key for BFF_SECRET_KEY or BFF_ENCRYPTION_KEYS")
    args = parser.parse_args(argv)
    if args.command == "keygen":
        from .session.crypto import new_key

        print(new_key())
        return
    settings = _load()
    if args.command == "check-config":
        import asyncio

        from .check import check_config

        raise SystemExit(asyncio.run(check_config(settings)))
    serve(settings)


if __name__ == "__main__":
    main()
