"""The Redis session store (single server, Sentinel or Cluster).

Keys (every command touches one key, so Cluster needs no hash tags):

    bff:s:<session id>      "<absolute expiry:10><last seen:10>" + encrypted record;
                            EXPIREAT = min(last seen + idle, absolute expiry)
    bff:u:<hash(sub)>       ZSET session id -> absolute expiry, sub-second (per-user index)
    bff:d:<hash(IdP sid)>   ZSET session id -> absolute expiry (back-channel logout by sid)
    bff:t:<state>           encrypted login transaction, EX login timeout
    bff:tn:<binding>        ZSET state -> expiry: a browser's pending logins
    bff:j:<hash(jti)>       seen logout-token ids
    bff:l:<name>            locks
    bff:v:<name>            encrypted values every process shares (the BFF's client tokens)
    bff:dc:<hash(challenge)>  a DBSC challenge's owner (single use: GETDEL)
    bff:dco:<owner>         the owner's latest DBSC challenge (hash), to shorten the one before
    bff:all                 ZSET session id -> absolute expiry: the cheap count for metrics

A use of a session costs at most one round trip: a Lua script reads the session and slides
its idle timeout together; with the session cache (cache.py) a process makes that trip once
per cache TTL per session and answers from memory in between. Outside Cluster those reads
are auto-pipelined (pipelining.py): the reads of one event-loop turn share one pipeline.
Index entries of sessions that ended by idle expiry are pruned whenever an index is read,
so no caller ever sees a dead session.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.lock import Lock
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ClusterDownError, LockError, NoScriptError, RedisClusterException, RedisError

from ..errors import StoreUnavailable
from .cache import SessionCache
from .crypto import DecryptionError, RecordCipher
from .models import LoginTransaction, Session, public_handle
from .notices import CHANGED, CHANNEL, ENDED, subscribe
from .pipelining import AutoPipeline
from .store import Clock, SessionStore, StoreLock

Client = aioredis.Redis | RedisCluster

# Everything that means "the store cannot answer now". RedisCluster raises
# RedisClusterException (not a RedisError) when no node can be reached or a slot is not
# covered.
_UNAVAILABLE = (RedisError, RedisClusterException, OSError)

# Read a session and slide its idle timeout. ARGV: now (whole seconds rounded down, for the
# check), the idle timeout, the use's time rounded up (10 digits: the new last-seen header)
# and in milliseconds (the key's expiry, exact: Redis ends the session idle seconds after its
# last use, and the check, a whole second looser, never ends it before).
_TOUCH = """
local v = redis.call('GET', KEYS[1])
if not v then return false end
local now = tonumber(ARGV[1])
local idle = tonumber(ARGV[2])
local absolute = tonumber(string.sub(v, 1, 10))
if math.min(tonumber(string.sub(v, 11, 20)) + idle, absolute) <= now then
  redis.call('DEL', KEYS[1])
  return false
end
local exp = math.min(tonumber(ARGV[4]) + idle * 1000, absolute * 1000)
redis.call('PEXPIREAT', KEYS[1], exp)
redis.call('SETRANGE', KEYS[1], 10, ARGV[3])
return v
"""

# Replace the record of a live session, keeping its expiry and timestamps header.
_UPDATE = """
local head = redis.call('GETRANGE', KEYS[1], 0, 19)
if head == '' then return 0 end
redis.call('SET', KEYS[1], head .. ARGV[1], 'KEEPTTL')
return 1
"""

# No health_check_interval: it costs a check on every command, and the one retry below
# already replaces a connection that died while idle (e.g. across a Redis restart).
# No socket_timeout either (redis-py 8 defaults to 5 s, so it is switched off explicitly):
# with one, redis-py wraps every send in asyncio.wait_for (a new task per command) and every
# read in a timer. RedisStore._guard bounds each whole operation (waiting for a connection
# included) with BFF_REDIS_TIMEOUT and _RedisLock each lock call, instead; a cancelled
# command closes its connection.
_COMMON: dict[str, Any] = {"socket_timeout": None}
DEFAULT_TIMEOUT = 2.0  # BFF_REDIS_TIMEOUT: seconds one store operation may take before it is a 503
# A sentinel answers from memory: a slow one is skipped for the next one soon.
_SENTINEL: dict[str, Any] = {
    "socket_connect_timeout": 1.0,
    "socket_timeout": 2.0,
    "health_check_interval": 15,
}


MAX_CONNECTIONS = 128  # per process


def _retry() -> Retry:
    # One quick retry covers a dropped idle connection; more would only delay a 503.
    return Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=1)


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """The master found through the sentinels, in a pool that waits for a free connection
    (``timeout``) instead of raising "Too many connections" under a burst."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._discovering = asyncio.Lock()

    async def get_master_address(self) -> Any:
        # One discovery at a time (each new connection asks the sentinels). redis-py's
        # Sentinel.discover_master reorders its list of sentinels across an await, so
        # concurrent calls can duplicate one sentinel in it and lose another for good; and
        # a burst of new connections would exhaust the sentinels' own connection pools.
        async with self._discovering:
            return await super().get_master_address()  # type: ignore[no-untyped-call]


def _nodes(hostlist: str, default_port: int) -> list[tuple[str, int]]:
    """``host[:port],[v6::addr]:port,...`` -> [(host, port)]; a missing port is the default."""
    nodes = []
    for item in (i.strip() for i in hostlist.split(",")):
        if not item:
            continue
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest.removeprefix(":")
        elif item.count(":") == 1:
            host, _, port = item.partition(":")
        else:
            host, port = item, ""
        if port and not port.isdigit():
            raise ValueError(f"invalid port {port!r} in the Redis URL")
        nodes.append((host or "localhost", int(port) if port else default_port))
    if not nodes:
        raise ValueError("the Redis URL names no host")
    return nodes


def check_url(url: str) -> None:
    """Raise ValueError naming what is wrong with a Sentinel or Cluster URL (no I/O)."""
    parts = urlsplit(url)
    if parts.scheme.endswith(("+sentinel", "+cluster")):
        _nodes(parts.netloc.rpartition("@")[2], 26379 if parts.scheme.endswith("+sentinel") else 6379)
    if parts.scheme.endswith("+sentinel"):
        path = [p for p in parts.path.split("/") if p]
        if len(path) > 1 and not path[1].isdigit():
            raise ValueError(f"invalid database {path[1]!r} in the Redis Sentinel URL")


def connect(url: str, timeout: float = DEFAULT_TIMEOUT) -> Client:
    """A client for ``redis://``, ``rediss://``, ``redis+sentinel://`` or ``redis+cluster://``.

    Sentinel: ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]``
    (port 26379 by default; the password is the data nodes', ``?sentinel_password=`` the
    sentinels'). Cluster: ``redis+cluster://[[user]:password@]host[:port][,host[:port]...]``
    (any nodes; the rest are discovered). ``rediss+`` uses TLS to the data nodes.
    Every client fails fast: a connect timeout of at most ``timeout`` and a single quick
    retry; RedisStore bounds each whole operation by ``timeout`` (see docs/redis.md).
    """
    common = {**_COMMON, "socket_connect_timeout": timeout}
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme in ("redis", "rediss", "unix"):
        # RedisStore admits MAX_CONNECTIONS operations at once (the rest wait, see _guard);
        # the pool's headroom is for the refresh locks. A plain pool: redis-py's blocking
        # pool costs a condition and a timer per command on the hot path.
        pool = aioredis.ConnectionPool.from_url(
            url, max_connections=2 * MAX_CONNECTIONS, retry=_retry(), **common
        )
        return aioredis.Redis.from_pool(pool)  # the client owns (and closes) its pool
    ssl = scheme.startswith("rediss")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    query = parse_qs(parts.query)
    auth: dict[str, Any] = {}
    if password:
        auth["password"] = unquote(password)
    if username:
        auth["username"] = unquote(username)
    if scheme.endswith("+sentinel"):
        path = [unquote(p) for p in parts.path.split("/") if p]
        service = path[0] if path else "mymaster"
        if len(path) > 1 and not path[1].isdigit():
            raise ValueError(f"invalid database {path[1]!r} in the Redis Sentinel URL")
        db = int(path[1]) if len(path) > 1 else 0
        sentinel_kwargs: dict[str, Any] = {**_SENTINEL, "retry": Retry(NoBackoff(), retries=0)}
        if "sentinel_password" in query:
            sentinel_kwargs["password"] = query["sentinel_password"][0]
        if "sentinel_username" in query:
            sentinel_kwargs["username"] = query["sentinel_username"][0]
        # The sentinels' clients do not retry: the next sentinel in the list is the retry.
        # Their default (10 retries with backoff each) made a request wait ~15 s for its
        # 503 when no sentinel answered.
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            _nodes(hostlist, 26379), sentinel_kwargs=sentinel_kwargs, ssl=ssl, **common
        )
        client = sentinel.master_for(
            service,
            connection_pool_class=_BlockingSentinelPool,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout,
            db=db,
            retry=_retry(),
            **auth,
        )
        return cast(Client, client)
    if scheme.endswith("+cluster"):
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in _nodes(hostlist, 6379)],
            ssl=ssl,
            retry=_retry(),
            # Per node. RedisStore lets at most MAX_CONNECTIONS operations run at once; the
            # rest is headroom for the refresh locks, which take connections of their own.
            max_connections=2 * MAX_CONNECTIONS,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            **auth,
        )
    raise ValueError(f"unsupported Redis URL scheme {scheme!r}")


def connect_listener(url: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """A client for the notices subscription: one connection that checks its health every
    few seconds (so a silently dead link is noticed), to the master on Sentinel; on Cluster
    to one of the given nodes (classic pub/sub reaches every node)."""
    parts = urlsplit(url)
    if parts.scheme.endswith("+cluster"):
        userinfo, _, hostlist = parts.netloc.rpartition("@")
        host, port = _nodes(hostlist, 6379)[0]
        netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
        url = f"{'rediss' if parts.scheme.startswith('rediss') else 'redis'}://{netloc}/0"
    client = connect(url, timeout)
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        pool.connection_kwargs["health_check_interval"] = 5
        pool.connection_kwargs["socket_timeout"] = 10.0
        # No retry: redis-py would reconnect and resubscribe behind our back, and the
        # notices sent meanwhile would be lost without anyone knowing. notices.subscribe
        # must see every broken link (to flush caches), so it does the reconnecting.
        pool.connection_kwargs["retry"] = Retry(NoBackoff(), retries=0)
    return client


def _h(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]


class _RedisLock(StoreLock):
    def __init__(self, lock: Lock, timeout: float) -> None:
        self._lock = lock
        self._timeout = timeout  # a hung Redis, not a held lock

    async def acquire(self, wait: float) -> bool:
        """Try, and try again every ``sleep`` seconds while another holder has it, for up to
        ``wait`` seconds; each try is bounded by the store's timeout on its own (redis-py's
        blocking acquire would let a hung Redis hold the caller for all of ``wait``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            try:
                async with asyncio.timeout(self._timeout):
                    if await self._lock.acquire(blocking=False):
                        return True
            except (*_UNAVAILABLE, TimeoutError) as exc:
                raise StoreUnavailable() from exc
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(self._lock.sleep, remaining))

    async def extend(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._lock.reacquire()
        except (LockError, *_UNAVAILABLE, TimeoutError):
            return  # lost or unreachable: the refresh still completes, the waiters re-check

    async def release(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._lock.release()
        except (LockError, *_UNAVAILABLE, TimeoutError):
            return  # expired already or unreachable; it expires by itself


class RedisStore(SessionStore):
    def __init__(
        self,
        client: Client,
        cipher: RecordCipher,
        idle_timeout: int,
        clock: Clock = time.time,
        timeout: float = DEFAULT_TIMEOUT,
        listener: Any = None,
        cache_ttl: float = 0.0,
        cache_size: int = 10000,
    ) -> None:
        super().__init__(idle_timeout, clock)
        self.r = client
        self._listener = listener  # the client whose connection subscribes to the notices
        self.cipher = cipher
        self.timeout = timeout
        self._touch = client.register_script(_TOUCH)
        self._update = client.register_script(_UPDATE)
        # redis-py's non-blocking pools raise at once past max_connections: operations wait
        # here for a slot instead (within the operation's time limit, then 503), which is
        # also cheaper on the hot path than a blocking pool.
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        # Session reads (one per proxied request) are auto-pipelined. Not on Cluster, where
        # a pipeline is split per node and its failure modes differ; there each read is
        # sent alone.
        self._batch = None if isinstance(client, RedisCluster) else AutoPipeline(client, self._guard)
        self._loading: asyncio.Future[Any] | None = None
        # Decoded sessions this process may answer from, kept correct by the notices
        # (cache.py); only with a notices subscription, which is what invalidates it.
        self.cache = SessionCache(self.notices, cache_ttl if listener is not None else 0.0, cache_size)

    # --- helpers --------------------------------------------------------------------
    @staticmethod
    def _skey(session_id: str) -> str:
        return f"bff:s:{session_id}"

    def _record(self, session: Session) -> bytes:
        return self.cipher.encrypt(session.encode(), self._skey(session.id).encode())

    def _decode(self, session_id: str, raw: bytes) -> Session | None:
        try:
            expires_at, last_seen = int(raw[:10]), int(raw[10:20])
            data = self.cipher.decrypt(raw[20:], self._skey(session_id).encode())
            return Session.decode(session_id, data, expires_at, last_seen)
        except (ValueError, KeyError, DecryptionError):
            return None  # unreadable (retired key, corrupt): treated as no session

    async def _guard(self, coro: Any) -> Any:
        """Run one store operation (never nested) within ``timeout`` seconds, the wait for a
        connection slot included; any Redis failure or the time running out becomes
        StoreUnavailable (503)."""
        acquired = False
        try:
            async with asyncio.timeout(self.timeout):
                await self._slots.acquire()
                acquired = True
                return await coro
        except (*_UNAVAILABLE, TimeoutError) as exc:
            self.on_error()
            raise StoreUnavailable() from exc
        finally:
            if acquired:
                self._slots.release()
            else:
                coro.close()  # never started: no "coroutine was never awaited" warning

    def _index_add(self, pipe: Any, key: str, session: Session) -> None:
        # Score: the absolute expiry with sub-second precision, so the index sorts by age
        # (oldest first) even for sessions created within the same second.
        score = self.clock() + (session.expires_at - session.created_at)
        pipe.zadd(key, {session.id: score})
        pipe.expireat(key, session.expires_at, nx=True)
        pipe.expireat(key, session.expires_at, gt=True)

    async def _live_members(self, key: str) -> list[Session]:
        now = self.now()
        pipe = self.r.pipeline(transaction=False)
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.zrange(key, 0, -1)
        _, ids = await pipe.execute()
        if not ids:
            return []
        ids = [i.decode() for i in ids]
        pipe = self.r.pipeline(transaction=False)
        for sid in ids:
            pipe.get(self._skey(sid))
        raws = await pipe.execute()
        live: list[Session] = []
        dead: list[str] = []
        for sid, raw in zip(ids, raws, strict=True):
            s = self._decode(sid, raw) if raw else None
            if s is None or s.idle_expires_at(self.idle_timeout) <= now:
                dead.append(sid)
            else:
                live.append(s)
        if dead:
            await self.r.zrem(key, *dead)
        return live  # in index order: oldest first

    # --- sessions -------------------------------------------------------------------
    async def create(self, session: Session, max_per_user: int = 0) -> list[Session]:
        async def run() -> list[Session]:
            header = b"%010d%010d" % (session.expires_at, session.last_seen)
            exp = min(int(self.clock() * 1000) + self.idle_timeout * 1000, session.expires_at * 1000)
            ukey = f"bff:u:{_h(session.sub)}"
            # One round trip (a non-transactional pipeline; Cluster splits it per node).
            pipe = self.r.pipeline(transaction=False)
            pipe.set(self._skey(session.id), header + self._record(session), pxat=exp)
            self._index_add(pipe, ukey, session)
            pipe.zadd("bff:all", {session.id: session.expires_at})
            if session.idp_sid:
                self._index_add(pipe, f"bff:d:{_h(session.idp_sid)}", session)
            await pipe.execute()
            ended: list[Session] = []
            if max_per_user:
                mine = [s for s in await self._live_members(ukey) if s.id != session.id]
                while len(mine) + 1 > max_per_user and mine:
                    oldest = mine.pop(0)
                    if await self._delete(oldest.id) is not None:
                        ended.append(oldest)
            return ended

        return cast(list[Session], await self._guard(run()))

    async def _read(self, key: str, touch: bool, now: int, seen: int) -> Any:
        """The raw record (slid from ``seen`` when ``touch``): queued on the auto-pipeline if
        there is one."""
        args = (now, self.idle_timeout, b"%010d" % seen, int(self.clock() * 1000))
        if self._batch is None:
            if touch:
                return await self._guard(self._touch(keys=[key], args=args))
            return await self._guard(self.r.get(key))
        if not touch:
            return await self._pipelined("GET", key)
        try:
            return await self._pipelined("EVALSHA", self._touch.sha, 1, key, *args)
        except NoScriptError:  # Redis restarted or its script cache was flushed
            await self._load_scripts()
        try:
            return await self._pipelined("EVALSHA", self._touch.sha, 1, key, *args)
        except NoScriptError as exc:  # flushed again at once: no endless reloading
            self.on_error()
            raise StoreUnavailable() from exc

    async def _pipelined(self, *command: Any) -> Any:
        assert self._batch is not None
        try:
            return await self._batch.call(*command)
        except NoScriptError:
            raise
        except _UNAVAILABLE as exc:  # an error reply to this command alone (the rest is mapped)
            self.on_error()
            raise StoreUnavailable() from exc

    async def _load_scripts(self) -> None:
        """SCRIPT LOAD once for every caller that found the script missing at the same time."""
        if self._loading is None or self._loading.done():
            self._loading = asyncio.ensure_future(self._guard(self.r.script_load(_TOUCH)))
            self._loading.add_done_callback(lambda f: f.cancelled() or f.exception())
        await asyncio.shield(self._loading)

    async def load(self, session_id: str, touch: bool = True) -> Session | None:
        """A use of the session (``touch``) may be answered from the cache; a read without
        touch (inside a refresh lock, before ending a session) always asks Redis."""
        if touch:
            cached = self.cache.get(session_id, self.clock())
            if cached is not None:
                return cached
        now, seen = self.now(), self.seen()
        epoch = self.cache.epoch
        raw = await self._read(self._skey(session_id), touch, now, seen)
        if not raw:
            return None
        session = self._decode(session_id, raw)
        if session is None or session.idle_expires_at(self.idle_timeout) <= now:
            return None
        if touch:
            session.last_seen = seen
            self.cache.put(session, self.clock(), epoch)
        return session

    async def update_tokens(self, session: Session) -> bool:
        done = await self._guard(self._update(keys=[self._skey(session.id)], args=[self._record(session)]))
        if done:
            self.cache.changed(session)
            # Best effort: a notice that cannot be sent leaves other processes' copies (with
            # the previous tokens) for at most their cache TTL; a refresh re-reads Redis.
            with contextlib.suppress(*_UNAVAILABLE, TimeoutError):
                async with asyncio.timeout(self.timeout):
                    await self.r.publish(CHANNEL, CHANGED + public_handle(session.id).encode())
        return bool(done)

    async def run_notices(self) -> None:
        if self._listener is None:  # no subscription: notices from other processes may be missed
            self.notices.link(False)
            await asyncio.Event().wait()
        await subscribe(self._listener, self.notices)

    async def delete(self, session_id: str) -> Session | None:
        return cast(Session | None, await self._guard(self._delete(session_id)))

    async def _delete(self, session_id: str) -> Session | None:
        raw = cast(bytes | None, await self.r.getdel(self._skey(session_id)))
        self.cache.ended(session_id)
        if not raw:
            return None
        session = self._decode(session_id, raw)
        if session is None:
            return None
        pipe = self.r.pipeline(transaction=False)
        pipe.zrem("bff:all", session_id)
        pipe.zrem(f"bff:u:{_h(session.sub)}", session_id)
        if session.idp_sid:
            pipe.zrem(f"bff:d:{_h(session.idp_sid)}", session_id)
        await pipe.execute()
        await self.r.publish(CHANNEL, ENDED + public_handle(session_id).encode())
        return session

    async def sessions_of(self, sub: str) -> list[Session]:
        return cast(list[Session], await self._guard(self._live_members(f"bff:u:{_h(sub)}")))

    async def sessions_by_idp_sid(self, idp_sid: str) -> list[Session]:
        return cast(list[Session], await self._guard(self._live_members(f"bff:d:{_h(idp_sid)}")))

    # --- login transactions ---------------------------------------------------------
    async def save_transaction(self, tx: LoginTransaction, ttl: int, max_pending: int) -> bool:
        async def run() -> bool:
            now = self.now()
            pkey = f"bff:tn:{tx.browser_binding}"
            pipe = self.r.pipeline(transaction=False)
            pipe.zremrangebyscore(pkey, "-inf", now)
            pipe.zcard(pkey)
            _, pending = await pipe.execute()
            if pending >= max_pending:
                return False
            key = f"bff:t:{tx.state}"
            pipe = self.r.pipeline(transaction=False)
            pipe.set(key, self.cipher.encrypt(tx.encode(), key.encode()), ex=ttl)
            pipe.zadd(pkey, {tx.state: now + ttl})
            pipe.expire(pkey, ttl)
            await pipe.execute()
            return True

        return cast(bool, await self._guard(run()))

    async def take_transaction(self, state: str) -> LoginTransaction | None:
        key = f"bff:t:{state}"
        raw = await self._guard(self.r.getdel(key))
        if not raw:
            return None
        try:
            tx = LoginTransaction.decode(state, self.cipher.decrypt(raw, key.encode()))
        except (ValueError, DecryptionError):
            return None
        await self._guard(self.r.zrem(f"bff:tn:{tx.browser_binding}", state))
        return tx

    async def pending_logins(self, browser_binding: str) -> int:
        count = await self._guard(self.r.zcount(f"bff:tn:{browser_binding}", f"({self.now()}", "+inf"))
        return int(count)

    # --- DBSC challenges ---------------------------------------------------------------
    async def issue_challenge(self, owner: str, challenge: str, ttl: int, previous_ttl: int) -> None:
        async def run() -> None:
            previous = await self.r.set(f"bff:dco:{owner}", _h(challenge), ex=ttl, get=True)
            pipe = self.r.pipeline(transaction=False)
            pipe.set(f"bff:dc:{_h(challenge)}", owner, ex=ttl)
            if isinstance(previous, bytes):
                pipe.expire(f"bff:dc:{previous.decode()}", previous_ttl, lt=True)
            await pipe.execute()

        await self._guard(run())

    async def take_challenge(self, challenge: str) -> str | None:
        owner = await self._guard(self.r.getdel(f"bff:dc:{_h(challenge)}"))
        return owner.decode() if owner else None

    # --- shared values --------------------------------------------------------------
    async def load_shared(self, name: str) -> bytes | None:
        key = f"bff:v:{name}"
        raw = await self._guard(self.r.get(key))
        if not raw:
            return None
        try:
            return self.cipher.decrypt(raw, key.encode())
        except DecryptionError:
            return None

    async def save_shared(self, name: str, value: bytes, ttl: int) -> None:
        key = f"bff:v:{name}"
        await self._guard(self.r.set(key, self.cipher.encrypt(value, key.encode()), ex=max(ttl, 1)))

    # --- replay, locks, health ------------------------------------------------------
    async def remember_jti(self, jti: str, ttl: int) -> bool:
        return bool(await self._guard(self.r.set(f"bff:j:{_h(jti)}", b"1", nx=True, ex=max(ttl, 1))))

    def lock(self, name: str, timeout: float) -> StoreLock:
        return _RedisLock(Lock(self.r, f"bff:l:{name}", timeout=timeout, sleep=0.05), self.timeout)

    async def count_sessions(self) -> int:
        async def run() -> int:
            pipe = self.r.pipeline(transaction=False)
            pipe.zremrangebyscore("bff:all", "-inf", self.now())
            pipe.zcard("bff:all")
            return int((await pipe.execute())[1])

        return cast(int, await self._guard(run()))

    async def ping(self) -> None:
        async def run() -> None:
            await self.r.ping()
            if isinstance(self.r, RedisCluster):
                # Every reachable node answers PING even when the cluster has failed (a master
                # is gone and its slots are not served): ready only when the cluster says ok.
                state = (await self.r.cluster_info()).get("cluster_state")
                if state != "ok":
                    raise ClusterDownError(f"cluster_state:{state}")

        await self._guard(run())

    async def close(self) -> None:
        if self._batch is not None:
            await self._batch.close()
        if self._listener is not None:
            await self._listener.aclose()
        pool = getattr(self.r, "connection_pool", None)
        await self.r.aclose()
        if isinstance(pool, SentinelConnectionPool):
            await pool.sentinel_manager.aclose()  # the clients of the sentinels themselves
