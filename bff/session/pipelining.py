"""Auto-pipelining: the store commands issued in one event-loop turn go to Redis together.

Under load many requests reach their session read in the same turn of the event loop.
Sent one by one, each pays redis-py's per-command cost (a pooled connection taken and
given back, a write, a wake-up for its reply, a read): measured at about 50 µs of CPU per
command, more than a third of a proxied request. Queued and sent as one redis-py pipeline
(one connection, one write, the replies read in one go) they cost a fraction of that
(docs/benchmarks.md). The same idea as ioredis' ``enableAutoPipelining`` and Lettuce's
command batching; the protocol work stays redis-py's.

Only for single-key commands whose effect does not depend on what else is in the batch
(the session read-and-slide script, GET): the pipeline is not a transaction, so each
command is as atomic as it would be alone.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

Guard = Callable[[Awaitable[Any]], Awaitable[Any]]


class AutoPipeline:
    """Queue a command, get its reply: callers see one command, Redis sees a pipeline.

    ``guard`` runs each pipeline (the store's connection slot, time limit and mapping of
    failures to ``StoreUnavailable``); whatever it raises is raised to every caller in
    that batch. A caller that goes away (cancelled) simply no longer gets its reply.
    """

    def __init__(self, client: aioredis.Redis, guard: Guard) -> None:
        self._client = client
        self._guard = guard
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()  # strong references while in flight

    async def call(self, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            # A task's first step runs after the callbacks already due in this turn: every
            # request parsed in this turn is queued by then.
            task = loop.create_task(self._send())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._pending.append((args, future))
        return await future

    async def _send(self) -> None:
        batch, self._pending = self._pending, []
        batch = [(args, future) for args, future in batch if not future.done()]
        if not batch:
            return
        pipe = self._client.pipeline(transaction=False)
        for args, _ in batch:
            pipe.execute_command(*args)
        try:
            replies = await self._guard(pipe.execute(raise_on_error=False))
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(_copy(exc))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def close(self) -> None:
        """Wait for the pipelines in flight (their callers are waiting for them)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _copy(exc: BaseException) -> BaseException:
    """One exception object per caller: raising the same object in several tasks would mix
    their tracebacks."""
    try:
        fresh = copy.copy(exc)  # same type, args and attributes; no traceback
    except Exception:  # an exception type that cannot be rebuilt: share it
        return exc
    fresh.__cause__ = exc.__cause__ or exc
    return fresh
