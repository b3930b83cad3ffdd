"""Real PACS servers as subprocesses on free loopback ports, for integration tests and demos.

Three Query/Retrieve SCPs (Service Class Providers, PS3.4 Annex C) with different C-FIND
matching code:

* :class:`OrthancServer` - Orthanc (``/usr/sbin/Orthanc``), stored over its REST API.
* :class:`DcmqrscpServer` - DCMTK ``dcmqrscp`` (index-file database), stored by C-STORE.
* :class:`QrscpServer` - pynetdicom's ``qrscp`` app (sqlite via SQLAlchemy), stored by C-STORE.

Each server runs in its own session (process group), logs to files in its ``workdir``, and
:meth:`stop` kills the whole group so that no forked child (dcmqrscp forks one per
association) outlives it. ``TCP_NODELAY=1`` is set in the environment because DCMTK-based
servers otherwise leave Nagle's algorithm on, which adds ~40 ms to every small PDU; a server
started with ``tcp_nodelay = False`` runs as Debian ships it (benchmarks).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, Self

from pynetdicom import AE

from demo.studies import SECONDARY_CAPTURE, Study, to_bytes, to_datasets

ORTHANC_BIN = "/usr/sbin/Orthanc"
DCMQRSCP_BIN = "dcmqrscp"
#: dcmqrscp storage-area quota per AE title; beyond it dcmqrscp silently deletes old studies.
DCMQRSCP_MAX_STUDIES = 500
LOCALHOST = "127.0.0.1"


class ServerError(RuntimeError):
    """A demo server failed to start, exited early, or refused data (see its log file)."""


def free_port() -> int:
    """Return a TCP port that is currently free on every interface.

    Bound on all interfaces (not only loopback) because Orthanc listens on all of them.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 30.0, proc: Any = None) -> None:
    """Wait until ``host:port`` accepts a TCP connection; raise :class:`ServerError` if not.

    If ``proc`` (a :class:`subprocess.Popen`) exits meanwhile, fail at once.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"process exited with {proc.returncode} before {port} opened")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    raise ServerError(f"{host}:{port} did not accept connections within {timeout}s")


def c_store(host: str, port: int, aet: str, studies: Iterable[Study]) -> int:
    """Send every instance of ``studies`` to ``aet`` at ``host:port`` by C-STORE.

    Returns the number of instances stored; raises :class:`ServerError` on an association
    rejection or a non-Success status (0x0000; warnings 0xB000-0xB007 also count as stored).
    """
    ae = AE(ae_title="DEMOSEED")
    ae.add_requested_context(SECONDARY_CAPTURE, "1.2.840.10008.1.2.1")
    assoc = ae.associate(host, port, ae_title=aet)
    if not assoc.is_established:
        raise ServerError(f"association with {aet}@{host}:{port} not established")
    count = 0
    try:
        for study in studies:
            for ds in to_datasets(study):
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None)
                if code is None or not (code == 0 or 0xB000 <= code <= 0xB007):
                    raise ServerError(f"C-STORE of {ds.SOPInstanceUID} failed: status {code}")
                count += 1
    except BaseException:
        assoc.abort()
        raise
    assoc.release()
    return count


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL what is left after ``timeout``, and reap it.

    Forked children of the group (dcmqrscp forks one per association, Celery its pool) may
    still be exiting after the leader; the last SIGKILL makes sure they are gone.
    """
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc.returncode is None:
        proc.wait(5.0)


class _Server:
    """Common process handling: start in a new session, log to files, kill the group."""

    name = "server"
    #: Set ``TCP_NODELAY=1`` in the server's environment (DCMTK reads it); False leaves it out.
    tcp_nodelay = True

    def __init__(self, workdir: str | os.PathLike[str], aet: str) -> None:
        self.workdir = Path(workdir)
        self.host = LOCALHOST
        self.port = 0
        self.aet = aet
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _wait_ready(self, timeout: float) -> None:
        wait_for_port(self.host, self.port, timeout, self.proc)

    def start(self, timeout: float = 30.0, port: int | None = None) -> Self:
        """Write the configuration, start the process and wait until it accepts work.

        ``port`` restarts a stopped server where its clients expect it (its data stays in
        ``workdir``); by default a free port is chosen."""
        if self.proc is not None:
            raise ServerError(f"{self.name} already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        command = self._command()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "TCP_NODELAY": "1"}
        if not self.tcp_nodelay:
            del env["TCP_NODELAY"]
        self.proc = subprocess.Popen(
            command,
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_ready(timeout)
        except BaseException as exc:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise ServerError(f"{self.name} did not start: {exc}\n{tail}") from exc
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the process group (SIGTERM, then SIGKILL) and close the log."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_group(proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class OrthancServer(_Server):
    """Orthanc with a private storage and index under ``workdir`` and no plugins.

    ``limit_find_results`` is Orthanc's ``LimitFindResults``: at most that many C-FIND
    matches are returned (0 = no limit). ``encoding`` is ``DefaultEncoding``, used for
    instances without Specific Character Set. ``extra_config`` is merged last into the JSON
    configuration (e.g. ``DicomTlsEnabled``, ``DicomCheckCalledAet``, ``DicomModalities``).
    """

    name = "orthanc"

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        aet: str = "ORTHANC",
        limit_find_results: int = 0,
        encoding: str = "Utf8",
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(workdir, aet)
        self.http_port = 0
        self.limit_find_results = limit_find_results
        self.encoding = encoding
        self.extra_config = dict(extra_config or {})

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def config(self) -> dict[str, Any]:
        """Return the Orthanc JSON configuration this server runs with."""
        cfg: dict[str, Any] = {
            "Name": f"demo-{self.aet}",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowStore": True,
            "LimitFindResults": self.limit_find_results,
            "DefaultEncoding": self.encoding,
            "DicomModalities": {},
            "StorageCompression": False,
            "SaveJobs": False,
        }
        cfg.update(self.extra_config)
        return cfg

    def _command(self) -> list[str]:
        self.http_port = free_port()
        while self.http_port == self.port:
            self.http_port = free_port()
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(self.config(), indent=2))
        return [ORTHANC_BIN, str(path)]

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(f"Orthanc exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/system", timeout=1.0) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        wait_for_port(self.host, self.port, max(1.0, deadline - time.monotonic()), self.proc)

    def store(self, studies: Iterable[Study]) -> int:
        """Upload every instance of ``studies`` with REST ``POST /instances``; return the count."""
        return upload_rest(self.url, studies)


def upload_rest(
    url: str, studies: Iterable[Study], user: str | None = None, password: str | None = None
) -> int:
    """POST each instance as a DICOM file to Orthanc's ``/instances``; return the count."""
    headers = {"Content-Type": "application/dicom"}
    if user is not None:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
    count = 0
    for study in studies:
        for ds in to_datasets(study):
            req = urllib.request.Request(
                f"{url.rstrip('/')}/instances", data=to_bytes(ds), headers=headers, method="POST"
            )
            with urllib.request.urlopen(req, timeout=30) as resp:
                answer = json.loads(resp.read())
            if answer.get("Status") not in ("Success", "AlreadyStored"):
                raise ServerError(f"Orthanc refused {ds.SOPInstanceUID}: {answer}")
            count += 1
    return count


class DcmqrscpServer(_Server):
    """DCMTK ``dcmqrscp`` with one storage area (index-file database) per AE title.

    Runs in its default fork mode, one child per association, as a real deployment would
    (``--single-process`` serialises associations and hides concurrency problems). Each
    storage area holds at most :data:`DCMQRSCP_MAX_STUDIES` studies; :meth:`store` refuses
    more, because dcmqrscp would silently delete the oldest ones.
    """

    name = "dcmqrscp"

    def __init__(self, workdir: str | os.PathLike[str], aets: Iterable[str] = ("DCMQR",)) -> None:
        self.aets = tuple(aets)
        if not self.aets:
            raise ValueError("at least one AE title is needed")
        super().__init__(workdir, self.aets[0])
        self._stored: dict[str, set[str]] = {aet: set() for aet in self.aets}

    def _command(self) -> list[str]:
        rows = []
        for aet in self.aets:
            area = self.workdir / "db" / aet
            area.mkdir(parents=True, exist_ok=True)
            rows.append(f'{aet:<16} "{area}" RW ({DCMQRSCP_MAX_STUDIES}, 1024mb) ANY')
        cfg = "\n".join(
            [
                f"NetworkTCPPort = {self.port}",
                "MaxPDUSize = 16384",
                "MaxAssociations = 64",
                "",
                "HostTable BEGIN",
                "HostTable END",
                "",
                "VendorTable BEGIN",
                "VendorTable END",
                "",
                "AETable BEGIN",
                *rows,
                "AETable END",
                "",
            ]
        )
        path = self.workdir / "dcmqrscp.cfg"
        path.write_text(cfg)
        return [DCMQRSCP_BIN, "--disable-host-lookup", "-c", str(path), str(self.port)]

    def store(self, studies: Iterable[Study], aet: str | None = None) -> int:
        """C-STORE ``studies`` into the storage area of ``aet`` (default: the first AE title)."""
        aet = aet or self.aet
        if aet not in self._stored:
            raise ValueError(f"unknown AE title {aet!r}; configured: {self.aets}")
        studies = list(studies)
        uids = self._stored[aet] | {s["study_uid"] for s in studies}
        if len(uids) > DCMQRSCP_MAX_STUDIES:
            raise ServerError(
                f"{len(uids)} studies for {aet} exceed the dcmqrscp quota of "
                f"{DCMQRSCP_MAX_STUDIES}; spread them over more AE titles (aets=...)"
            )
        count = c_store(self.host, self.port, aet, studies)
        self._stored[aet] = uids
        return count


class QrscpServer(_Server):
    """pynetdicom's ``qrscp`` app with its own sqlite database and instance folder.

    Note that qrscp answers a STUDY level C-FIND once per matching *instance*, so callers
    must de-duplicate by StudyInstanceUID.
    """

    name = "qrscp"

    def __init__(self, workdir: str | os.PathLike[str], aet: str = "QRSCP") -> None:
        super().__init__(workdir, aet)

    def _command(self) -> list[str]:
        cfg = "\n".join(
            [
                "[DEFAULT]",
                f"    ae_title: {self.aet}",
                f"    port: {self.port}",
                "    max_pdu: 16382",
                "    acse_timeout: 30",
                "    dimse_timeout: 30",
                "    network_timeout: 30",
                f"    bind_address: {self.host}",
                f"    instance_location: {self.workdir / 'instances'}",
                f"    database_location: {self.workdir / 'instances.sqlite'}",
                "    log_identifier: True",
                "",
            ]
        )
        path = self.workdir / "qrscp.ini"
        path.write_text(cfg)
        return [sys.executable, "-m", "pynetdicom", "qrscp", "-c", str(path)]

    def store(self, studies: Iterable[Study]) -> int:
        """C-STORE every instance of ``studies``; return the count."""
        return c_store(self.host, self.port, self.aet, studies)
