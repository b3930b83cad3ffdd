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
``delay_ms``    wait before answering each C-FIND; ``row_delay_ms`` wait before each pending.
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
import hashlib
import json
import logging
import os
import random
import re
import signal
import socket
import tempfile
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

LOGGER = logging.getLogger("demo.simscp")
UTF8 = "ISO_IR 192"
CAP_MODES = ("none", "truncate_fe00", "refuse", "silent")
MALFORMED = ("missing_uid", "wrong_date", "bad_charset", "duplicate", "pending_ff01")
EXIT_OK = 0
_US = {2: 3_600_000_000, 4: 60_000_000, 6: 1_000_000}
_DAY_US = 24 * 3_600_000_000
_TEXT_KEYS = {  # keyword -> study dict key
    "StudyInstanceUID": "study_uid",
    "StudyDate": "study_date",
    "StudyTime": "study_time",
    "PatientID": "patient_id",
    "PatientName": "patient_name",
    "AccessionNumber": "accession",
    "StudyDescription": "description",
}


def parse_tm(value: str, end: bool = False) -> int:
    """TM ``HH[MM[SS[.F{1,6}]]]`` (or legacy ``HH:MM:SS``) -> microseconds since midnight.

    With ``end`` the omitted components count at their maximum, so a range end is inclusive at
    its own precision (``"1059"`` -> 10:59:59.999999). Raises ValueError for other forms.
    """
    main, _, frac = value.strip().replace(":", "").partition(".")
    if len(main) not in _US or not main.isdigit() or len(frac) > 6 or frac and not frac.isdigit():
        raise ValueError(f"not a DICOM TM value: {value!r}")
    h, m, s = int(main[0:2]), int(main[2:4] or 0), int(main[4:6] or 0)
    if h > 23 or m > 59 or s > 60:
        raise ValueError(f"not a DICOM TM value: {value!r}")
    us = ((h * 60 + m) * 60 + s) * 1_000_000 + (int(frac.ljust(6, "0")) if frac else 0)
    unit = 10 ** (6 - len(frac)) if frac else _US[len(main)]
    return us + unit - 1 if end else us


def date_bounds(value: str) -> tuple[str, str] | None:
    """StudyDate query -> inclusive (low, high) YYYYMMDD strings; None when universal."""
    value = (value or "").strip()
    if value in ("", "*"):
        return None
    low, sep, high = value.partition("-")
    if not sep:
        high = low
    for part in (low, high):
        if part and not (len(part) == 8 and part.isdigit()):
            raise ValueError(f"not a DICOM DA value or range: {value!r}")
    return low or "00000000", high or "99999999"


def time_bounds(value: str) -> tuple[int, int] | None:
    """StudyTime query -> inclusive (low, high) microseconds; None when universal."""
    value = (value or "").strip()
    if value in ("", "*"):
        return None
    low, sep, high = value.partition("-")
    if not sep:
        high = low
    return (parse_tm(low) if low else 0, parse_tm(high, end=True) if high else _DAY_US)


def _wild(pattern: str, value: str) -> bool:
    if pattern in ("", "*"):
        return True
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, value or "") is not None


def generate_studies(
    start: str,
    days: int,
    per_hour: int,
    seed: int = 0,
    untimed_per_day: int = 0,
    charset: str = UTF8,
) -> list[dict[str, Any]]:
    """Deterministic synthetic studies: ``per_hour`` in each hour of ``days`` days from ``start``,
    some with fractional seconds (up to xx59:59.999999), plus ``untimed_per_day`` with no time."""
    rng = random.Random(seed)
    descriptions = ["CT Thorax", "MR Knie links", "Röntgen Thorax", "Échographie", "", None]
    first = date(int(start[:4]), int(start[4:6]), int(start[6:8]))
    out: list[dict[str, Any]] = []
    for day in range(days):
        da = (first + timedelta(days=day)).strftime("%Y%m%d")
        times: list[str | None] = [None] * untimed_per_day
        for hour in range(24):
            for _ in range(per_hour):
                sec = rng.randrange(3600)
                tm = f"{hour:02d}{sec // 60:02d}{sec % 60:02d}"
                times.append(tm + f".{rng.randrange(10**6):06d}" if rng.random() < 0.3 else tm)
        for tm in times:
            n = len(out)
            digest = hashlib.sha256(f"simscp:{seed}:{n}".encode()).hexdigest()
            out.append(
                {
                    "study_uid": f"2.25.{int(digest[:30], 16)}",
                    "study_date": da,
                    "study_time": tm,
                    "patient_id": f"SIM{n % 9973:05d}",
                    "patient_name": f"Sim^Patient{n % 9973}",
                    "accession": f"A{n:09d}",
                    "description": rng.choice(descriptions),
                    "charset": charset,
                }
            )
    return out


@dataclass
class Query:
    """The matching keys of one C-FIND identifier, parsed."""

    dates: tuple[str, str] | None
    times: tuple[int, int] | None
    uids: set[str] | None
    patient_id: str
    accession: str

    @classmethod
    def from_identifier(cls, ident: Dataset) -> Query:
        uid = str(ident.get("StudyInstanceUID", "") or "")
        return cls(
            date_bounds(str(ident.get("StudyDate", "") or "")),
            time_bounds(str(ident.get("StudyTime", "") or "")),
            set(uid.split("\\")) if uid else None,
            str(ident.get("PatientID", "") or ""),
            str(ident.get("AccessionNumber", "") or ""),
        )


class StudyIndex:
    """Studies grouped by date, each with its parsed time, for fast window queries."""

    def __init__(self, studies: list[dict[str, Any]]) -> None:
        self.by_date: dict[str, list[tuple[int | None, dict[str, Any]]]] = {}
        for st in studies:
            tm = st.get("study_time")
            self.by_date.setdefault(st["study_date"], []).append((parse_tm(tm) if tm else None, st))
        self.dates = sorted(self.by_date)

    def match(self, q: Query) -> list[dict[str, Any]]:
        """Studies matching ``q``, by date then time (untimed ones first)."""
        lo, hi = (0, len(self.dates))
        if q.dates:
            lo, hi = bisect_left(self.dates, q.dates[0]), bisect_right(self.dates, q.dates[1])
        out = []
        for da in self.dates[lo:hi]:
            for us, st in sorted(self.by_date[da], key=lambda x: -1 if x[0] is None else x[0]):
                if q.times and (us is None or not q.times[0] <= us <= q.times[1]):
                    continue
                if q.uids is not None and st["study_uid"] not in q.uids:
                    continue
                if _wild(q.patient_id, st.get("patient_id") or "") and _wild(
                    q.accession, st.get("accession") or ""
                ):
                    out.append(st)
        return out


def response(ident: Dataset, st: dict[str, Any]) -> Dataset:
    """The response identifier for study ``st``: the requested keys only, plus its charset."""
    ds = Dataset()
    charset = st.get("charset") or UTF8
    ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
    for elem in ident:
        kw = elem.keyword
        if kw == "SpecificCharacterSet":
            continue
        if kw == "QueryRetrieveLevel":
            ds.QueryRetrieveLevel = "STUDY"
        elif kw in _TEXT_KEYS:
            value = st.get(_TEXT_KEYS[kw])
            if value is not None:
                setattr(ds, kw, value)
        else:  # a return key we do not hold: zero length, as PS3.4 C.2.2.1.2 allows
            ds.add(DataElement(elem.tag, elem.VR, [] if elem.VR == "SQ" else None))
    return ds


def plan(cfg: dict[str, Any], index: StudyIndex, ident: Dataset) -> tuple[list[Dataset], int]:
    """The pending identifiers and the final status for one C-FIND (before cancel/abort)."""
    q = Query.from_identifier(ident)
    matches = index.match(q)
    cap = cfg.get("cap") or {}
    mode, limit = cap.get("mode", "none"), int(cap.get("limit", 0))
    final = 0x0000
    if mode != "none" and len(matches) > limit:
        if mode == "refuse":
            return [], int(cap.get("status", 0xA700))
        matches = matches[:limit]
        final = 0xFE00 if mode == "truncate_fe00" else 0x0000
    rows = [response(ident, st) for st in matches]
    bad = set(cfg.get("malformed") or ())
    if rows and "bad_charset" in bad:
        rows[0].SpecificCharacterSet = UTF8
        for tag, vr, text in ((0x00100020, "LO", b"\xffBAD"), (0x00081030, "LO", b"\xfe\xff?")):
            if tag in rows[0]:
                rows[0][tag] = DataElement(tag, vr, text)  # bytes are written as they are
    if rows and "duplicate" in bad:
        rows.insert(1, response(ident, matches[0]))
    if "missing_uid" in bad or "wrong_date" in bad:
        da = q.dates[0] if q.dates and q.dates[0] != "00000000" else "20000101"
        us = q.times[0] if q.times else 12 * 3_600_000_000
        tm = f"{us // 3_600_000_000:02d}{us // 60_000_000 % 60:02d}{us // 1_000_000 % 60:02d}"
        extra = {
            "study_date": da,
            "study_time": tm,
            "patient_id": "SIM-ODD",
            "accession": "",
            "description": "simscp injected row",
            "charset": UTF8,
        }
        if "missing_uid" in bad:
            rows.append(response(ident, {**extra, "study_uid": None}))
        if "wrong_date" in bad and q.dates and q.dates[1] != "99999999":
            d = q.dates[1]
            wrong = date(int(d[:4]), int(d[4:6]), int(d[6:])) + timedelta(days=1)
            uid = "2.25." + str(int(hashlib.sha256(d.encode()).hexdigest()[:30], 16))
            rows.append(
                response(ident, {**extra, "study_uid": uid, "study_date": wrong.strftime("%Y%m%d")})
            )
    return rows, final


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
            snapshot = json.loads(json.dumps(d))
            if self.path:  # atomic: readers never see a half-written file
                fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(self.path)))
                with os.fdopen(fd, "w") as fh:
                    json.dump(d, fh, indent=1)
                os.replace(tmp, self.path)
        return snapshot


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
        self.aet, self.stats_path = aet, stats_path
        self.stats = Stats(None)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._active = 0
        self._seen = 0
        self._server: Any = None

    def start(self, port: int = 0, host: str = "127.0.0.1") -> int:
        """Listen on ``host:port`` (0 = any free port) and return the port."""
        _config.LOG_REQUEST_IDENTIFIERS = _config.LOG_RESPONSE_IDENTIFIERS = False
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
        assoc, cfg = event.assoc, self.cfg
        ident = event.identifier
        self.stats.change(
            total_queries=1,
            study_date_queries=[str(ident.get("StudyDate", "") or "")],
            study_time_queries=[str(ident.get("StudyTime", "") or "")],
        )
        if cfg.get("hang"):
            while self._alive(assoc):
                time.sleep(0.05)
            return
        if cfg.get("delay_ms") and not self._wait(assoc, cfg["delay_ms"] / 1000):
            return
        try:
            rows, final = plan(cfg, self.index, ident)
        except ValueError as exc:
            LOGGER.warning("cannot process identifier: %s", exc)
            yield 0xC000, None  # Unable to process
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
        if event.is_cancelled:
            self.stats.change(cancelled_queries=1)
            final = 0xFE00
        yield final, None


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
