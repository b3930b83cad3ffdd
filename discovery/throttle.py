"""Gentleness across every worker on every machine, kept in Redis.

* :class:`AssociationLease` - at most ``DISCOVERY_PACS_MAX_ASSOCIATIONS`` associations to the
  PACS at once. A lease is a member of a sorted set scored by its expiry; a crashed worker's
  lease expires by itself (``DISCOVERY_ASSOCIATION_LEASE`` seconds), a live one is renewed by a
  heartbeat thread while the association is open. Waiters are served first come, first served
  (a queue in Redis, so a worker that just released cannot take its slot back ahead of one
  that has waited); a waiter that stops polling (killed) leaves the queue after
  ``WAITER_STALE`` seconds. :func:`long_waiters` tells holders someone has waited long.
* :func:`pace` - at most ``DISCOVERY_PACS_MAX_QUERIES_PER_SECOND`` C-FIND requests per second
  across all workers: each query reserves the next free slot on a shared clock and sleeps
  until it.
"""

from __future__ import annotations

import threading
import time
import uuid
from types import TracebackType

import redis

from discovery.errors import TransientError

# KEYS: leases, waiting (token -> when it began to wait), seen (token -> its last poll).
# ARGV: now, expiry, limit, token, stale (seconds without a poll: gone), queue ttl (ms).
# The queue uses the Redis server's clock: workers on several machines share one.
_ACQUIRE = """
local key, waiting, seen = KEYS[1], KEYS[2], KEYS[3]
local now, expiry, limit, token = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local t = redis.call('TIME')
local clock = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
local stale = clock - tonumber(ARGV[5])
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
    redis.call('ZADD', key, expiry, token)
    redis.call('PEXPIRE', key, math.ceil((expiry - now) * 1000) + 1000)
    redis.call('ZREM', waiting, token)
    redis.call('ZREM', seen, token)
    return 1
end
redis.call('ZADD', seen, clock, token)
redis.call('PEXPIRE', waiting, ARGV[6])
redis.call('PEXPIRE', seen, ARGV[6])
return 0
"""

# How many live waiters (polled within ARGV[2] s) began to wait more than ARGV[1] s ago.
_LONG_WAITERS = """
local t = redis.call('TIME')
local clock = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = 0
for _, token in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', clock - tonumber(ARGV[1]))) do
    local last = redis.call('ZSCORE', KEYS[2], token)
    if last and tonumber(last) > clock - tonumber(ARGV[2]) then n = n + 1 end
end
return n
"""

# Renewal re-adds a lease that vanished (Redis flushed or restarted empty): the association
# is really open, so it must count against the limit again.
_RENEW = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(ARGV[1]) - tonumber(ARGV[3])) * 1000) + 1000)
return 1
"""

_PACE = """
local key, now, interval = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local nxt = tonumber(redis.call('GET', key) or '0')
local slot = math.max(now, nxt)
redis.call('SET', key, tostring(slot + interval), 'PX', math.ceil(interval * 1000) + 60000)
return tostring(slot - now)
"""


def pacs_key(kind: str, host: str, port: int, aet: str) -> str:
    return f"discovery:{kind}:{aet}@{host}:{port}"


def waiting_keys(key: str) -> tuple[str, str]:
    """The queue of workers waiting for a slot of the lease set ``key``: when each began to
    wait, and when each last polled."""
    return f"{key}:waiting", f"{key}:seen"


def long_waiters(client: redis.Redis, key: str, longer_than: float) -> int:
    """How many live workers have waited longer than ``longer_than`` seconds for a slot."""
    return int(client.register_script(_LONG_WAITERS)(
        keys=list(waiting_keys(key)), args=[longer_than, WAITER_STALE]))


#: A waiter polls at least this often (seconds): a freed slot waits at most this long for the
#: first in line.
MAX_POLL = 0.25
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
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)

    def __enter__(self) -> AssociationLease:
        """Take a slot, first come first served: wait in the queue until every worker that
        began to wait earlier has one and a slot is free."""
        deadline = time.monotonic() + self.wait
        delay = 0.02
        keys = [self.key, *waiting_keys(self.key)]
        while True:
            now = time.time()
            if self._acquire(keys=keys, args=[now, now + self.ttl, self.limit, self.token,
                                              WAITER_STALE, QUEUE_TTL_MS]):
                break
            if time.monotonic() > deadline:
                self._leave_queue()
                raise TransientError(
                    f"no association slot free within {self.wait:g} s "
                    "(DISCOVERY_PACS_MAX_ASSOCIATIONS reached by other workers)"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, MAX_POLL)
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)
        self._beat.start()
        return self

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
                now = time.time()
                self._renew(keys=[self.key], args=[now + self.ttl, self.token, now])
            except redis.RedisError:  # the lease expires by itself; the next beat retries
                pass

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()  # a renewal in flight must not re-add the lease after this
        try:
            self.client.zadd(self.key, {self.token: time.time() + self.RELEASE_GRACE}, xx=True)
        except redis.RedisError:  # it expires by itself
            pass


def pace(client: redis.Redis, key: str, per_second: float) -> float:
    """Sleep until this worker's turn for one more query; returns the seconds slept."""
    if per_second <= 0:
        return 0.0
    script = client.register_script(_PACE)
    wait = float(script(keys=[key], args=[time.time(), 1.0 / per_second]))
    if wait > 0:
        time.sleep(wait)
    return wait
