"""Simulated PACS: a project-owned pynetdicom C-FIND SCP (Study Root, STUDY level).

It serves studies held in memory and produces, on demand, the faults real servers cannot be made
to produce: result caps, odd rows, aborts, hangs, rejections and association limits. It doubles
as a PACS with a configurable answer delay for benchmarks.

Run ``python -m demo.simscp --port P [--aet SIMPACS] --config cfg.json --stats stats.json``
(``--port 0`` picks a free port; the stats file then names it), or in-process with
``SimScp(config, stats_path).start(port)`` and ``.stop()``.

Config (JSON object, every key optional):

``studies``     list of study dicts: ``study_uid``, ``study_date`` (YYYYMMDD), ``study_time``
                (TM; ``""`` = empty value, ``null`` = attribute left out; neither matches a
                non-universal StudyTime), ``patient_id``, ``patient_name``, ``accession``,
                ``description`` (``null`` = left out), ``charset`` (default ``"ISO_IR 192"``;
                multi-valued as ``"ISO 2022 IR 6\\\\ISO 2022 IR 87"``). Other keys are ignored.
``generate``    ``{"start": "20240101", "days": 30, "per_hour": 5, "seed": 0,
                "untimed_per_day": 0, "charset": "ISO_IR 192"}``: deterministic studies in
                memory, added to ``studies``.
``delay_ms``    the time each C-FIND takes: the pendings go out at once, the final response
                ``delay_ms`` after the request reached the handler (the simulator's own work
                included, so that a benchmark's PACS-bound limit is what it says: a PACS that
                needs ``delay_ms`` per query); ``row_delay_ms`` wait before each pending.
``record_queries`` ``false``: leave the two query lists out of the stats (benchmarks: the file
                then stays small however many queries come).
``prepare_keys`` keywords of the keys a client will ask (e.g. those of
                ``discovery.dimse.study_query``): every study's answer to them is built and
                encoded (both little-endian transfer syntaxes) at start, before the port is
                named, so that a benchmark's PACS spends its CPU on the exchange, not on
                building answers. Any query reuses answers built for its keys (the first time
                it asks them otherwise), unless ``malformed`` is set.
``cap``         ``{"mode": "none"|"truncate_fe00"|"refuse"|"silent", "limit": N,
                "status": 0xA700}`` applied when more than N studies match: ``truncate_fe00``
                sends N pendings then 0xFE00 (Orthanc's LimitFindResults), ``refuse`` no rows
                and ``status``, ``silent`` N pendings then Success.
``malformed``   list of: ``missing_uid`` (extra row without StudyInstanceUID), ``wrong_date``
                (extra row dated the day after the query range; not sent for a universal
                date), ``bad_charset`` (first row declares ISO_IR 192 and carries 0xFF bytes in
                PatientID and StudyDescription), ``duplicate`` (first row sent twice),
                ``pending_ff01`` (pendings use 0xFF01). Extras follow the capped rows.
``abort_after_rows`` N with ``abort_every`` M (default 1): on every Mth association, A-ABORT
                after N pendings on it. ``hang``: never answer a C-FIND.
``reject``      ``{"result": 1|2, "source": 1..3, "reason": n}``: reject every association.
``no_find``     do not accept the C-FIND presentation context (Verification only).
``max_associations`` N: reject (2, 3, 2) "local limit exceeded" beyond N concurrent.

Matching (PS3.4 C.2.2.2): StudyDate single value or range ``A-B``/``A-``/``-B``; StudyTime
single value or range, compared as numbers, the end of a range including every finer
component it omits (``-105959`` includes 10:59:59.5); StudyInstanceUID list matching;
PatientID and AccessionNumber with ``*``/``?`` wildcards. A response holds exactly the keys of
the request identifier plus SpecificCharacterSet (the study's), text encoded in that charset.

Stats (JSON, rewritten atomically on every change): ``pid``, ``port``, ``aet``,
``current_associations``, ``max_concurrent_associations``, ``total_associations`` (accepted),
``rejected_associations``, ``aborted_associations`` (by the SCP), ``total_queries``,
``cancelled_queries``, ``study_date_queries`` and ``study_time_queries`` (strings as received).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom import service_class as _service_class
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from demo.simmatch import (  # noqa: F401 - date_bounds, parse_tm, time_bounds re-exported
    EncodedAnswer,
    StudyIndex,
    answers,
    date_bounds,
    generate_studies,
    parse_tm,
    plan,
    response,
    time_bounds,
)
from discovery import codec, reactor
from discovery.dimse import send_message

LOGGER = logging.getLogger("demo.simscp")

CAP_MODES = ("none", "truncate_fe00", "refuse", "silent")
MALFORMED = ("missing_uid", "wrong_date", "bad_charset", "duplicate", "pending_ff01")
EXIT_OK = 0
_stock_encode = _service_class.encode


def _encode(ds: Dataset, implicit: bool, little: bool, deflated: bool = False) -> bytes | None:
    """pynetdicom's encoder of the SCP's answers, once per answer kept for reuse and transfer
    syntax (:class:`~demo.simmatch.EncodedAnswer`); every other data set as before."""
    cache = getattr(ds, "encoded", None) if isinstance(ds, EncodedAnswer) else None
    if cache is None:
        return _stock_encode(ds, implicit, little, deflated)
    key = (implicit, little, deflated)
    raw = cache.get(key)
    if raw is None:
        raw = cache[key] = _stock_encode(ds, implicit, little, deflated)
    return raw


_stock_send_msg = DIMSEServiceProvider.send_msg


def _send_msg(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
    """pynetdicom's DIMSE send, but a C-FIND response's command set is written by
    :func:`discovery.codec.find_response` (the bytes pynetdicom writes, without building a
    Dataset for it twice); every other message as before."""
    if (isinstance(primitive, C_FIND) and primitive.MessageIDBeingRespondedTo is not None
            and primitive.ErrorComment is None and primitive.OffendingElement is None):
        data = None if primitive.Identifier is None else primitive.Identifier.getvalue()
        command = codec.find_response(primitive.MessageIDBeingRespondedTo,
                                      primitive.AffectedSOPClassUID, primitive.Status,
                                      data is not None)
        send_message(self.assoc, context_id, command, data)
        return
    _stock_send_msg(self, primitive, context_id)


class Stats:
    """Counters shared by all associations, mirrored to a JSON file after every change."""

    def __init__(self, path: str | None, **fixed: Any) -> None:
        self.path, self.lock = path, threading.Lock()
        self.data: dict[str, Any] = {
            "pid": os.getpid(),
            **fixed,
            "current_associations": 0,
            "max_concurrent_associations": 0,
            "total_associations": 0,
            "rejected_associations": 0,
            "aborted_associations": 0,
            "total_queries": 0,
            "cancelled_queries": 0,
            "study_date_queries": [],
            "study_time_queries": [],
        }

    def change(self, **delta: Any) -> dict[str, Any]:
        """Add ``delta`` (ints are added, lists extended, others set) and rewrite the file."""
        with self.lock:
            for key, value in delta.items():
                if isinstance(value, list):
                    self.data[key].extend(value)
                elif isinstance(value, int) and key in self.data and key != "port":
                    self.data[key] += value
                else:
                    self.data[key] = value
            d = self.data
            d["max_concurrent_associations"] = max(
                d["max_concurrent_associations"], d["current_associations"]
            )
            text = json.dumps(d)
            if self.path:  # atomic: readers never see a half-written file
                fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(self.path)))
                with os.fdopen(fd, "w") as fh:
                    fh.write(text)
                os.replace(tmp, self.path)
        return json.loads(text)


class SimScp:
    """The simulated PACS: ``start(port)`` serves in background threads until ``stop()``."""

    def __init__(
        self, config: dict[str, Any], stats_path: str | None = None, aet: str = "SIMPACS"
    ) -> None:
        self.cfg = validate(config)
        studies = list(self.cfg.get("studies") or [])
        if self.cfg.get("generate"):
            studies += generate_studies(**self.cfg["generate"])
        self.index = StudyIndex(studies)
        self._studies = studies
        self._answers: dict[tuple, EncodedAnswer] = {}
        self.aet, self.stats_path = aet, stats_path
        self.stats = Stats(None)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._active = 0
        self._seen = 0
        self._server: Any = None

    def _prepare(self, studies: list[dict[str, Any]], keywords: list[str]) -> None:
        ident = Dataset()
        for kw in keywords:
            setattr(ident, kw, "STUDY" if kw == "QueryRetrieveLevel" else "")
        for row in answers(ident, studies, self._answers):
            for implicit in (True, False):
                _encode(row, implicit, True)

    def start(self, port: int = 0, host: str = "127.0.0.1") -> int:
        """Listen on ``host:port`` (0 = any free port) and return the port."""
        _config.LOG_REQUEST_IDENTIFIERS = _config.LOG_RESPONSE_IDENTIFIERS = False
        # Like discovery.dimse: no DEBUG-only handlers per PDU and message, no checks of each
        # value set on a response (it builds valid ones, or malformed ones on purpose).
        _config.LOG_HANDLER_LEVEL = "none"
        pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
        pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
        reactor.install()  # its DUL threads wait instead of polling: less CPU taken from us
        _service_class.encode = _encode  # answers kept for reuse are encoded once
        DIMSEServiceProvider.send_msg = _send_msg  # type: ignore[method-assign]
        if self.cfg.get("prepare_keys") and not self._answers:
            self._prepare(self._studies, self.cfg["prepare_keys"])
        ae = AE(ae_title=self.aet)
        ae.maximum_associations = 100_000  # our own admission control applies the limit
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 60
        ae.add_supported_context(Verification)
        if not self.cfg.get("no_find"):
            ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        handlers = [(evt.EVT_CONN_OPEN, self._on_open), (evt.EVT_C_FIND, self._on_find)]
        self._server = ae.start_server((host, port), block=False, evt_handlers=handlers)
        port = self._server.server_address[1]
        self.stats = Stats(self.stats_path, port=port, aet=self.aet)
        self.stats.change()
        return port

    def stop(self) -> None:
        """Abort every association and close the listening socket."""
        self._stopping.set()
        if self._server is not None:
            for assoc in self._server.active_associations:
                assoc.abort()
            self._server.shutdown()
            self._server = None

    # -- associations ------------------------------------------------------------------------

    def _on_open(self, event: evt.Event) -> None:
        assoc = event.assoc
        # Like a tuned PACS: do not let Nagle hold back small PDUs such as the final response.
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        negotiate, run = assoc.acse._negotiate_as_acceptor, assoc.run

        def admit() -> None:
            rejection = self._admit(assoc)
            if rejection:
                assoc.acse.send_reject(*rejection)
                evt.trigger(assoc, evt.EVT_REJECTED, {})
                assoc.kill()
            else:
                negotiate()

        def run_and_leave() -> None:
            try:
                run()
            finally:
                if getattr(assoc, "simscp_no", None):
                    self.stats.change(current_associations=-1)

        # Admission happens here, under one lock, so N concurrent requests admit exactly N.
        assoc.acse._negotiate_as_acceptor = admit
        assoc.run = run_and_leave

    def _admit(self, assoc: Any) -> tuple[int, int, int] | None:
        reject = self.cfg.get("reject")
        with self._lock:
            limit = self.cfg.get("max_associations")
            if reject:
                rejection = (reject["result"], reject["source"], reject["reason"])
            elif limit is not None and self.stats.data["current_associations"] >= limit:
                rejection = (2, 3, 2)
            else:
                self._seen += 1
                assoc.simscp_no, assoc.simscp_rows = self._seen, 0
                self.stats.change(current_associations=1, total_associations=1)
                return None
        self.stats.change(rejected_associations=1)
        return rejection

    def _alive(self, assoc: Any) -> bool:
        # The association thread runs this handler, so only the DUL state shows a peer abort.
        return (
            not self._stopping.is_set()
            and assoc.is_established
            and assoc.dul.state_machine.current_state == "Sta6"
        )

    def _wait(self, assoc: Any, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self._alive(assoc) and time.monotonic() < deadline:
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
        return self._alive(assoc)

    # -- C-FIND ------------------------------------------------------------------------------

    def _on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        arrived = time.monotonic()
        assoc, cfg = event.assoc, self.cfg
        ident = event.identifier
        if cfg.get("record_queries", True):
            self.stats.change(
                total_queries=1,
                study_date_queries=[str(ident.get("StudyDate", "") or "")],
                study_time_queries=[str(ident.get("StudyTime", "") or "")],
            )
        else:
            self.stats.change(total_queries=1)
        if cfg.get("hang"):
            while self._alive(assoc):
                time.sleep(0.05)
            return
        try:
            rows, final = plan(cfg, self.index, ident, self._answers)
        except ValueError as exc:
            LOGGER.warning("cannot process identifier: %s", exc)
            rows, final = [], 0xC000  # Unable to process
        if final == 0xC000:
            if self._until(assoc, arrived):
                yield final, None
            return
        pending = 0xFF01 if "pending_ff01" in (cfg.get("malformed") or ()) else 0xFF00
        abort_after = cfg.get("abort_after_rows")
        aborting = abort_after is not None and assoc.simscp_no % cfg.get("abort_every", 1) == 0
        for row in rows:
            if aborting and assoc.simscp_rows >= abort_after:
                break
            if event.is_cancelled:
                self.stats.change(cancelled_queries=1)
                yield 0xFE00, None
                return
            if cfg.get("row_delay_ms") and not self._wait(assoc, cfg["row_delay_ms"] / 1000):
                return
            assoc.simscp_rows += 1
            yield pending, row
        if aborting and assoc.simscp_rows >= abort_after:
            self.stats.change(aborted_associations=1)
            assoc.abort()
            return
        if not self._until(assoc, arrived):
            return
        if event.is_cancelled:
            self.stats.change(cancelled_queries=1)
            final = 0xFE00
        yield final, None

    def _until(self, assoc: Any, arrived: float) -> bool:
        """Wait until ``delay_ms`` after the request arrived: the final response of every
        C-FIND leaves then (or at once, when the rows alone took longer). False if the
        association ended meanwhile."""
        left = self.cfg.get("delay_ms", 0) / 1000 - (time.monotonic() - arrived)
        return self._wait(assoc, left) if left > 0 else self._alive(assoc)


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check the config; raise ValueError naming the key to fix."""
    if not isinstance(cfg, dict):
        raise ValueError("config must be a JSON object")
    cap = cfg.get("cap") or {}
    if cap.get("mode", "none") not in CAP_MODES:
        raise ValueError(f"cap.mode must be one of {CAP_MODES}")
    if cap.get("mode", "none") != "none" and not isinstance(cap.get("limit"), int):
        raise ValueError("cap.limit must be an integer")
    odd = set(cfg.get("malformed") or ()) - set(MALFORMED)
    if odd:
        raise ValueError(f"malformed: unknown {sorted(odd)}; known {MALFORMED}")
    rej = cfg.get("reject")
    if rej is not None:
        allowed = {1: (1, 2, 3, 7), 2: (1, 2), 3: (1, 2)}
        if rej.get("result") not in (1, 2) or rej.get("reason") not in allowed.get(
            rej.get("source"), ()
        ):
            raise ValueError("reject needs result 1|2, source 1..3 and a reason valid for it")
    if int(cfg.get("abort_every", 1)) < 1:
        raise ValueError("abort_every must be >= 1")
    for st in cfg.get("studies") or []:
        if not (len(str(st.get("study_date"))) == 8 and str(st.get("study_date")).isdigit()):
            raise ValueError(f"studies: study_date must be YYYYMMDD in {st}")
        if st.get("study_time"):
            parse_tm(st["study_time"])
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo.simscp", description=__doc__.split("\n")[0]
    )
    net = parser.add_argument_group("network")
    net.add_argument("--port", type=int, required=True, help="listen port; 0 = any free port")
    net.add_argument("--host", default="127.0.0.1", help="listen address (default %(default)s)")
    net.add_argument("--aet", default="SIMPACS", help="our AE title (default %(default)s)")
    files = parser.add_argument_group("files")
    files.add_argument("--config", help="config JSON (see module docstring)")
    files.add_argument("--stats", help="stats JSON, rewritten on every change")
    parser.add_argument("--log-level", default="WARNING", help="default %(default)s")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        config: dict[str, Any] = {}
        if args.config:
            with open(args.config, encoding="utf-8") as fh:
                config = json.load(fh)
        scp = SimScp(config, args.stats, args.aet)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        parser.error(f"--config {args.config}: {exc}")  # exits with EXIT_CONFIG
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    port = scp.start(args.port, args.host)
    LOGGER.warning(
        "simscp %s listening on %s:%d, %d studies",
        args.aet,
        args.host,
        port,
        sum(len(v) for v in scp.index.by_date.values()),
    )
    while not stop.wait(0.5):
        pass
    scp.stop()
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
