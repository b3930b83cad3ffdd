"""Why no association came, in one line that names what to check: a host name that does not
resolve, and a port that accepts connections but never speaks DICOM (a plain socket that
stays silent: no real PACS behaves so)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from discovery.dimse import PacsConnection
from discovery.errors import TransientError
from discovery.settings import load_settings


def test_a_host_name_that_does_not_resolve() -> None:
    settings = load_settings(pacs_host="pacs.invalid", pacs_port=104)
    with pytest.raises(TransientError) as err:
        PacsConnection(settings).open()
    assert str(err.value) == (
        f"cannot connect to {settings.pacs_label}: host name 'pacs.invalid' does not "
        "resolve; check DISCOVERY_PACS_HOST and DISCOVERY_PACS_PORT"
    )


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Accepts connections, reads what comes, never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_port_that_never_answers_names_the_timeout(silent_port: int) -> None:
    settings = load_settings(pacs_host="127.0.0.1", pacs_port=silent_port, acse_timeout=1)
    with pytest.raises(TransientError) as err:
        PacsConnection(settings).open()
    assert str(err.value) == (
        f"cannot connect to {settings.pacs_label}: the port accepts connections but no DICOM "
        "association answer came within DISCOVERY_ACSE_TIMEOUT (1 s); check "
        "DISCOVERY_PACS_HOST and DISCOVERY_PACS_PORT"
    )
