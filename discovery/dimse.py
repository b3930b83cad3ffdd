"""The only module that talks DICOM on the network: associate, C-ECHO, C-FIND, release/abort.

:class:`PacsConnection` owns one association's life cycle. It can serve several queries in a
row (one association for many windows) and always releases, or aborts on error. Failures are
classified into :class:`~discovery.errors.PermanentError` (fix a setting) and
:class:`~discovery.errors.TransientError` (try again later); nothing here retries.

pynetdicom runs the association (A-ASSOCIATE, A-RELEASE, A-ABORT, C-ECHO, C-CANCEL, the
P-DATA transport); the C-FIND's own messages are written and read here, their command sets by
:mod:`discovery.codec` (:meth:`PacsConnection.find`).
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import time
from dataclasses import dataclass, field
from io import BytesIO
from typing import TYPE_CHECKING, Any

from pydicom import Dataset
from pydicom import config as pydicom_config
from pydicom.dataelem import RawDataElement
from pydicom.valuerep import VR
from pynetdicom import AE, _config, evt
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from discovery import codec, reactor
from discovery.errors import PermanentError, TransientError
from discovery.transport import tls_context, why_no_connection
from discovery.windows import Window

if TYPE_CHECKING:
    from pynetdicom.association import Association

    from discovery.settings import Settings

log = logging.getLogger(__name__)

# pynetdicom logs every response identifier at INFO by default, patient data included, and
# converts its raw elements while doing so (before we can decode them with their character
# set). Neither is wanted.
_config.LOG_RESPONSE_IDENTIFIERS = False
_config.LOG_REQUEST_IDENTIFIERS = False
# Nor its DEBUG-only logging handlers for every PDU and DIMSE message, bound to each
# association and run (their messages built) whatever the log level; nor pydicom's checks of
# each value pynetdicom sets on a command set. Together about a seventh of a C-FIND's CPU
# (docs/benchmarks.md). Character set trouble still warns (discovery/studies.py needs that).
_config.LOG_HANDLER_LEVEL = "none"
pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
# pynetdicom's association threads wait instead of polling every millisecond, and the
# requestor's reactor no longer takes (and drops) C-FIND responses under load (reactor.py).
# Without it a query can end Success one study short: no run without it.
if not reactor.install():  # pragma: no cover - pyproject pins the pynetdicom it fits
    raise ImportError(f"pacs-discovery needs pynetdicom {reactor.SUPPORTED[0]}x "
                      "(discovery/reactor.py); install the pinned version")
FIND = StudyRootQueryRetrieveInformationModelFind

PENDING = (0xFF00, 0xFF01)
SUCCESS = 0x0000
CANCEL = 0xFE00

_LOST_ANSWER_TRIES = 3
_UNDEFINED_LENGTH = 0xFFFFFFFF
_KNOWN_VRS = frozenset(str(vr) for vr in VR)

# Reject reasons for source 1, "DICOM UL service-user" (PS3.8 Table 9-21).
_USER_REASONS = {
    1: "no reason given",
    2: "application context name not supported",
    3: "calling AE title not recognized: set DISCOVERY_CALLING_AET to an AE title the PACS knows",
    7: "called AE title not recognized: set DISCOVERY_CALLED_AET to the PACS's AE title",
}


@dataclass
class FindResult:
    """What one C-FIND returned: the identifiers of its Pending responses and its final status.

    ``status`` is ``None`` when no final response came (DIMSE timeout, A-ABORT, dropped
    connection): pynetdicom yields an empty status then (``send_c_find`` docstring).
    """

    rows: list[Dataset] = field(default_factory=list)
    undecodable: int = 0
    status: int | None = None
    cancelled: bool = False
    error: str | None = None


def study_query(window: Window) -> Dataset:
    """The STUDY-level identifier for one window (PS3.4 C.6.2.1): the matching keys StudyDate
    (single value) and StudyTime (range, or universal for the day sweep) and the return keys
    of the six CSV columns."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.StudyDate = window.study_date()
    ds.StudyTime = window.study_time()
    ds.AccessionNumber = ""
    ds.PatientID = ""
    ds.StudyInstanceUID = ""
    ds.StudyDescription = ""
    return ds


def _set_nodelay(event: evt.Event) -> None:
    """Send each PDU at once: without TCP_NODELAY, Nagle's algorithm and a DCMTK peer's
    delayed ACK cost about 40 ms per C-FIND."""
    try:
        transport = event.assoc.dul.socket
        sock = transport.socket if transport is not None else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):  # pragma: no cover - socket already gone
        pass


class PacsConnection:
    """One association to the PACS, opened lazily, reusable for several queries."""

    def __init__(self, settings: Settings, contexts: tuple[str, ...] = (FIND,)) -> None:
        self.settings = settings
        self._contexts = contexts
        self.assoc: Association | None = None
        self.queries = 0

    def __enter__(self) -> PacsConnection:
        self.open()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(abort=exc is not None)

    @property
    def is_open(self) -> bool:
        return self.assoc is not None and self.assoc.is_established

    def open(self) -> None:
        """Associate, classifying every failure (PS3.8 9.3.4 for rejections)."""
        if self.is_open:
            return
        s = self.settings
        ae = AE(ae_title=s.calling_aet)
        ae.acse_timeout = s.acse_timeout
        ae.dimse_timeout = s.dimse_timeout
        ae.network_timeout = s.network_timeout
        ae.connection_timeout = s.connect_timeout
        for uid in self._contexts:
            ae.add_requested_context(uid)
        handlers: list = [(evt.EVT_CONN_OPEN, _set_nodelay)] if s.tcp_nodelay else []
        tls = tls_context(s)
        for _ in range(_LOST_ANSWER_TRIES):
            started = time.monotonic()
            try:
                assoc = ae.associate(s.pacs_host, s.pacs_port, ae_title=s.called_aet,
                                     tls_args=tls, evt_handlers=handlers)
            except (OSError, ssl.SSLError):  # a host name that does not resolve, and others
                raise self._no_connection() from None
            # A DCMTK-based PACS (Orthanc) that rejects us may reset the connection right after
            # its A-ASSOCIATE-RJ; now and then the reset discards the RJ before we read it, and
            # the association ends at once with no answer at all. Asking again gets the RJ.
            lost_answer = (not assoc.is_established and assoc.acceptor.primitive is None
                           and time.monotonic() - started < 1.0)
            if not lost_answer:
                break
        if assoc.is_established:
            if not any(cx.abstract_syntax in self._contexts for cx in assoc.accepted_contexts):
                assoc.abort()
                raise self._no_find()
            self.assoc = assoc
            return
        raise self._classify_failure(assoc)

    def _no_find(self) -> PermanentError:
        return PermanentError(
            f"{self.settings.pacs_label} accepted the association but not Study Root C-FIND: "
            "allow Query/Retrieve for DISCOVERY_CALLING_AET on the PACS"
        )

    def _classify_failure(self, assoc: Association) -> Exception:
        s = self.settings
        rsp = assoc.acceptor.primitive
        if assoc.is_rejected and rsp is not None:
            result, source, reason = rsp.result, rsp.result_source, rsp.diagnostic
            if result == 0x01 and source == 0x01 and reason in (2, 3, 7):
                return PermanentError(
                    f"{s.pacs_label} rejected the association: {_USER_REASONS[reason]}"
                )
            return TransientError(
                f"{s.pacs_label} rejected the association ({rsp.result_str}, {rsp.source_str}, "
                f"{rsp.reason_str})"
            )
        if rsp is None:
            return self._no_connection()
        return TransientError(f"{s.pacs_label} aborted the association request")

    def _no_connection(self) -> Exception:
        """No association and no answer at all: say why, and which setting to check."""
        s = self.settings
        why, permanent = why_no_connection(s)
        if permanent:  # a TLS setting must change; trying again cannot help
            return PermanentError(f"cannot connect to {s.pacs_label}: {why}")
        return TransientError(
            f"cannot connect to {s.pacs_label}: {why}; "
            "check DISCOVERY_PACS_HOST and DISCOVERY_PACS_PORT"
            + (" and the DISCOVERY_TLS_* settings" if s.tls_enabled else "")
        )

    def echo(self) -> int | None:
        """C-ECHO (PS3.7 9.1.5); the status, or ``None`` when none came."""
        assert self.assoc is not None
        status = self.assoc.send_c_echo()
        return int(status.Status) if "Status" in status else None

    def find(self, identifier: Dataset, max_rows: int = 0) -> FindResult:
        """C-FIND at STUDY level (PS3.4 C.4.1). Pending 0xFF00/0xFF01 are rows; any final
        response ends it. With ``max_rows`` we send C-CANCEL once more rows than that came.

        The messages go over pynetdicom's association, but their command sets are written and
        read by :mod:`discovery.codec` (:class:`_Responses`): what pynetdicom's
        ``send_c_find()`` does, without building Datasets and primitives for each. The
        identifiers are encoded and decoded by pydicom, in the negotiated transfer syntax, as
        pynetdicom does."""
        if not self.is_open:
            self.open()
        assoc = self.assoc
        assert assoc is not None
        self.queries += 1
        result = FindResult()
        cx = next((cx for cx in assoc.accepted_contexts if cx.abstract_syntax == FIND), None)
        if cx is None:  # accepted with another context only (preflight asks Verification too)
            self.close(abort=True)
            raise self._no_find()
        cx_id, syntax = cx.context_id, cx.transfer_syntax[0]
        assert cx_id is not None
        msg_id = self.queries % 65535 or 1
        data = encode(identifier, syntax.is_implicit_VR, syntax.is_little_endian,
                      syntax.is_deflated)
        if data is None:  # pragma: no cover - study_query builds valid identifiers
            raise ValueError("the query identifier cannot be encoded")
        dimse = assoc.dimse
        dimse.receive_primitive = _Responses(dimse.msg_queue, cx_id)  # type: ignore[method-assign]
        # As send_c_find(): the association's reactor stays paused until the last response
        # (discovery/reactor.py never takes a message; an abort still reaches the queue).
        assoc._reactor_checkpoint.clear()
        try:
            while not assoc._is_paused and assoc.is_established:
                time.sleep(0.0001)
            send_message(assoc, cx_id, codec.find_request(msg_id, FIND), data)
            while result.status is None and result.error is None:
                self._next_response(result, msg_id, cx_id, syntax, max_rows)
        except (OSError, RuntimeError, ValueError) as exc:
            result.error = f"C-FIND failed: {exc}"
        finally:
            del dimse.receive_primitive  # pynetdicom's own again, between queries
            assoc._reactor_checkpoint.set()
        if result.status is None:
            self.close(abort=True)
        return result

    def _next_response(self, result: FindResult, msg_id: int, cx_id: int, syntax: Any,
                       max_rows: int) -> None:
        """Take one response off the queue into ``result``: a row, the final status or an
        error (no response within DISCOVERY_DIMSE_TIMEOUT, an abort, a malformed message)."""
        assert self.assoc is not None
        try:
            _, rsp = self.assoc.dimse.msg_queue.get(timeout=self.settings.dimse_timeout)
        except queue.Empty:
            rsp = None
        if rsp is None:  # the DIMSE timeout, or pynetdicom's word of an abort or a closed socket
            result.error = "no response from the PACS (timeout or aborted association)"
            return
        if not isinstance(rsp, _Response):  # taken by pynetdicom between two queries
            result.error = f"the PACS sent an unexpected {type(rsp).__name__} message"
            return
        if rsp.error is not None:
            result.error = f"the PACS sent {rsp.error}"
            return
        if rsp.message_id != msg_id:
            result.error = (f"the PACS answered message {rsp.message_id} while we asked "
                            f"message {msg_id}")
            return
        if rsp.status not in PENDING:
            result.status = rsp.status
            return
        try:
            if rsp.data is None:
                raise ValueError("a pending response without an identifier")
            ident = decode(BytesIO(rsp.data), syntax.is_implicit_VR, syntax.is_little_endian,
                           syntax.is_deflated)
            if _cut_short(ident):
                raise ValueError("an element shorter than its length")
        except Exception:  # noqa: BLE001 - pydicom may raise anything on hostile bytes
            result.undecodable += 1  # a study we cannot even name: the caller fails the window
            return
        result.rows.append(ident)
        if max_rows and len(result.rows) > max_rows and not result.cancelled:
            self.assoc.send_c_cancel(msg_id, cx_id)
            result.cancelled = True

    def close(self, abort: bool = False) -> None:
        """Release the association (A-RELEASE), or abort it after an error."""
        assoc, self.assoc = self.assoc, None
        if assoc is None:
            return
        try:
            if abort or not assoc.is_established:
                assoc.abort()
            else:
                assoc.release()
        except Exception:  # pragma: no cover - the peer is gone already
            log.debug("closing the association failed", exc_info=True)


def _cut_short(ds: Dataset) -> bool:
    """Whether an element of a decoded identifier holds fewer bytes than its header says
    (pydicom reads a value cut short by the end of the data set without a word, and a Study
    Instance UID one byte short is another study's UID), or has a VR pydicom does not know
    (decode() is lazy: reading the row later would raise NotImplementedError)."""
    for tag in ds.keys():
        elem = ds.get_item(tag, keep_deferred=True)
        if not isinstance(elem, RawDataElement):
            continue
        if elem.VR is not None and elem.VR not in _KNOWN_VRS:
            return True
        if (elem.value is not None and elem.length != _UNDEFINED_LENGTH
                and len(elem.value) != elem.length):
            return True
    return False


@dataclass
class _Response:
    """One C-FIND-RSP (PS3.7 9.3.2.2): what :meth:`PacsConnection.find` needs of it, or why it
    is not one."""

    status: int = 0
    message_id: int = 0
    data: bytes | None = None
    error: str | None = None


class _Responses:
    """Takes the place of pynetdicom's ``DIMSEServiceProvider.receive_primitive`` while a
    C-FIND runs: the DUL thread hands it every P-DATA (PS3.8 9.3.5) it receives; fragments are
    joined into messages (PS3.8 E.2: the message control header says command or data set, and
    last fragment) and each message is put on the DIMSE queue as a :class:`_Response`, where
    an abort still puts pynetdicom's ``(None, None)``. A message that is not a well-formed
    C-FIND-RSP is put as an error, and nothing after it is read (the query aborts)."""

    def __init__(self, out: queue.Queue, context_id: int | None = None) -> None:
        self.out = out
        self.context_id = context_id  # the C-FIND's: every PDV of its responses comes on it
        self.command = bytearray()
        self.data = bytearray()
        self.fields: dict[int, int] | None = None  # a response whose data set is coming
        self.broken = False
        self.ended = False  # the final response came
        self.batch: list[tuple[int, _Response]] = []  # this P-DATA's messages

    def __call__(self, primitive: Any) -> None:
        # The messages of one P-DATA go on the queue together at its end, so that a final
        # response followed by anything (PS3.7 9.1.2: nothing follows it) is never taken as
        # the end of the query: what followed would be a study that query never saw.
        try:
            self._read(primitive)
        finally:
            for item in self.batch:
                self.out.put(item)
            self.batch = []

    def _read(self, primitive: Any) -> None:
        for cx_id, pdv in primitive.presentation_data_value_list:
            if self.broken:
                return
            if self.ended:
                self.batch = [item for item in self.batch if item[1].status in PENDING]
                self._fail(cx_id, "a message after the final response")
            elif self.context_id is not None and cx_id != self.context_id:
                self._fail(cx_id, f"a message on presentation context {cx_id}, not the "
                                  f"C-FIND's {self.context_id}")
            elif not pdv:
                self._fail(cx_id, "an empty presentation data value")
            elif pdv[0] & 1:
                self._command(cx_id, pdv)
            elif self.fields is None:
                self._fail(cx_id, "a data set fragment without its command")
            else:
                self.data += pdv[1:]
                if pdv[0] & 2:
                    self._put(cx_id, self.fields, bytes(self.data))

    def _command(self, cx_id: int, pdv: bytes) -> None:
        if self.fields is not None:
            self._fail(cx_id, "a command inside a data set")
            return
        self.command += pdv[1:]
        if not pdv[0] & 2:
            return
        try:
            fields = codec.read_command(bytes(self.command))
        except codec.CodecError as exc:
            self._fail(cx_id, f"a malformed command set ({exc})")
            return
        self.command = bytearray()
        kind = fields.get(codec.COMMAND_FIELD)
        if kind != codec.C_FIND_RSP:
            what = "no command field" if kind is None else f"command 0x{kind:04X}"
            self._fail(cx_id, f"a message other than a C-FIND response ({what})")
        elif not {codec.STATUS, codec.MESSAGE_ID_RESPONDED, codec.DATA_SET_TYPE} <= set(fields):
            self._fail(cx_id, "a C-FIND response without its status, message ID or data set type")
        elif fields[codec.DATA_SET_TYPE] == codec.NO_DATA_SET:
            self._put(cx_id, fields, None)
        else:
            self.fields = fields

    def _put(self, cx_id: int, fields: dict[int, int], data: bytes | None) -> None:
        self.batch.append((cx_id, _Response(fields[codec.STATUS],
                                            fields[codec.MESSAGE_ID_RESPONDED], data)))
        self.ended = fields[codec.STATUS] not in PENDING
        self.fields, self.data = None, bytearray()

    def _fail(self, cx_id: int, why: str) -> None:
        self.broken = True
        self.batch.append((cx_id, _Response(error=why)))


def send_message(assoc: Association, cx_id: int, command: bytes, data: bytes | None) -> None:
    """A command set and its data set (if any) as P-DATA, in fragments that fit the peer's
    maximum PDU length (PS3.8 9.3.1: a PDV item's header takes 6 bytes of it; 0 means
    unlimited). The simulated PACS sends its C-FIND responses with it too."""
    limit = assoc.dimse.maximum_pdu_size or 0
    size = max(1, limit - 6) if limit else len(command) + len(data or b"") + 1
    parts = ((0x01, command),) if data is None else ((0x01, command), (0x00, data))
    for kind, payload in parts:
        chunks = [payload[i:i + size] for i in range(0, len(payload), size)] or [b""]
        for n, chunk in enumerate(chunks):
            pdata = P_DATA()
            header = kind | (0x02 if n == len(chunks) - 1 else 0)
            pdata.presentation_data_value_list.append((cx_id, bytes([header]) + chunk))
            assoc.dul.send_pdu(pdata)
