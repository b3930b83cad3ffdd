"""The simulated PACS's pure part: TM and DA parsing, synthetic studies, matching a STUDY-level
C-FIND identifier against studies held in memory, and building the answers (including the
malformed ones a fault case asks for). The network part is :mod:`demo.simscp`.
"""

from __future__ import annotations

import hashlib
import random
import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

UTF8 = "ISO_IR 192"
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


def _range(value: str) -> tuple[str, str] | None:
    """A DA or TM matching key as its (low, high) texts (a single value is both; an open end
    is ``""``); None when universal."""
    value = (value or "").strip()
    if value in ("", "*"):
        return None
    low, sep, high = value.partition("-")
    return (low, high) if sep else (low, low)


def date_bounds(value: str) -> tuple[str, str] | None:
    """StudyDate query -> inclusive (low, high) YYYYMMDD strings; None when universal."""
    bounds = _range(value)
    if bounds is None:
        return None
    low, high = bounds
    for part in (low, high):
        if part and not (len(part) == 8 and part.isdigit()):
            raise ValueError(f"not a DICOM DA value or range: {value!r}")
    return low or "00000000", high or "99999999"


def time_bounds(value: str) -> tuple[int, int] | None:
    """StudyTime query -> inclusive (low, high) microseconds; None when universal."""
    bounds = _range(value)
    if bounds is None:
        return None
    low, high = bounds
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


class EncodedAnswer(Dataset):
    """An answer kept for every query that asks the same keys of its study, with its encoded
    bytes per transfer syntax (``encoded``), filled by the simulated PACS's encoder."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "encoded", {})


def answers(ident: Dataset, matches: list[dict[str, Any]],
             cache: dict[tuple, EncodedAnswer]) -> list[Dataset]:
    """``response(ident, st)`` for each match, built once per study and set of requested keys
    (a benchmark's PACS should spend its CPU on the network, not on building the same answer
    again): the cached answers are never changed afterwards."""
    keys = tuple((e.tag, e.VR) for e in ident)
    rows: list[Dataset] = []
    for st in matches:
        key = (id(st), keys)
        answer = cache.get(key)
        if answer is None:
            answer = cache[key] = EncodedAnswer(response(ident, st))
        rows.append(answer)
    return rows


def plan(cfg: dict[str, Any], index: StudyIndex, ident: Dataset,
         cache: dict[tuple, EncodedAnswer] | None = None) -> tuple[list[Dataset], int]:
    """The pending identifiers and the final status for one C-FIND (before cancel/abort).
    With ``cache`` (and no ``malformed`` rows, which change answers) answers are reused."""
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
    bad = set(cfg.get("malformed") or ())
    if cache is not None and not bad:
        return answers(ident, matches, cache), final
    rows = [response(ident, st) for st in matches]
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
