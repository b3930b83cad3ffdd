"""Gentleness across every worker on every machine, kept in Redis.

* :class:`AssociationLease` - at most ``DISCOVERY_PACS_MAX_ASSOCIATIONS`` associations to the
  PACS at once. A lease is a member of a sorted set scored by its expiry; a crashed worker's
  lease expires by itself (``DISCOVERY_ASSOCIATION_LEASE`` seconds), a live one is renewed by a
  heartbeat thread while the association is open.
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

_ACQUIRE = """
local key, now, expiry, limit, token = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]),
    tonumber(ARGV[3]), ARGV[4]
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if redis.call('ZCARD', key) < limit then
    redis.call('ZADD', key, expiry, token)
    redis.call('PEXPIRE', key, math.ceil((expiry - now) * 1000) + 1000)
    return 1
end
return 0
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
        deadline = time.monotonic() + self.wait
        delay = 0.05
        while True:
            now = time.time()
            if self._acquire(keys=[self.key], args=[now, now + self.ttl, self.limit, self.token]):
                break
            if time.monotonic() > deadline:
                raise TransientError(
                    f"no association slot free within {self.wait:g} s "
                    "(DISCOVERY_PACS_MAX_ASSOCIATIONS reached by other workers)"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)
        self._beat.start()
        return self

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
