"""Gentleness across every worker on every machine, kept in Redis.

* :class:`AssociationLease` - at most ``DISCOVERY_PACS_MAX_ASSOCIATIONS`` associations to the
  PACS at once. A lease is a member of a sorted set scored by its expiry; a crashed worker's
  lease expires by itself (``DISCOVERY_ASSOCIATION_LEASE`` seconds), a live one is renewed by a
  heartbeat thread while the association is open. Waiters are served first come, first served
  (a queue in Redis, so a worker that just released cannot take its slot back ahead of one
  that has waited); a waiter that stops polling (killed) leaves the queue after
  ``WAITER_STALE`` seconds. :meth:`AssociationLease.should_leave` tells a holder when to
  hand its slot over (someone has waited long and no other slot is on its way to them, or
  more slots are held than the limit after Redis lost leases). All times are the Redis
  server's clock.
* :func:`pace` - at most ``DISCOVERY_PACS_MAX_QUERIES_PER_SECOND`` C-FIND requests per second
  across all workers: each query reserves the next free slot on a shared clock and sleeps
  until it.
"""

from __future__ import annotations

import threading
import time
import uuid
from functools import lru_cache
from types import TracebackType

import redis
from redis.commands.core import Script

from discovery.errors import TransientError

# Every script reads the Redis server's clock: workers on several machines share one, and a
# worker whose clock is off cannot expire the others' leases.
_CLOCK = """
local t = redis.call('TIME')
local clock = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: leases (token -> expiry), waiting (token -> when it began to wait), seen (token -> its
# last poll). ARGV: ttl, limit, token, stale (seconds without a poll: gone), queue ttl (ms).
# Returns 1: the slot is taken; 0: waiting, first in line; -1: waiting behind others.
_ACQUIRE = _CLOCK + """
local key, waiting, seen = KEYS[1], KEYS[2], KEYS[3]
local ttl, limit, token = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
redis.call('ZREMRANGEBYSCORE', key, '-inf', clock)
local stale = clock - tonumber(ARGV[4])
-- Waiters queued longer than the stale time that have not polled since (or never: a lost
-- 'seen' entry must not leave a waiter at the head of the queue for good) are gone.
for _, w in ipairs(redis.call('ZRANGEBYSCORE', waiting, '-inf', stale)) do
    local last = redis.call('ZSCORE', seen, w)
    if not last or tonumber(last) < stale then
        redis.call('ZREM', waiting, w)
        redis.call('ZREM', seen, w)
    end
end
redis.call('ZADD', waiting, 'NX', clock, token)
local ahead = redis.call('ZCOUNT', waiting, '-inf', '(' .. redis.call('ZSCORE', waiting, token))
if ahead < limit - redis.call('ZCARD', key) then
    redis.call('ZADD', key, clock + ttl, token)
    redis.call('PEXPIRE', key, math.ceil(ttl * 1000) + 1000)
    redis.call('ZREM', waiting, token)
    redis.call('ZREM', seen, token)
    return 1
end
redis.call('ZADD', seen, clock, token)
redis.call('PEXPIRE', waiting, ARGV[5])
redis.call('PEXPIRE', seen, ARGV[5])
if ahead == 0 then return 0 end
return -1
"""

# How many live waiters (polled within ARGV[2] s) began to wait more than ARGV[1] s ago.
_LONG_WAITERS_BODY = """
local function long_waiters(waiting, seen, longer_than, stale)
    local n = 0
    for _, w in ipairs(redis.call('ZRANGEBYSCORE', waiting, '-inf', clock - longer_than)) do
        local last = redis.call('ZSCORE', seen, w)
        if last and tonumber(last) > clock - stale then n = n + 1 end
    end
    return n
end
"""
_LONG_WAITERS = _CLOCK + _LONG_WAITERS_BODY + """
return long_waiters(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]))
"""

# Whether holder ARGV[5] should hand its slot over: more long waiters than slots that are
# free, in their release grace or being handed over already; or more slots held than the
# limit (leases lost with a Redis flush and re-added by renewal). If so it is marked as
# leaving here, atomically, so that the next holder checking counts its slot as handed over:
# one waiter makes one holder leave, not all of them.
# KEYS: leases, waiting, seen, leaving (token -> until). ARGV: longer_than, stale, limit,
# grace, token, ttl, to_waiters ('1': hand over to long waiters; '0': only beyond the limit).
_SHOULD_LEAVE = _CLOCK + _LONG_WAITERS_BODY + """
local key, leaving, limit, grace, token = KEYS[1], KEYS[4], tonumber(ARGV[3]),
    tonumber(ARGV[4]), ARGV[5]
redis.call('ZREMRANGEBYSCORE', key, '-inf', clock)
redis.call('ZREMRANGEBYSCORE', leaving, '-inf', clock)
if redis.call('ZSCORE', leaving, token) then return 1 end
if not redis.call('ZSCORE', key, token) then
    -- our association is open: a lease lost with a flush counts again at once
    redis.call('ZADD', key, clock + tonumber(ARGV[6]), token)
end
local going = 0
for _, t in ipairs(redis.call('ZRANGE', leaving, 0, -1)) do
    local until_ = redis.call('ZSCORE', key, t)
    if until_ and tonumber(until_) > clock + grace then going = going + 1 end
end
local staying = redis.call('ZCOUNT', key, '(' .. (clock + grace), '+inf') - going
local over = staying > limit
if not over and ARGV[7] == '1' then
    over = long_waiters(KEYS[2], KEYS[3], tonumber(ARGV[1]), tonumber(ARGV[2])) > limit - staying
end
if over then
    redis.call('ZADD', leaving, clock + 60, token)
    redis.call('PEXPIRE', leaving, 60000)
    return 1
end
return 0
"""

# Renewal re-adds a lease that vanished (Redis flushed or restarted empty): the association
# is really open, so it must count against the limit again. ARGV: ttl, token.
_RENEW = _CLOCK + """
redis.call('ZADD', KEYS[1], clock + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1]) * 1000) + 1000)
return 1
"""

# Release: the slot stays taken for the grace (ARGV[1] s), then is free. KEYS: leases,
# leaving. ARGV: grace, token.
_RELEASE = _CLOCK + """
redis.call('ZADD', KEYS[1], 'XX', clock + tonumber(ARGV[1]), ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""

# ARGV: interval. Returns the seconds to sleep until this query's turn.
_PACE = _CLOCK + """
local key, interval = KEYS[1], tonumber(ARGV[1])
local nxt = tonumber(redis.call('GET', key) or '0')
local slot = math.max(clock, nxt)
redis.call('SET', key, tostring(slot + interval), 'PX', math.ceil(interval * 1000) + 60000)
return tostring(slot - clock)
"""


@lru_cache(maxsize=64)
def _script(client: redis.Redis, source: str) -> Script:
    """A Lua script registered once per client (a query must not hash its source again)."""
    return client.register_script(source)


def pacs_key(kind: str, host: str, port: int, aet: str) -> str:
    return f"discovery:{kind}:{aet}@{host}:{port}"


def waiting_keys(key: str) -> tuple[str, str]:
    """The queue of workers waiting for a slot of the lease set ``key``: when each began to
    wait, and when each last polled."""
    return f"{key}:waiting", f"{key}:seen"


def leaving_key(key: str) -> str:
    """Holders of the lease set ``key`` that are handing their slot over."""
    return f"{key}:leaving"


def long_waiters(client: redis.Redis, key: str, longer_than: float) -> int:
    """How many live workers have waited longer than ``longer_than`` seconds for a slot."""
    return int(_script(client, _LONG_WAITERS)(
        keys=list(waiting_keys(key)), args=[longer_than, WAITER_STALE]))


#: A waiter polls at least this often (seconds): a freed slot waits at most this long for the
#: first in line.
MAX_POLL = 0.25
#: The first in line polls this often (seconds): a slot handed over is unused until it does.
HEAD_POLL = 0.02
#: A waiter not seen polling for this long has gone (killed): it leaves the queue.
WAITER_STALE = 10 * MAX_POLL
#: Milliseconds the queue keys outlive their last waiter.
QUEUE_TTL_MS = 600_000


class AssociationLease:
    """A context manager holding one of ``limit`` association slots for the PACS."""

    #: Seconds a slot stays taken after our release: the PACS counts an association until it
    #: has seen the connection close, a few milliseconds after A-RELEASE-RP reached us.
    RELEASE_GRACE = 0.1

    def __init__(self, client: redis.Redis, key: str, limit: int, ttl: float,
                 wait: float = 600.0) -> None:
        self.client, self.key, self.limit, self.ttl, self.wait = client, key, limit, ttl, wait
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._acquire = _script(client, _ACQUIRE)
        self._renew = _script(client, _RENEW)
        self._release = _script(client, _RELEASE)
        self._should_leave = _script(client, _SHOULD_LEAVE)

    def __enter__(self) -> AssociationLease:
        """Take a slot, first come first served: wait in the queue until every worker that
        began to wait earlier has one and a slot is free."""
        deadline = time.monotonic() + self.wait
        delay = 0.02
        keys = [self.key, *waiting_keys(self.key)]
        try:
            while (got := int(self._acquire(keys=keys, args=[
                    self.ttl, self.limit, self.token, WAITER_STALE, QUEUE_TTL_MS]))) != 1:
                if time.monotonic() > deadline:
                    raise TransientError(
                        f"no association slot free within {self.wait:g} s "
                        "(DISCOVERY_PACS_MAX_ASSOCIATIONS reached by other workers)"
                    )
                # First in line: the next slot is ours, take it as soon as it is free.
                time.sleep(HEAD_POLL if got == 0 else delay)
                delay = min(delay * 1.5, MAX_POLL)
        except BaseException:
            # A timeout, a Redis error, Ctrl-C, a task's time limit: out of the queue at once
            # (it would hold up those behind until it went stale).
            self._leave_queue()
            raise
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)
        self._beat.start()
        return self

    def should_leave(self, longer_than: float, to_waiters: bool = True) -> bool:
        """Whether this holder should hand its slot over now (see ``_SHOULD_LEAVE``): a worker
        has waited longer than ``longer_than`` seconds and no other slot is on its way to it
        (only if ``to_waiters``), or more slots are held than the limit. ``True`` marks this
        slot as being handed over: the caller must then close its association and leave the
        lease."""
        keys = [self.key, *waiting_keys(self.key), leaving_key(self.key)]
        return bool(self._should_leave(keys=keys, args=[
            longer_than, WAITER_STALE, self.limit, self.RELEASE_GRACE, self.token, self.ttl,
            "1" if to_waiters else "0"]))

    def _leave_queue(self) -> None:
        try:
            waiting, seen = waiting_keys(self.key)
            pipe = self.client.pipeline()
            pipe.zrem(waiting, self.token)
            pipe.zrem(seen, self.token)
            pipe.execute()
        except redis.RedisError:  # it goes stale by itself
            pass

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self._renew(keys=[self.key], args=[self.ttl, self.token])
            except redis.RedisError:  # the lease expires by itself; the next beat retries
                pass

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()  # a renewal in flight must not re-add the lease after this
        try:
            self._release(keys=[self.key, leaving_key(self.key)],
                          args=[self.RELEASE_GRACE, self.token])
        except redis.RedisError:  # it expires by itself
            pass


def pace(client: redis.Redis, key: str, per_second: float) -> float:
    """Sleep until this worker's turn for one more query; returns the seconds slept."""
    if per_second <= 0:
        return 0.0
    wait = float(_script(client, _PACE)(keys=[key], args=[1.0 / per_second]))
    if wait > 0:
        time.sleep(wait)
    return wait
