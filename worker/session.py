"""One association per worker process (or pool thread), reused for many windows; or a few
associations shared by a process's pool threads (``DISCOVERY_WORKER_ASSOCIATIONS``).

Opening an association costs more than a small C-FIND (A-ASSOCIATE, two pynetdicom threads,
A-RELEASE, and the lease's release grace): see docs/benchmarks.md, benchmark D. So a query
worker keeps its :class:`~discovery.dimse.PacsConnection` open between tasks, and holds its
association lease (:class:`~discovery.throttle.AssociationLease`) for exactly as long, so that
``DISCOVERY_PACS_MAX_ASSOCIATIONS`` still bounds the associations of all workers together.

It closes the association (A-RELEASE, lease returned):

* after ``DISCOVERY_ASSOCIATION_IDLE_SECONDS`` without a query (0 = after every window, the
  old behaviour); keep it below the PACS's own idle timeout (Orthanc: 5 s);
* after a query, or while idle, when another worker has waited for a slot longer than
  ``YIELD_AFTER`` and no other slot is on its way to it, once this one has held its slot for
  ``DISCOVERY_ASSOCIATION_HOLD_SECONDS`` (while idle, without waiting for that: it has no
  work to hold the slot for) (waiters queue in Redis, first come
  first served; Redis decides which holder leaves, so one waiter costs one hand-over), so
  workers that outnumber the slots take turns instead of waiting until the queue is empty.
  A shorter wait is no reason to hand over: a slot stays taken for a moment after each
  release (``AssociationLease.RELEASE_GRACE``), so as many workers as slots see short waits,
  and if each of them made every holder release, each release would make its releaser wait in
  turn: associations churned and the workers queried one after another (benchmark A: 4
  workers ran at the pace of 1.2). The hold time is for the same reason: a hand-over leaves
  the slot unused for a moment (the release grace, the waiter's next poll, A-ASSOCIATE), and
  when workers always wait (16 of them for 2 slots) a hand-over after every query left the
  slots unused most of the time (about 5 times the PACS's limit in wall time);
* after a query, or while idle, when more slots are held than the limit (Redis lost the
  leases, waiters took the slots that looked free, renewals put the old ones back);
* on any error (aborted, never reused), and when the worker process shuts down.

With ``DISCOVERY_WORKER_ASSOCIATIONS=K`` (K > 0) a worker process keeps at most K associations,
which its pool threads share (:class:`SharedSessions`): with the threads pool and more threads
than K, a thread has done its window's checks in Redis and waits with its C-FIND ready while
another thread's query is at the PACS, and sends it the moment that query ends; the result
message, the acknowledgement and the next task's checks of the thread that finished overlap
the next query instead of lying between two queries on the association (docs/benchmarks.md,
B). K = 0 keeps one association per pool process or thread.

A reused association the PACS has dropped meanwhile (its idle timeout, a restart) fails the
next C-FIND without a status; that one query is asked again at once on a fresh association
before it counts as a failed attempt.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import redis
from celery import signals

from discovery.dimse import PacsConnection
from discovery.throttle import AssociationLease, pacs_key

if TYPE_CHECKING:
    from discovery.settings import Settings

#: A holder hands its slot over after a query only to a worker that has waited this long:
#: longer than a wait for a slot in its release grace (0.1 s; waiters poll every 20-250 ms).
YIELD_AFTER = 0.5
#: An idle association looks for long waiters this often (seconds); one idle this long has no
#: work to hold its slot for and hands it over to a long waiter at once.
WAITERS_CHECK = 0.1


class Session:
    """The association of one worker process or pool thread, with its lease."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client, self.settings = client, settings
        s = settings
        self.lease_key = pacs_key("assoc", s.pacs_host, s.pacs_port, s.called_aet)
        self.lock = threading.RLock()
        self.conn: PacsConnection | None = None
        self.lease: AssociationLease | None = None
        self.last_used = 0.0
        self.held_since = 0.0
        self._checked = 0.0
        self._closer: threading.Thread | None = None
        self._wake = threading.Event()

    @property
    def is_open(self) -> bool:
        return self.conn is not None and self.conn.is_open

    def query(self, run: Callable[[PacsConnection], dict]) -> dict:
        """``run(conn)`` on this session's association (opened, with its lease, if needed);
        returns its outcome. Errors propagate after the association is aborted."""
        with self.lock:
            reused = self.is_open
            try:
                outcome = run(self._open())
                if reused and outcome.get("status") is None:
                    # Dropped while idle (PACS idle timeout): ask once more on a fresh one.
                    self.close(abort=True)
                    outcome = run(self._open())
            except BaseException:
                self.close(abort=True)
                raise
            self.last_used = time.monotonic()
            if (not self.is_open or self.settings.association_idle_seconds <= 0
                    or self._hand_over_after_query()):
                self.close()
            else:
                self._start_closer()
            return outcome

    def _open(self) -> PacsConnection:
        if self.conn is not None and self.conn.is_open:
            return self.conn
        self.close(abort=True)  # a connection that died: return its slot first
        s = self.settings
        lease = AssociationLease(self.client, self.lease_key, s.pacs_max_associations,
                                 s.association_lease)
        lease.__enter__()
        try:
            conn = PacsConnection(s)
            conn.open()
        except BaseException:
            lease.__exit__(None, None, None)
            raise
        self.conn, self.lease = conn, lease
        self.held_since = time.monotonic()
        return conn

    def _hand_over_after_query(self) -> bool:
        """Whether to hand the slot over after a query. Once the hold time is over a waiter
        may be due its turn: Redis is asked every time; before that only every
        ``WAITERS_CHECK`` seconds, and only for slots held beyond the limit (Redis lost
        leases): a round trip less between most queries."""
        now = time.monotonic()
        held_long = now - self.held_since >= self.settings.association_hold_seconds
        if not held_long and now - self._checked < WAITERS_CHECK:
            return False
        self._checked = now
        return self._should_hand_over(to_waiters=held_long)

    def _should_hand_over(self, to_waiters: bool) -> bool:
        """Whether to hand this association's slot over now: ``to_waiters`` and a worker has
        waited for a slot longer than ``YIELD_AFTER`` and no other holder is handing one over
        to it already; or more slots are held than the limit (Redis lost leases). Decided in
        Redis, atomically with the other holders' checks: one waiter makes one holder leave."""
        if self.lease is None:
            return False
        try:
            return self.lease.should_leave(YIELD_AFTER, to_waiters=to_waiters)
        except redis.RedisError:
            return True  # cannot tell: do not keep a slot someone may need

    def close(self, abort: bool = False) -> None:
        """Release (or abort) the association, then return the lease."""
        with self.lock:
            conn, lease, self.conn, self.lease = self.conn, self.lease, None, None
            if conn is not None:
                conn.close(abort=abort)
            if lease is not None:
                lease.__exit__(None, None, None)

    def _start_closer(self) -> None:
        if self._closer is None or not self._closer.is_alive():
            self._closer = threading.Thread(target=self._close_when_idle, daemon=True,
                                            name="association-idle-closer")
            self._closer.start()

    def _close_when_idle(self) -> None:
        """Close after the idle time, or as soon as a worker has waited long for a slot: the
        check after each query misses a worker that began to wait shortly before this
        session's last query of a while. Only an association without a query for
        ``WAITERS_CHECK`` asks Redis: a busy one is checked after its queries, and this
        thread's round trip, with the session's lock held, would lie between two of them."""
        idle = self.settings.association_idle_seconds
        while True:
            with self.lock:
                if self.conn is None:
                    return
                quiet = time.monotonic() - self.last_used
                left = idle - quiet
                # Idle: no work to hold the slot for, whatever the hold time.
                if left <= 0 or (quiet >= WAITERS_CHECK
                                 and self._should_hand_over(to_waiters=True)):
                    self.close()
                    return
            # Next look: WAITERS_CHECK after the last, or once the last query is that old.
            self._wake.wait(min(left, WAITERS_CHECK if quiet >= WAITERS_CHECK
                                else WAITERS_CHECK - quiet))


_local = threading.local()
_sessions: weakref.WeakSet[Session] = weakref.WeakSet()


def session(client: redis.Redis, settings: Settings) -> Session:
    """This thread's session (prefork: one per child process; threads pool: one per thread)."""
    current = getattr(_local, "session", None)
    if current is None:
        current = _local.session = Session(client, settings)
        _sessions.add(current)
    return current


class SharedSessions:
    """At most ``limit`` sessions of one worker process, shared by its pool threads. A thread
    borrows one nobody else is using, an open one first (the most recently returned: under a
    light load the others close when idle); it opens another while fewer than ``limit``
    exist; else it waits until a thread returns one."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._changed = threading.Condition()
        self._made = 0  # sessions of this process; the free ones are in _free
        self._free: list[Session] = []

    @contextmanager
    def borrow(self, client: redis.Redis, settings: Settings) -> Iterator[Session]:
        with self._changed:
            while not self._free and self._made >= self.limit:
                self._changed.wait()
            if self._free:
                chosen = next((s for s in reversed(self._free) if s.is_open), self._free[-1])
                self._free.remove(chosen)
            else:
                chosen = Session(client, settings)
                self._made += 1
                _sessions.add(chosen)
        try:
            yield chosen
        finally:
            with self._changed:
                self._free.append(chosen)
                self._changed.notify()


_shared: SharedSessions | None = None
_shared_lock = threading.Lock()


def shared_sessions(limit: int) -> SharedSessions:
    """This process's shared sessions (created in the pool process that first asks; the
    setting is the same for the process's life)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = SharedSessions(limit)
        return _shared


def query(client: redis.Redis, settings: Settings,
          run: Callable[[PacsConnection], dict]) -> dict:
    """``run(conn)`` on one of this worker's associations: this thread's own
    (``DISCOVERY_WORKER_ASSOCIATIONS=0``) or one of the process's shared ones."""
    if settings.worker_associations <= 0:
        return session(client, settings).query(run)
    # More than the PACS's limit could never be open at once: the others would only wait in
    # the queue for a slot and make the open ones hand over (associations churn).
    limit = min(settings.worker_associations, settings.pacs_max_associations)
    with shared_sessions(limit).borrow(client, settings) as chosen:
        return chosen.query(run)


def close_all(**_: object) -> None:
    """Release every open association of this process (worker shutdown, process exit)."""
    for s in list(_sessions):
        try:
            s.close()
        except Exception:  # noqa: BLE001 - shutting down; the lease expires by itself
            pass


signals.worker_process_shutdown.connect(close_all, weak=False)
signals.worker_shutdown.connect(close_all, weak=False)
atexit.register(close_all)
