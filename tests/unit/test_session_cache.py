"""The session cache's own rules (bff/session/cache.py): freshness, the absolute expiry,
notices, the read-versus-notice race, the link, the size bound."""

from __future__ import annotations

from bff.session.cache import SessionCache
from bff.session.models import Session, new_session_id, public_handle
from bff.session.notices import CHANGED, ENDED, Notices

NOW = 1_000_000.0


def session(expires_at: float = NOW + 3600) -> Session:
    return Session(
        id=new_session_id(),
        sub="u",
        id_token="i",
        access_token="a",
        access_expires_at=int(NOW) + 300,
        refresh_token="r",
        created_at=int(NOW),
        expires_at=int(expires_at),
        last_seen=int(NOW),
    )


def live_cache(ttl: float = 10, size: int = 100) -> tuple[SessionCache, Notices]:
    notices = Notices()
    cache = SessionCache(notices, ttl, size)
    notices.link(True)
    return cache, notices


def test_a_session_is_answered_until_its_ttl_and_never_past_its_absolute_expiry():
    cache, _ = live_cache()
    s = session()
    cache.put(s, NOW, cache.epoch)
    assert cache.get(s.id, NOW + 9.9) is s
    assert cache.get(s.id, NOW + 10) is None
    short = session(expires_at=NOW + 5)
    cache.put(short, NOW, cache.epoch)
    assert cache.get(short.id, NOW + 4.9) is short
    assert cache.get(short.id, NOW + 5) is None


def test_a_notice_drops_the_copy_whatever_process_sent_it():
    cache, notices = live_cache()
    ended, changed, other = session(), session(), session()
    for s in (ended, changed, other):
        cache.put(s, NOW, cache.epoch)
    notices.deliver(ENDED + public_handle(ended.id).encode())
    notices.deliver(CHANGED + public_handle(changed.id).encode())
    assert cache.get(ended.id, NOW) is None
    assert cache.get(changed.id, NOW) is None
    assert cache.get(other.id, NOW) is other


def test_a_read_that_began_before_a_notice_is_not_cached():
    cache, notices = live_cache()
    s = session()
    epoch = cache.epoch  # a read from Redis begins ...
    notices.deliver(ENDED + public_handle(s.id).encode())  # ... the session ends meanwhile ...
    cache.put(s, NOW, epoch)  # ... and the read's (old) answer comes back
    assert cache.get(s.id, NOW) is None


def test_own_changes_win_over_reads_that_began_before_them():
    cache, _ = live_cache()
    s = session()
    epoch = cache.epoch
    cache.ended(s.id)
    cache.put(s, NOW, epoch)
    assert cache.get(s.id, NOW) is None
    cache.put(s, NOW, cache.epoch)
    newer = session()
    newer.id = s.id
    cache.changed(newer)
    assert cache.get(s.id, NOW) is newer


def test_nothing_is_cached_while_notices_may_be_missed_and_losing_them_flushes():
    cache, notices = live_cache()
    s = session()
    cache.put(s, NOW, cache.epoch)
    notices.link(False)
    assert cache.get(s.id, NOW) is None and len(cache) == 0
    cache.put(s, NOW, cache.epoch)
    assert len(cache) == 0
    notices.link(True)
    cache.put(s, NOW, cache.epoch)
    assert cache.get(s.id, NOW) is s


def test_off_when_the_ttl_or_the_size_is_zero():
    for ttl, size in ((0, 100), (10, 0)):
        cache, _ = live_cache(ttl, size)
        s = session()
        cache.put(s, NOW, cache.epoch)
        assert len(cache) == 0


def test_the_size_is_bounded_oldest_out_first():
    cache, _ = live_cache(size=3)
    sessions = [session() for _ in range(5)]
    for s in sessions:
        cache.put(s, NOW, cache.epoch)
    assert len(cache) == 3
    assert [cache.get(s.id, NOW) is not None for s in sessions] == [False, False, True, True, True]
