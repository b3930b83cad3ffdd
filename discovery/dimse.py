"""The only module that talks DICOM on the network: associate, C-ECHO, C-FIND, release/abort.

:class:`PacsConnection` owns one association's life cycle. It can serve several queries in a
row (one association for many windows) and always releases, or aborts on error. Failures are
classified into :class:`~discovery.errors.PermanentError` (fix a setting) and
:class:`~discovery.errors.TransientError` (try again later); nothing here retries.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydicom import Dataset
from pydicom import config as pydicom_config
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from discovery import reactor
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
                raise PermanentError(
                    f"{s.pacs_label} accepted the association but not Study Root C-FIND: "
                    "allow Query/Retrieve for DISCOVERY_CALLING_AET on the PACS"
                )
            self.assoc = assoc
            return
        raise self._classify_failure(assoc)

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
        response ends it. With ``max_rows`` we send C-CANCEL once more rows than that came."""
        if not self.is_open:
            self.open()
        assert self.assoc is not None
        self.queries += 1
        result = FindResult()
        cx_id = next(
            cx.context_id for cx in self.assoc.accepted_contexts if cx.abstract_syntax == FIND
        )
        msg_id = self.queries % 65535 or 1
        try:
            for status, ident in self.assoc.send_c_find(identifier, FIND, msg_id=msg_id):
                if status is None or "Status" not in status:
                    result.error = "no response from the PACS (timeout or aborted association)"
                    break
                code = int(status.Status)
                if code in PENDING:
                    if ident is None:  # pynetdicom could not decode the identifier at all
                        result.undecodable += 1
                        continue
                    result.rows.append(ident)
                    if max_rows and len(result.rows) > max_rows and not result.cancelled:
                        self.assoc.send_c_cancel(msg_id, cx_id)
                        result.cancelled = True
                    continue
                result.status = code
        except (OSError, RuntimeError, ValueError) as exc:
            result.error = f"C-FIND failed: {exc}"
        if result.status is None:
            self.close(abort=True)
        return result

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
