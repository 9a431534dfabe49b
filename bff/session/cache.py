"""A short-lived, in-process cache of decoded sessions, for the hot path.

Without it every proxied request costs a Redis round trip, a decryption and a decode, and a
write that slides the idle timeout. With it a process asks Redis about a session at most once
per ``ttl`` seconds (which is also when the idle timeout slides: a session ends between
``idle - ttl`` and ``idle`` seconds after its last request) and otherwise answers from memory.

That is only correct because every change to a session reaches every process at once: the
store publishes a notice (notices.py) on each update and each end, and a notice drops the
entry here within milliseconds. Two races are closed:

* a read from Redis that started before a change and finishes after its notice arrived must
  not put the old record back: ``put`` takes the ``epoch`` its read started in and refuses if
  any notice arrived since;
* notices that may have been missed: while the notices link is down nothing is cached, and
  losing it (or getting it back) flushes everything.

Sessions are shared, not copied: the code treats them as values (``with_tokens`` and friends
return new ones), as the in-memory store already requires.
"""

from __future__ import annotations

from dataclasses import dataclass

from .models import Session, public_handle
from .notices import Notices


@dataclass(slots=True)
class _Entry:
    session: Session
    fresh_until: float  # ask Redis again (and slide the idle timeout) from then on
    handle: str


class SessionCache:
    def __init__(self, notices: Notices, ttl: float, size: int) -> None:
        self.notices = notices
        self.ttl = ttl
        self.size = size
        self.epoch = 0  # counts notices and flushes; see put()
        self._entries: dict[str, _Entry] = {}  # by session id, oldest insertion first
        self._by_handle: dict[str, str] = {}
        notices.on_ended(self.drop_handle)
        notices.on_changed(self.drop_handle)
        notices.on_link(lambda _live: self.flush())

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.size > 0 and self.notices.live

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, session_id: str, now: float) -> Session | None:
        """The cached session while it is fresh and within its absolute expiry, else None."""
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        if now >= entry.fresh_until or now >= entry.session.expires_at:
            self.drop(session_id)
            return None
        return entry.session

    def put(self, session: Session, now: float, epoch: int) -> None:
        """Remember a session read from Redis by a read that began in ``epoch``."""
        if epoch != self.epoch or not self.enabled:
            return  # a notice came in meanwhile: what was read may be older than it
        if session.id not in self._entries and len(self._entries) >= self.size:
            self.drop(next(iter(self._entries)))
        handle = public_handle(session.id)
        self._entries[session.id] = _Entry(session, now + self.ttl, handle)
        self._by_handle[handle] = session.id

    def changed(self, session: Session) -> None:
        """This process wrote a new version: keep it, and refuse reads begun before."""
        self.epoch += 1
        entry = self._entries.get(session.id)
        if entry is not None:
            entry.session = session

    def ended(self, session_id: str) -> None:
        """This process ended the session: forget it, and refuse reads begun before."""
        self.epoch += 1
        self.drop(session_id)

    def drop(self, session_id: str) -> None:
        entry = self._entries.pop(session_id, None)
        if entry is not None:
            self._by_handle.pop(entry.handle, None)

    def drop_handle(self, handle: str) -> None:
        """A notice: the session with this public handle changed or ended somewhere."""
        self.epoch += 1
        session_id = self._by_handle.pop(handle, None)
        if session_id is not None:
            self._entries.pop(session_id, None)

    def flush(self) -> None:
        self.epoch += 1
        self._entries.clear()
        self._by_handle.clear()
