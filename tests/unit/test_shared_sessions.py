"""A worker process's shared associations (worker/session.py, DISCOVERY_WORKER_ASSOCIATIONS):
threads borrow at most ``limit`` sessions, never one another thread holds, and an open one
before a closed one. (Against a PACS: tests/faults/test_session.py.)"""

from __future__ import annotations

import threading
import time

import redis

from discovery.settings import Settings
from worker.session import Session, SharedSessions


def test_threads_borrow_at_most_the_limit_and_never_the_same_session_at_once() -> None:
    shared = SharedSessions(2)
    client, settings = redis.Redis(), Settings()
    holders: dict[int, int] = {}
    seen: set[int] = set()
    most = 0
    lock = threading.Lock()
    overlap: list[int] = []

    def work() -> None:
        nonlocal most
        for _ in range(20):
            with shared.borrow(client, settings) as session:
                with lock:
                    key = id(session)
                    if holders.get(key):
                        overlap.append(key)
                    holders[key] = holders.get(key, 0) + 1
                    seen.add(key)
                    most = max(most, sum(1 for n in holders.values() if n))
                time.sleep(0.001)
                with lock:
                    holders[key] -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not overlap
    assert len(seen) == 2
    assert most == 2


class _Open(Session):
    """A session that claims an open association (no PACS needed to choose among them)."""

    @property
    def is_open(self) -> bool:
        return True


def test_an_open_session_is_borrowed_before_a_closed_one() -> None:
    shared = SharedSessions(3)
    client, settings = redis.Redis(), Settings()
    with shared.borrow(client, settings) as a, shared.borrow(client, settings) as b:
        assert a is not b
    # Both returned (b first), both closed: the last returned comes first.
    with shared.borrow(client, settings) as again:
        assert again is a
    opened = _Open(client, settings)
    shared._made += 1
    shared._free.insert(0, opened)  # returned before the closed ones
    with shared.borrow(client, settings) as chosen:
        assert chosen is opened
