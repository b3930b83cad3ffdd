"""discovery.throttle.AssociationLease on a real Redis."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from demo.cluster import ROOT, RedisServer
from discovery.errors import TransientError
from discovery.throttle import WAITER_STALE, AssociationLease, long_waiters, waiting_keys

KEY = "discovery:assoc:TEST@127.0.0.1:104"


def test_a_released_slot_is_free_after_the_grace(redis_server: RedisServer,
                                                 broker_url: str) -> None:
    """The PACS still counts an association for a moment after our A-RELEASE: the slot is
    taken for RELEASE_GRACE more, then free; nothing stays behind in Redis."""
    client = redis_server.client()
    with AssociationLease(client, KEY, 1, ttl=30):
        with pytest.raises(TransientError, match="DISCOVERY_PACS_MAX_ASSOCIATIONS"):
            AssociationLease(client, KEY, 1, ttl=30, wait=0).__enter__()
    with pytest.raises(TransientError):
        AssociationLease(client, KEY, 1, ttl=30, wait=0).__enter__()
    time.sleep(AssociationLease.RELEASE_GRACE + 0.05)
    with AssociationLease(client, KEY, 1, ttl=30, wait=0):
        assert client.zcard(KEY) == 1


def _wait_for(check, message: str, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, message
        time.sleep(0.02)


def test_first_come_first_served(redis_server: RedisServer, broker_url: str) -> None:
    """A holder that releases and asks again at once does not take its slot back ahead of a
    worker that has waited (it would starve that worker: worker/session.py hands slots over
    to long waiters); the long wait is visible to holders; the queue is empty afterwards."""
    client = redis_server.client()
    order: list[str] = []
    holder = AssociationLease(client, KEY, 1, ttl=30).__enter__()

    def wait_then_hold(name: str, hold: float) -> None:
        with AssociationLease(client, KEY, 1, ttl=30, wait=20):
            order.append(name)
            time.sleep(hold)

    waiter = threading.Thread(target=wait_then_hold, args=("waiter", 0.3))
    waiter.start()
    _wait_for(lambda: long_waiters(client, KEY, 0.5) == 1, "the waiter is not seen waiting")
    assert long_waiters(client, KEY, 5) == 0  # it has not waited that long
    holder.__exit__(None, None, None)
    wait_then_hold("holder again", 0)
    waiter.join()
    assert order == ["waiter", "holder again"]
    assert long_waiters(client, KEY, 0) == 0
    assert all(client.zcard(k) == 0 for k in waiting_keys(KEY))


def test_a_killed_waiter_leaves_the_queue(redis_server: RedisServer, broker_url: str) -> None:
    """A waiter killed while waiting cannot remove itself: once it has not polled for
    WAITER_STALE seconds it no longer holds up those behind it, nor counts as waiting."""
    client = redis_server.client()
    holder = AssociationLease(client, KEY, 1, ttl=30).__enter__()
    code = ("import redis, sys; from discovery.throttle import AssociationLease; "
            f"AssociationLease(redis.Redis.from_url(sys.argv[1]), {KEY!r}, 1, 30).__enter__()")
    victim = subprocess.Popen([sys.executable, "-c", code, redis_server.url], cwd=ROOT)
    try:
        _wait_for(lambda: client.zcard(waiting_keys(KEY)[0]) == 1, "the victim never queued")
        time.sleep(0.3)  # it is first in line now, ahead of any later waiter
    finally:
        victim.kill()
        victim.wait(10)
    holder.__exit__(None, None, None)
    started = time.monotonic()
    with AssociationLease(client, KEY, 1, ttl=30, wait=20):
        waited = time.monotonic() - started
        assert long_waiters(client, KEY, 0) == 0
    # Behind the victim until it went stale, not for the lease's whole wait.
    assert WAITER_STALE - 0.5 < waited < 10, waited


def test_a_waiter_without_a_last_poll_leaves_the_queue(redis_server: RedisServer,
                                                       broker_url: str) -> None:
    """A queue entry whose last poll is lost (a key evicted or deleted by hand) is dropped once
    it is older than WAITER_STALE, instead of holding up the queue while others poll."""
    client = redis_server.client()
    seconds, micros = client.time()
    waiting, seen = waiting_keys(KEY)
    client.zadd(waiting, {"lost": seconds + micros / 1e6 - WAITER_STALE - 1})
    with AssociationLease(client, KEY, 1, ttl=30, wait=0):
        assert client.zscore(waiting, "lost") is None


def _holders(client, n: int, limit: int) -> list[AssociationLease]:  # type: ignore[no-untyped-def]
    return [AssociationLease(client, KEY, limit, ttl=30, wait=0).__enter__() for _ in range(n)]


def test_one_long_waiter_makes_one_holder_leave(redis_server: RedisServer,
                                                broker_url: str) -> None:
    """Three holders check, one after another, whether to hand over to the one worker that
    has waited long: exactly one of them leaves, and nobody once its slot is on its way."""
    client = redis_server.client()
    holders = _holders(client, 3, 3)
    assert [h.should_leave(0.5) for h in holders] == [False, False, False]  # nobody waits
    waiter = threading.Thread(
        target=lambda: AssociationLease(client, KEY, 3, ttl=30, wait=20).__enter__().__exit__(
            None, None, None))
    waiter.start()
    _wait_for(lambda: long_waiters(client, KEY, 0.5) == 1, "the waiter is not seen waiting")
    leaving = [h.should_leave(0.5) for h in holders]
    assert sum(leaving) == 1, leaving
    assert [h.should_leave(0.5) for h in holders] == leaving  # the decision stands
    holders[leaving.index(True)].__exit__(None, None, None)
    waiter.join()
    for h, gone in zip(holders, leaving, strict=True):
        if not gone:
            h.__exit__(None, None, None)


def test_holders_beyond_the_limit_leave_after_redis_lost_the_leases(
        redis_server: RedisServer, broker_url: str) -> None:
    """Redis loses the leases (FLUSHALL): two more workers take the slots that look free.
    The next checks put the old holders' leases back and make exactly two of the four
    leave, so the cap holds again from the next query on."""
    client = redis_server.client()
    old = _holders(client, 2, 2)
    client.flushall()
    new = _holders(client, 2, 2)
    leaving = [h.should_leave(0.5) for h in [*old, *new]]
    assert sum(leaving) == 2, leaving
    for h in [*old, *new]:
        h.__exit__(None, None, None)


def test_a_waiter_interrupted_leaves_the_queue(redis_server: RedisServer, broker_url: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only a timeout: Ctrl-C or a task's time limit while waiting takes the waiter out
    of the queue at once, instead of holding up those behind it until it goes stale."""
    client = redis_server.client()
    holder = AssociationLease(client, KEY, 1, ttl=30).__enter__()

    def interrupted(_: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", interrupted)
    with pytest.raises(KeyboardInterrupt):
        AssociationLease(client, KEY, 1, ttl=30, wait=20).__enter__()
    monkeypatch.undo()
    assert all(client.zcard(k) == 0 for k in waiting_keys(KEY))
    holder.__exit__(None, None, None)


def test_a_worker_clock_far_ahead_does_not_expire_other_leases(
        redis_server: RedisServer, broker_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Leases run on the Redis server's clock: a worker whose own clock is two minutes ahead
    cannot take a slot by expiring another worker's lease."""
    client = redis_server.client()
    with AssociationLease(client, KEY, 1, ttl=30):
        ahead = time.time() + 120
        monkeypatch.setattr(time, "time", lambda: ahead)
        with pytest.raises(TransientError):
            AssociationLease(client, KEY, 1, ttl=30, wait=0).__enter__()


def test_pace_spaces_queries_across_callers(redis_server: RedisServer, broker_url: str) -> None:
    """DISCOVERY_PACS_MAX_QUERIES_PER_SECOND: each query reserves the next slot on the Redis
    clock, so three callers at once at 10 per second are let through 0.1 s apart."""
    from discovery.throttle import pace

    client = redis_server.client()
    released: list[float] = []

    def query() -> None:
        asked = time.monotonic()
        released.append(asked + pace(client, "pace-test", 10))

    callers = [threading.Thread(target=query) for _ in range(3)]
    for c in callers:
        c.start()
    for c in callers:
        c.join()
    first, second, third = sorted(released)
    # 0.1 s apart, give or take the jitter of one Redis round trip
    assert 0.08 < second - first < 0.12 and 0.08 < third - second < 0.12, released


def test_the_first_in_line_is_told_so(redis_server: RedisServer, broker_url: str) -> None:
    """The acquire script tells a waiter whether it is first in line (it then polls every
    HEAD_POLL seconds, so that a slot handed over is not left unused until its next poll)
    or behind others (it backs off up to MAX_POLL)."""
    client = redis_server.client()
    with AssociationLease(client, KEY, 1, ttl=30, wait=0):
        first, second = (AssociationLease(client, KEY, 1, ttl=30, wait=0) for _ in range(2))
        keys = [KEY, *waiting_keys(KEY)]

        def poll(lease: AssociationLease) -> int:
            return int(lease._acquire(keys=keys, args=[30, 1, lease.token, WAITER_STALE,
                                                       60_000]))

        assert [poll(first), poll(second), poll(first), poll(second)] == [0, -1, 0, -1]
        first._leave_queue()
        assert poll(second) == 0
        second._leave_queue()
