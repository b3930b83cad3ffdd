"""discovery/reactor.py against a real PACS (DCMTK's dcmqrscp; the simulated PACS for the
acceptor's side): our associations' threads wait for work instead of waking every
millisecond, and queries, release and a peer's disconnect still behave. (How much CPU that
saves is a benchmark figure: docs/benchmarks.md.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import date

import pynetdicom
import pytest

from demo.servers import DcmqrscpServer
from demo.studies import generate_studies
from discovery import reactor
from discovery.dimse import PacsConnection, study_query
from discovery.settings import Settings
from discovery.windows import Window

DAY = date(2024, 1, 1)
STUDIES = generate_studies(DAY, days=1, per_day=24, seed=3)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DcmqrscpServer]:
    with DcmqrscpServer(tmp_path_factory.mktemp("dcmqrscp")) as server:
        server.store(STUDIES)
        yield server


def settings_for(server: DcmqrscpServer) -> Settings:
    return Settings(pacs_host=server.host, pacs_port=server.port, called_aet=server.aet,
                    dimse_timeout=30)


def test_installed_for_this_pynetdicom() -> None:
    assert pynetdicom.__version__.startswith(reactor.SUPPORTED)
    assert reactor.install() is True  # once per process; importing dimse did it
    assert isinstance(pynetdicom.dul.time, reactor._DulTime)
    assert pynetdicom.association.Association._run_reactor.__name__ == "_run_reactor"
    assert pynetdicom.association.Association._run_reactor.__module__ == reactor.__name__


def test_idle_association_naps_and_queries_still_answer(pacs: DcmqrscpServer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    naps: list[float] = []
    real_nap = reactor._nap
    monkeypatch.setattr(reactor, "_nap", lambda dul: (naps.append(time.monotonic()),
                                                      real_nap(dul))[1])
    conn = PacsConnection(settings_for(pacs))
    conn.open()
    try:
        assert conn.assoc is not None and hasattr(conn.assoc.dul, "_discovery_bell")
        whole_day = conn.find(study_query(Window(DAY, 0, 86400)))
        assert whole_day.status == 0x0000 and len(whole_day.rows) == len(STUDIES)
        del naps[:]
        time.sleep(0.5)  # idle: the stock DUL thread would wake about 500 times meanwhile
        assert 1 <= len(naps) <= 50
        # The reused association answers at once (the request's put() rang the DUL awake),
        # over and over.
        for hour in range(24):
            result = conn.find(study_query(Window(DAY, hour * 3600, (hour + 1) * 3600)))
            assert result.status == 0x0000
        assert conn.queries == 25
    finally:
        conn.close()
    assert conn.assoc is None


def test_release_and_a_dropped_peer_end_the_threads(pacs: DcmqrscpServer) -> None:
    conn = PacsConnection(settings_for(pacs))
    conn.open()
    assoc = conn.assoc
    assert assoc is not None
    dul = assoc.dul
    conn.close()
    dul.join(5)
    assert not dul.is_alive() and dul._discovery_bell.r.fileno() == -1  # bell closed

    # The PACS goes away under an open association: the requestor's reactor notices (it naps
    # between checks, it does not sleep forever), so the connection is no longer open and
    # the next query opens a new association instead of waiting on a dead one.
    conn.open()
    assoc = conn.assoc
    assert assoc is not None
    pacs.stop()
    try:
        deadline = time.monotonic() + 10
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not assoc.is_established and not conn.is_open
        assoc.dul.join(5)
        assert not assoc.dul.is_alive()
    finally:
        conn.close(abort=True)
        pacs.start(port=pacs.port)
    assert conn.find(study_query(Window(DAY, 0, 3600))).status == 0x0000  # and back
    conn.close()


def test_threads_of_many_associations_end(pacs: DcmqrscpServer) -> None:
    conns = [PacsConnection(settings_for(pacs)) for _ in range(4)]
    for c in conns:
        c.open()
    duls = [c.assoc.dul for c in conns if c.assoc is not None]
    for c in conns:
        assert c.find(study_query(Window(DAY, 0, 3600))).status == 0x0000
        c.close()
    for d in duls:
        d.join(5)
        assert not d.is_alive()


def test_the_requestor_reactor_never_takes_a_pending_response(pacs: DcmqrscpServer) -> None:
    """pynetdicom's own reactor takes whatever DIMSE message waits on the queue whenever it
    runs; under load it took a pending C-FIND response meant for send_c_find() and the query
    ended Success one study short (benchmark B, 3599 of 3600). Ours leaves the queue to the
    query: a message put there while the association is idle is still there many naps later.
    (With pynetdicom's loop it is gone within a millisecond or two: this test fails.)"""
    conn = PacsConnection(settings_for(pacs))
    conn.open()
    try:
        assoc = conn.assoc
        assert assoc is not None
        pending = conn.find(study_query(Window(DAY, 0, 86400)))  # a real answer to reuse
        assert pending.status == 0x0000
        from pynetdicom.dimse_primitives import C_FIND

        rsp = C_FIND()
        rsp.MessageIDBeingRespondedTo, rsp.Status = 1, 0xFF00
        cx = assoc.accepted_contexts[0].context_id
        assoc.dimse.msg_queue.put((cx, rsp))
        time.sleep(10 * reactor.REQUESTOR_NAP)
        assert assoc.dimse.msg_queue.qsize() == 1  # untouched
        assert assoc.dimse.msg_queue.get_nowait() == (cx, rsp)
    finally:
        conn.close()


def test_an_acceptor_waits_for_news_and_still_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulated PACS's side (an acceptor keeps pynetdicom's loop): between rounds its
    thread waits for its DUL's news instead of sleeping a millisecond, and it still answers
    each query, a release and an abort."""
    from demo.simscp import SimScp

    rounds: list[float] = []
    clock = pynetdicom.association.time
    assert isinstance(clock, reactor._AssociationTime)
    real_wait = reactor.threading.Event.wait

    def counting_wait(self: object, timeout: float | None = None) -> bool:
        if isinstance(reactor.threading.current_thread(), pynetdicom.association.Association):
            rounds.append(time.monotonic())
        return real_wait(self, timeout)  # type: ignore[arg-type]

    server = SimScp({"generate": {"start": "20240101", "days": 1, "per_hour": 2, "seed": 1}})
    port = server.start(0)
    try:
        conn = PacsConnection(Settings(pacs_host="127.0.0.1", pacs_port=port,
                                       called_aet=server.aet, dimse_timeout=30))
        conn.open()
        monkeypatch.setattr(reactor.threading.Event, "wait", counting_wait)
        for hour in range(24):
            result = conn.find(study_query(Window(DAY, hour * 3600, (hour + 1) * 3600)))
            assert result.status == 0x0000 and len(result.rows) == 2
        del rounds[:]
        time.sleep(0.5)  # idle: pynetdicom's own loop would go round about 500 times
        # Two waits per round (the news, then the reactor's checkpoint); a round about every
        # 50 ms here, against about 900 waits with the stock loop.
        assert 1 <= len(rounds) <= 150
        acceptor = next(iter(server._server.active_associations))
        conn.close()  # A-RELEASE: the acceptor answers and its thread ends
        acceptor.join(5)
        assert not acceptor.is_alive() and acceptor.is_released
        conn.open()
        acceptor = next(iter(server._server.active_associations))
        conn.close(abort=True)
        acceptor.join(5)
        assert not acceptor.is_alive() and acceptor.is_aborted
    finally:
        server.stop()


def test_closing_a_socket_whose_shutdown_fails_closes_it() -> None:
    """pynetdicom's AssociationSocket skipped close() when shutdown() raised (the peer had
    closed first): the socket stayed open until garbage collection, a ResourceWarning that
    failed tests/integration/test_dimse_hostile.py now and then. reactor.install() fixes it."""
    import socket as _socket
    from types import SimpleNamespace

    from pynetdicom.transport import AssociationSocket

    reactor.install()
    sock = _socket.socket()  # never connected: shutdown() raises ENOTCONN
    with pytest.raises(OSError):
        sock.shutdown(_socket.SHUT_RDWR)
    AssociationSocket._shutdown_socket(SimpleNamespace(socket=sock))  # type: ignore[arg-type]
    assert sock.fileno() == -1
