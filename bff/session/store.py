"""The session store contract, and the in-memory store for one development process.

Every store keeps: sessions (idle timeout that slides on use, absolute timeout that
never moves, expiring by themselves), a per-user index and an IdP-``sid`` index that
never hand back a dead session, single-use login transactions, seen logout-token
``jti`` values, and named locks for single-flight refresh. tests/contract runs one
suite against every implementation.
"""

from __future__ import annotations

import asyncio
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from .models import LoginTransaction, Session, public_handle
from .notices import CHANGED, ENDED, Notices

Clock = Callable[[], float]


class StoreLock(ABC):
    """A lock shared by every process using the store; renewable while held."""

    @abstractmethod
    async def acquire(self, wait: float) -> bool: ...

    @abstractmethod
    async def extend(self) -> None: ...

    @abstractmethod
    async def release(self) -> None: ...


class SessionStore(ABC):
    def __init__(self, idle_timeout: int, clock: Clock = time.time) -> None:
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.on_error: Callable[[], None] = lambda: None  # told of every store failure (metrics)
        self.notices = Notices()  # sessions ended or changed, in any process (notices.py)

    async def run_notices(self) -> None:
        """Deliver notices from other processes for as long as the task runs (Redis: its
        pub/sub subscription; a store of one process has nothing to listen to)."""
        self.notices.link(True)
        await asyncio.Event().wait()

    def now(self) -> int:
        return int(self.clock())

    def seen(self) -> int:
        """The time a use of a session is recorded as. Whole seconds are stored, so it is
        rounded up: rounded down, the idle timeout could end a session up to a second before
        a full idle period has passed."""
        return math.ceil(self.clock())

    # --- sessions -------------------------------------------------------------------
    @abstractmethod
    async def create(self, session: Session, max_per_user: int = 0) -> list[Session]:
        """Store a new session and index it; returns the sessions ended to respect the limit."""

    @abstractmethod
    async def load(self, session_id: str, touch: bool = True) -> Session | None:
        """The live session, sliding its idle timeout when ``touch``; None when gone."""

    @abstractmethod
    async def update_tokens(self, session: Session) -> bool:
        """Replace the tokens of a still-live session atomically; False when it has ended."""

    @abstractmethod
    async def delete(self, session_id: str) -> Session | None:
        """End a session and drop it from every index; returns it if it was live."""

    @abstractmethod
    async def sessions_of(self, sub: str) -> list[Session]:
        """Every live session of a user (oldest first); dead index entries are pruned."""

    @abstractmethod
    async def sessions_by_idp_sid(self, idp_sid: str) -> list[Session]:
        """Live sessions created under an IdP session id (for back-channel logout)."""

    # --- login transactions ---------------------------------------------------------
    @abstractmethod
    async def save_transaction(self, tx: LoginTransaction, ttl: int, max_pending: int) -> bool:
        """Store a pending login; False when the browser already has ``max_pending``."""

    @abstractmethod
    async def take_transaction(self, state: str) -> LoginTransaction | None:
        """Fetch and delete in one step: a transaction can be used once."""

    @abstractmethod
    async def pending_logins(self, browser_binding: str) -> int:
        """Unexpired logins a browser has started and not finished."""

    # --- DBSC challenges ---------------------------------------------------------------
    @abstractmethod
    async def issue_challenge(self, owner: str, challenge: str, ttl: int, previous_ttl: int) -> None:
        """Remember ``challenge`` for ``owner`` for ``ttl`` seconds; the owner's previous one
        keeps at most ``previous_ttl`` seconds."""

    @abstractmethod
    async def take_challenge(self, challenge: str) -> str | None:
        """The owner of an unexpired challenge, which is then used up; None otherwise."""

    # --- shared values --------------------------------------------------------------
    @abstractmethod
    async def load_shared(self, name: str) -> bytes | None:
        """A value every process shares (the BFF's client tokens); None when absent or expired."""

    @abstractmethod
    async def save_shared(self, name: str, value: bytes, ttl: int) -> None:
        """Store a shared value for ``ttl`` seconds (encrypted at rest where the store can)."""

    # --- replay, locks, health ------------------------------------------------------
    @abstractmethod
    async def remember_jti(self, jti: str, ttl: int) -> bool:
        """True the first time a ``jti`` is seen within ``ttl`` seconds."""

    @abstractmethod
    def lock(self, name: str, timeout: float) -> StoreLock: ...

    @abstractmethod
    async def count_sessions(self) -> int:
        """Sessions not ended and not past their absolute timeout (idle-expired ones may still count)."""

    @abstractmethod
    async def ping(self) -> None: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class locked(AbstractAsyncContextManager[bool]):
    """``async with locked(store.lock(...), wait) as got:`` - got is False on timeout."""

    def __init__(self, lock: StoreLock, wait: float) -> None:
        self._lock = lock
        self._wait = wait
        self._held = False

    async def __aenter__(self) -> bool:
        self._held = await self._lock.acquire(self._wait)
        return self._held

    async def __aexit__(self, *exc: object) -> None:
        if self._held:
            await self._lock.release()


class _MemoryLock(StoreLock):
    def __init__(self, lock: asyncio.Lock) -> None:
        self._lock = lock

    async def acquire(self, wait: float) -> bool:
        try:
            await asyncio.wait_for(self._lock.acquire(), wait)
        except TimeoutError:
            return False
        return True

    async def extend(self) -> None:
        return None

    async def release(self) -> None:
        if self._lock.locked():
            self._lock.release()


class MemoryStore(SessionStore):
    """Everything in this process's memory: for development and tests with one process."""

    def __init__(self, idle_timeout: int, clock: Clock = time.time) -> None:
        super().__init__(idle_timeout, clock)
        self.notices.live = True  # one process: every notice is delivered at once
        self._sessions: dict[str, Session] = {}
        self._tx: dict[str, tuple[LoginTransaction, int]] = {}
        self._jti: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._shared: dict[str, tuple[bytes, int]] = {}
        self._challenges: dict[str, tuple[str, float]] = {}
        self._current_challenge: dict[str, str] = {}

    def _live(self, session_id: str) -> Session | None:
        s = self._sessions.get(session_id)
        if s is None:
            return None
        if s.idle_expires_at(self.idle_timeout) <= self.now():
            del self._sessions[session_id]
            return None
        return s

    def _purge(self) -> None:
        for sid in list(self._sessions):
            self._live(sid)
        now = self.now()
        self._tx = {k: v for k, v in self._tx.items() if v[1] > now}
        self._jti = {k: v for k, v in self._jti.items() if v > now}

    async def create(self, session: Session, max_per_user: int = 0) -> list[Session]:
        self._purge()
        self._sessions[session.id] = session
        ended: list[Session] = []
        if max_per_user:
            mine = await self.sessions_of(session.sub)
            while len(mine) > max_per_user:
                oldest = mine.pop(0)
                if oldest.id == session.id:  # never evict the session being created
                    continue
                await self.delete(oldest.id)
                ended.append(oldest)
        return ended

    async def load(self, session_id: str, touch: bool = True) -> Session | None:
        s = self._live(session_id)
        if s is not None and touch:
            s.last_seen = self.seen()
        return s

    async def update_tokens(self, session: Session) -> bool:
        current = self._live(session.id)
        if current is None:
            return False
        session.last_seen = max(session.last_seen, current.last_seen)
        self._sessions[session.id] = session
        self.notices.deliver(CHANGED + public_handle(session.id).encode())
        return True

    async def delete(self, session_id: str) -> Session | None:
        s = self._live(session_id)
        if self._sessions.pop(session_id, None) is not None:
            self.notices.deliver(ENDED + public_handle(session_id).encode())
        return s

    async def sessions_of(self, sub: str) -> list[Session]:
        self._purge()
        mine = [s for s in self._sessions.values() if s.sub == sub]
        return sorted(mine, key=lambda s: (s.created_at, s.expires_at))

    async def sessions_by_idp_sid(self, idp_sid: str) -> list[Session]:
        self._purge()
        return [s for s in self._sessions.values() if s.idp_sid == idp_sid]

    async def save_transaction(self, tx: LoginTransaction, ttl: int, max_pending: int) -> bool:
        self._purge()
        pending = sum(1 for t, _ in self._tx.values() if t.browser_binding == tx.browser_binding)
        if pending >= max_pending:
            return False
        self._tx[tx.state] = (tx, self.now() + ttl)
        return True

    async def take_transaction(self, state: str) -> LoginTransaction | None:
        self._purge()
        entry = self._tx.pop(state, None)
        return entry[0] if entry else None

    async def pending_logins(self, browser_binding: str) -> int:
        self._purge()
        return sum(1 for t, _ in self._tx.values() if t.browser_binding == browser_binding)

    async def issue_challenge(self, owner: str, challenge: str, ttl: int, previous_ttl: int) -> None:
        now = self.clock()
        self._challenges = {c: e for c, e in self._challenges.items() if e[1] > now}
        previous = self._current_challenge.get(owner)
        if previous in self._challenges:
            who, expiry = self._challenges[previous]
            self._challenges[previous] = (who, min(expiry, now + previous_ttl))
        self._challenges[challenge] = (owner, now + ttl)
        self._current_challenge[owner] = challenge

    async def take_challenge(self, challenge: str) -> str | None:
        entry = self._challenges.pop(challenge, None)
        return entry[0] if entry and entry[1] > self.clock() else None

    async def load_shared(self, name: str) -> bytes | None:
        entry = self._shared.get(name)
        return entry[0] if entry and entry[1] > self.now() else None

    async def save_shared(self, name: str, value: bytes, ttl: int) -> None:
        self._shared[name] = (value, self.now() + ttl)

    async def remember_jti(self, jti: str, ttl: int) -> bool:
        self._purge()
        if jti in self._jti:
            return False
        self._jti[jti] = self.now() + ttl
        return True

    def lock(self, name: str, timeout: float) -> StoreLock:
        return _MemoryLock(self._locks.setdefault(name, asyncio.Lock()))

    async def count_sessions(self) -> int:
        self._purge()
        return len(self._sessions)

    async def ping(self) -> None:
        return None
