"""Session notices: when a session ends or its record changes, every BFF process hears of it
within milliseconds, so it can close the session's WebSockets and drop what it cached.

Across processes the notices travel over Redis pub/sub (channel ``bff:notices``; a message is
``e:<handle>`` for an ended session, ``u:<handle>`` for a changed one, the handle being the
one-way ``public_handle`` of the session id, so no usable id is broadcast). Pub/sub rather than
keyspace notifications because the BFF publishes exactly the events it means (a logout, a
back-channel logout, a refresh), it needs no server configuration (``notify-keyspace-events``
is off by default and often locked down on managed Redis), and it works the same on a single
server, Sentinel and Cluster (whose classic pub/sub reaches every node). What pub/sub cannot
promise, delivery to a subscriber whose connection was down, is covered by ``lost``: a
listener must then stop trusting what it cached (and sockets are re-checked on a timer).

Within the process ``Notices`` fans a notice out to its listeners; the memory store calls it
directly, the Redis store from its subscriber task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("bff.session")

CHANNEL = "bff:notices"
ENDED = b"e:"
CHANGED = b"u:"

Listener = Callable[[str], None]


class Notices:
    """This process's listeners for ended and changed sessions, and for a lost link."""

    def __init__(self) -> None:
        self.live = False  # True while notices are sure to arrive (subscribed)
        self._ended: list[Listener] = []
        self._changed: list[Listener] = []
        self._link: list[Callable[[bool], None]] = []

    def on_ended(self, listener: Listener) -> None:
        self._ended.append(listener)

    def on_changed(self, listener: Listener) -> None:
        self._changed.append(listener)

    def on_link(self, listener: Callable[[bool], None]) -> None:
        """Told True when notices (again) arrive for sure, False when they may be missed."""
        self._link.append(listener)

    def deliver(self, message: bytes) -> None:
        kind, handle = message[:2], message[2:].decode("ascii", "replace")
        for listener in self._ended if kind == ENDED else self._changed if kind == CHANGED else []:
            try:
                listener(handle)
            except Exception:  # one listener's bug must not cost the others their notice
                log.exception("session notice listener failed")

    def link(self, live: bool) -> None:
        if live == self.live:
            return
        self.live = live
        for listener in self._link:
            listener(live)


async def subscribe(client: Any, notices: Notices, retry_cap: float = 5.0) -> None:
    """Deliver the channel's messages to ``notices`` for as long as the task runs; on a broken
    link tell the listeners (``link(False)``), then resubscribe with backoff."""
    delay = 0.1
    while True:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(CHANNEL)
            notices.link(True)
            delay = 0.1
            while True:
                message = await pubsub.get_message(timeout=5.0)
                if message is not None and isinstance(message.get("data"), bytes):
                    notices.deliver(message["data"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure of the link: the next notices may be missed
            if notices.live:
                log.warning("session notices link lost; reconnecting", extra={"error": type(exc).__name__})
            notices.link(False)
        finally:
            # Bounded: a subscription cancelled mid-read must not hang the shutdown.
            with contextlib.suppress(Exception, TimeoutError):
                async with asyncio.timeout(1.0):
                    await pubsub.aclose()
        await asyncio.sleep(delay)
        delay = min(delay * 2, retry_cap)
