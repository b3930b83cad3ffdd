"""pynetdicom's association threads without busy polling (part of the DICOM layer, used by
:mod:`discovery.dimse` and by the simulated PACS).

pynetdicom 3.0 runs two threads per association that wake every millisecond whether or not
anything happened: the DUL thread (socket and queues) and the association's reactor. Measured
here: eight idle associations cost half a core in the process that holds them, eight waiting
for a PACS's answer a fifth of one (docs/benchmarks.md, "pynetdicom's polling"). On a host that
also runs other workers, that is CPU taken from them.

:func:`install` changes, for the process, only how those two threads wait:

* the DUL thread sleeps in ``select()`` on its socket and on a wake-up socket that every
  ``put()`` to its event and provider queues rings (what it waits for), at most
  :data:`DUL_IDLE_WAIT` seconds (its ARTIM and idle timers are checked between waits);
  stopping it rings too;
* the reactor of an association *we requested* (an SCU's) naps :data:`REQUESTOR_NAP` seconds
  between its checks (peer release or abort, the DUL's end, the network timeout), counts as
  paused while it naps, so a C-FIND (ours or ``send_c_find()``) or ``release()`` never waits
  for it, and never takes a DIMSE message off the queue: pynetdicom's does, and under load
  that loses C-FIND responses (:func:`_requestor_reactor`);
* an acceptor's reactor (it serves requests: the simulated PACS) keeps pynetdicom's own loop,
  but its millisecond sleep between rounds waits instead until its DUL thread has done
  something (the DUL rings it each time it has nothing left to do: a request, a release or an
  abort is then on the queues the loop looks at), at most :data:`ACCEPTOR_IDLE_WAIT` seconds;
* and one fix: closing an association's socket closes it even when ``shutdown()`` fails
  because the peer closed first (pynetdicom then skipped the close, and the socket stayed open
  until garbage collection; seen as a ResourceWarning after a hostile PACS's abort).

Everything else is pynetdicom's own code. Only the versions it was written against (3.0.x)
are changed: with another pynetdicom :func:`install` changes nothing and returns False, and
:mod:`discovery.dimse` then refuses to load (pyproject pins 3.0.x).
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import sys
import threading
import time
from typing import Any

import pynetdicom
from pynetdicom import association as _association
from pynetdicom import dul as _dul
from pynetdicom import evt
from pynetdicom import transport as _transport

log = logging.getLogger(__name__)

#: Longest sleep of a DUL thread without news (its timers are checked between sleeps).
DUL_IDLE_WAIT = 0.05
#: Sleep of a requestor's reactor between its checks, marked paused meanwhile.
REQUESTOR_NAP = 0.02
#: Longest wait of an acceptor's reactor between its rounds without news from its DUL.
ACCEPTOR_IDLE_WAIT = 0.05
SUPPORTED = ("3.0.",)

_lock = threading.Lock()
_installed = False


class _Bell:
    """A socket pair: ``ring()`` from any thread wakes a ``select()`` on ``r``."""

    def __init__(self) -> None:
        self.r, self.w = socket.socketpair()
        self.r.setblocking(False)
        self.w.setblocking(False)

    def ring(self) -> None:
        try:
            self.w.send(b"\0")
        except OSError:  # full (rung already) or closed (the thread has ended)
            pass

    def drain(self) -> None:
        try:
            while self.r.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self.r.close()
        self.w.close()


class _RingingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue whose ``put()`` from another thread rings the bell of the DUL thread that reads
    it (the DUL's own puts need none: it looks at its queues again before it sleeps)."""

    def __init__(self, dul: Any, ring: Any) -> None:
        super().__init__()
        self._dul, self._ring = dul, ring

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        if threading.current_thread() is not self._dul:
            self._ring()


def _nap(dul: Any) -> None:
    """Wait until the DUL has something to do (or DUL_IDLE_WAIT passed)."""
    bell: _Bell = dul._discovery_bell
    waits: list[Any] = [bell.r]
    transport = dul.socket
    sock = getattr(transport, "socket", None) if transport is not None else None
    if sock is not None and getattr(transport, "_is_connected", False):
        try:
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                return  # decrypted bytes wait in the SSL buffer: select() cannot see them
            if sock.fileno() >= 0:
                waits.append(sock)
        except (OSError, ValueError):
            pass
    try:
        select.select(waits, [], [], DUL_IDLE_WAIT)
    except (OSError, ValueError):
        time.sleep(0.001)  # the socket closed under us: the stock pace until the DUL notices
    bell.drain()


class _DulTime:
    """``time`` as pynetdicom.dul sees it: the DUL thread's idle sleep becomes :func:`_nap`."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        me = threading.current_thread()
        if (isinstance(me, _dul.DULServiceProvider) and hasattr(me, "_discovery_bell")
                and not me._kill_thread):
            _ring_acceptor(me)  # whatever it put on the queues, the acceptor sees it now
            _nap(me)
        else:
            time.sleep(seconds)


def _ring_acceptor(dul: Any) -> None:
    news: threading.Event | None = getattr(dul.assoc, "_discovery_news", None)
    if news is not None:
        news.set()


class _AssociationTime:
    """``time`` as pynetdicom.association sees it: only the acceptor loop's sleep between
    rounds (recognised by its caller's code) waits for news from the DUL."""

    loop_code: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        news: threading.Event | None = getattr(threading.current_thread(), "_discovery_news",
                                               None)
        if news is not None and sys._getframe(1).f_code is self.loop_code:
            news.wait(ACCEPTOR_IDLE_WAIT)
            news.clear()  # before the round's checks: news during them rings again
        else:
            time.sleep(seconds)


def _requestor_reactor(assoc: Any) -> None:
    """The reactor of an association we requested: pynetdicom's checks (a peer's release or
    abort, the DUL's end, the network timeout) every :data:`REQUESTOR_NAP` seconds, paused
    while it naps, and never a DIMSE message.

    pynetdicom's own loop also takes DIMSE messages off the queue (``get_msg(block=False)``),
    to serve a peer's requests. An SCU that sends only C-ECHO and C-FIND has none to serve, and
    that take races ``send_c_find()``: when the thread is held up at the wrong moment (a loaded
    host) it takes a pending C-FIND response meant for the query, pynetdicom logs "Received
    unexpected C-FIND service message" and drops it, and the query ends Success one study
    short. Seen here: benchmark B at 8 associations, 3599 of 3600 studies (docs/benchmarks.md).
    """
    assoc._is_paused = False
    while not assoc._kill:
        assoc._is_paused = True  # a send_*() may go ahead while we nap
        time.sleep(REQUESTOR_NAP)
        assoc._reactor_checkpoint.wait()
        assoc._is_paused = False
        if assoc.is_established and assoc.acse.is_release_requested():
            assoc.acse.send_release(is_response=True)
            assoc.is_released = True
            _ended(assoc, evt.EVT_RELEASED)
            return
        if assoc.acse.is_aborted():
            assoc.dul.receive_pdu(wait=False)
            assoc.is_aborted = True
            _ended(assoc, evt.EVT_ABORTED)
            return
        if not assoc.dul.is_alive():
            assoc.kill()
            return
        if assoc.dul.idle_timer_expired():
            log.warning("network timeout: no data from the peer for %s s",
                        assoc.network_timeout)
            if assoc.network_timeout_response == "A-RELEASE":
                assoc._is_paused = True
                assoc._reactor_checkpoint.wait()
                assoc.release()
                assoc._is_paused = False
            else:
                assoc.abort()
            assoc.kill()
            return


def _ended(assoc: Any, event: Any) -> None:
    """The peer released or aborted: no longer established, tell the handlers, stop."""
    assoc.is_established = False
    evt.trigger(assoc, event, {})
    assoc.kill()


def install() -> bool:
    """Apply the change to this process (once); False when pynetdicom's version is not one it
    was written for (then nothing changes)."""
    global _installed
    with _lock:
        if _installed:
            return True

        version = getattr(pynetdicom, "__version__", "")
        if not version.startswith(SUPPORTED):
            log.debug("pynetdicom %s: its own reactors run", version)
            return False
        dul_cls = _dul.DULServiceProvider
        stock_init, stock_run = dul_cls.__init__, dul_cls.run_reactor

        def __init__(self: Any, assoc: Any) -> None:
            stock_init(self, assoc)
            bell = self._discovery_bell = _Bell()
            self.event_queue = _RingingQueue(self, bell.ring)
            self.to_provider_queue = _RingingQueue(self, bell.ring)

        def run_reactor(self: Any) -> None:
            try:
                stock_run(self)
            finally:
                self._discovery_bell.close()
                _ring_acceptor(self)  # the DUL has ended: the acceptor's loop notices now

        def kill_dul(self: Any) -> None:
            self._kill_thread = True
            self._discovery_bell.ring()

        def stop_dul(self: Any) -> bool:
            if self.state_machine.current_state == "Sta1":
                self._kill_thread = True
                self._discovery_bell.ring()
                while self.is_alive():
                    time.sleep(0.001)
                return True
            return False

        assoc_cls = _association.Association
        stock_loop = assoc_cls._run_reactor

        def _run_reactor(self: Any) -> None:
            if self.is_requestor:
                _requestor_reactor(self)
            else:
                self._discovery_news = threading.Event()
                self._discovery_news.set()  # the first round looks at once
                stock_loop(self)  # an acceptor serves requests: pynetdicom's own loop

        def _shutdown_socket(self: Any) -> None:
            sock = self.socket
            if sock is None:
                return
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not connected any more (the peer closed first): close it all the same
            try:
                sock.close()
            except OSError:
                pass

        _transport.AssociationSocket._shutdown_socket = _shutdown_socket  # type: ignore[method-assign]
        assoc_cls._run_reactor = _run_reactor  # type: ignore[method-assign]
        dul_cls.__init__ = __init__  # type: ignore[method-assign]
        dul_cls.run_reactor = run_reactor  # type: ignore[method-assign]
        dul_cls.kill_dul = kill_dul  # type: ignore[method-assign]
        dul_cls.stop_dul = stop_dul  # type: ignore[method-assign]
        _dul.time = _DulTime()  # type: ignore[assignment]
        assoc_time = _AssociationTime()
        assoc_time.loop_code = stock_loop.__code__
        _association.time = assoc_time  # type: ignore[assignment]
        _installed = True
        return True
