"""One token request at a time per key: in this process a shared task (single flight), and
across processes a store lock renewed while the IdP is slow. Whoever holds the lock re-reads
what the others may have stored meanwhile before asking the IdP (the lock and re-check
pattern of oauth2-proxy's refresh)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from ..session.store import StoreLock

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

LOCK_TIMEOUT = 10.0  # seconds a lock lives without renewal
LOCK_WAIT = 30.0  # how long a request waits for another process's token request


class SingleFlight(Generic[K, V]):
    """Concurrent callers with the same key share one task. The task is its own, so a caller
    that goes away (a closed browser tab) does not cancel it for the others."""

    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[V]] = {}

    async def run(self, key: K, make: Callable[[], Awaitable[V]]) -> V:
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(make())
            self._tasks[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        return await asyncio.shield(task)

    def _done(self, key: K, task: asyncio.Task[V]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have gone away


@contextlib.asynccontextmanager
async def renewing(lock: StoreLock) -> AsyncIterator[None]:
    """Keep a held lock alive while the block runs (an IdP may take longer than its timeout)."""

    async def renew() -> None:
        while True:
            await asyncio.sleep(LOCK_TIMEOUT / 3)
            await lock.extend()

    task = asyncio.create_task(renew())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
