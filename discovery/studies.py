"""Pure: a C-FIND response identifier -> a plain study record; description state; anomalies.

A record is a plain dict (JSON-safe, so it can travel in a Celery message):
``uid, accession, date, time, patient_id, description, desc`` where ``desc`` is one of
``present`` (non-blank), ``blank`` (empty or only spaces) or ``absent`` (the PACS did not
return the attribute at all).

Text is decoded with the identifier's Specific Character Set (0008,0005), including ISO 2022
code extensions (PS3.5 6.1.2.5). Values that cannot be decoded are kept with U+FFFD
replacement characters and counted as ``undecodable``.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

from pydicom import Dataset
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from discovery.windows import Window

# (0008,0005) Specific Character Set and the six columns' attributes.
CHARSET = Tag(0x0008, 0x0005)
FIELDS: dict[str, int] = {
    "accession": Tag(0x0008, 0x0050),  # SH  Accession Number
    "date": Tag(0x0008, 0x0020),  # DA  Study Date
    "time": Tag(0x0008, 0x0030),  # TM  Study Time
    "patient_id": Tag(0x0010, 0x0020),  # LO  Patient ID
    "uid": Tag(0x0020, 0x000D),  # UI  Study Instance UID
    "description": Tag(0x0008, 0x1030),  # LO  Study Description
}
# Value representations whose text depends on the character set (PS3.5 6.1.2.3).
_TEXT_VRS = {"SH", "LO", "PN", "ST", "LT", "UT", "UC"}
_DELIMS = {0x5C, 0x09, 0x0A, 0x0C, 0x0D}  # backslash, TAB, LF, FF, CR reset ISO 2022 state

ANOMALIES = ("missing_uid", "outside_window", "undecodable", "repeated", "patient_id_conflict")


def description_state(value: str | None) -> str:
    """``absent`` when the attribute was not returned, ``blank`` when empty or spaces only
    (in every value, for a multi-valued one such as ``" \\ "``)."""
    if value is None:
        return "absent"
    return "blank" if not value.replace("\\", "").strip() else "present"


def lacks_description(state: str) -> bool:
    return state != "present"


def _encodings(ds: Dataset) -> tuple[list[str], bool]:
    elem = ds.get_item(CHARSET)
    if elem is None or not elem.value:
        return ["iso8859"], True
    raw = elem.value
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else "\\".join(
        raw if isinstance(raw, list | tuple) else [str(raw)]
    )
    terms = [t.strip(" \x00") for t in text.split("\\")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            encodings = convert_encodings(terms)
        except (LookupError, ValueError):  # e.g. a NUL inside a term: codecs.lookup refuses it
            return ["iso8859"], False
    return encodings, not caught


def _text(ds: Dataset, tag: int, encodings: list[str]) -> tuple[str | None, bool]:
    """The element's value as text (multiple values joined with a backslash), and whether it
    decoded cleanly. ``None`` when the element is absent."""
    elem = ds.get_item(tag)
    if elem is None:
        return None, True
    value: Any = elem.value
    if value is None:
        return "", True
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
        vr = getattr(elem, "VR", None)
        ok = True
        if vr in _TEXT_VRS or (vr is None and tag in (FIELDS["accession"], FIELDS["patient_id"],
                                                     FIELDS["description"])):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                text = decode_bytes(raw, encodings, _DELIMS)
            ok = not caught
        else:
            text = raw.decode("ascii", "replace")
            ok = "\ufffd" not in text
        return _unpad(text), ok
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(_unpad(str(v)) for v in value), True
    return _unpad(str(value)), True


def _unpad(text: str) -> str:
    """Leading and trailing spaces (and a UI's trailing NUL) are padding in each value of the
    six attributes (PS3.5 6.2), so ``CT HEAD \\CHEST `` is ``CT HEAD\\CHEST``."""
    return "\\".join(v.rstrip(" \x00").lstrip(" ") for v in text.split("\\"))


def parse_identifier(ds: Dataset, window: Window | None = None) -> tuple[dict | None, list[str]]:
    """One response identifier -> (record or ``None``, anomaly kinds found in it).

    A row without a StudyInstanceUID cannot be counted exactly once and is dropped
    (``missing_uid``). A row dated outside the queried window is kept (it is a real study) and
    counted (``outside_window``).
    """
    encodings, charset_ok = _encodings(ds)
    anomalies: list[str] = []
    record: dict[str, Any] = {}
    clean = charset_ok
    for name, tag in FIELDS.items():
        text, ok = _text(ds, tag, encodings)
        clean = clean and ok
        record[name] = text
    if not clean:
        anomalies.append("undecodable")
    if not record["uid"]:
        anomalies.append("missing_uid")
        return None, anomalies
    record["desc"] = description_state(record["description"])
    for name in FIELDS:
        if record[name] is None:
            record[name] = ""
    if window is not None and record["date"] != window.study_date():
        anomalies.append("outside_window")
    return record, anomalies


def parse_rows(rows: list[Dataset], window: Window | None) -> tuple[list[dict], Counter[str]]:
    """All identifiers of one query -> unique records (first answer wins, unless it was
    undecodable and a later one decodes cleanly) and anomaly counts.

    Repeated answers for one StudyInstanceUID (pynetdicom's qrscp answers once per instance
    at STUDY level) are counted as ``repeated``.
    """
    counts: Counter[str] = Counter()
    seen: dict[str, dict] = {}
    garbled: set[str] = set()
    for ds in rows:
        record, found = parse_identifier(ds, window)
        counts.update(found)
        if record is None:
            continue
        uid = record["uid"]
        if uid in seen:
            counts["repeated"] += 1
            if uid in garbled and "undecodable" not in found:
                seen[uid] = record
                garbled.discard(uid)
            continue
        seen[uid] = record
        if "undecodable" in found:
            garbled.add(uid)
    return list(seen.values()), counts
