"""discovery.studies: identifiers as they come off the wire (raw elements, explicit and implicit
VR) -> records; character sets; anomalies; hostile answers never raise."""

from __future__ import annotations

import io
import struct
import warnings
from datetime import date

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pynetdicom.dsutils import decode, encode

from discovery.studies import description_state, lacks_description, parse_identifier, parse_rows
from discovery.windows import Window

WINDOW = Window(date(2024, 1, 1), 36000, 39600)
CHARSET, DESCRIPTION, UID = 0x00080005, 0x00081030, 0x0020000D
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"}


def base(**changes: bytes | None) -> dict[int, tuple[str, bytes]]:
    """A study's elements as (VR, raw value); ``None`` drops one."""
    elems = {
        0x00080020: ("DA", b"20240101"), 0x00080030: ("TM", b"103000"),
        0x00080050: ("SH", b"ACC1"), 0x00100020: ("LO", b"PID1"),
        UID: ("UI", b"1.2.826.0.1.3680043.2.1143.1\x00"),
    }
    names = {"date": 0x00080020, "time": 0x00080030, "accession": 0x00080050,
             "patient_id": 0x00100020, "uid": UID, "charset": CHARSET,
             "description": DESCRIPTION}
    vrs = {CHARSET: "CS", DESCRIPTION: "LO"}
    for name, value in changes.items():
        tag = names[name]
        if value is None:
            elems.pop(tag, None)
        else:
            elems[tag] = (elems.get(tag, (vrs.get(tag, "LO"),))[0], value)
    return elems


def wire(elems: dict[int, tuple[str, bytes]], implicit: bool = False) -> Dataset:
    """Encode little-endian by hand and read back with pynetdicom, as a C-FIND SCU does: every
    element stays a RawDataElement (VR ``None`` for implicit VR)."""
    out = bytearray()
    for tag in sorted(elems):
        vr, value = elems[tag]
        if len(value) % 2:
            value += b" "
        group, elem = tag >> 16, tag & 0xFFFF
        if implicit:
            out += struct.pack("<HHI", group, elem, len(value))
        elif vr in _LONG_VRS:
            out += struct.pack("<HH2sHI", group, elem, vr.encode(), 0, len(value))
        else:
            out += struct.pack("<HH2sH", group, elem, vr.encode(), len(value))
        out += value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about odd charsets while reading
        ds = decode(io.BytesIO(bytes(out)), implicit, True)
    assert ds is not None
    for tag, (_, value) in elems.items():
        if value:  # pydicom converts empty values while reading
            assert isinstance(ds.get_item(tag), RawDataElement)
    return ds


def round_trip(ds: Dataset, implicit: bool) -> Dataset:
    """pydicom encodes (with the dataset's character set), pynetdicom decodes: raw elements."""
    raw = encode(ds, implicit, True)
    assert raw is not None
    out = decode(io.BytesIO(raw), implicit, True)
    assert isinstance(out.get_item(DESCRIPTION), RawDataElement)
    return out


def study(charset: str | list[str], description: str, implicit: bool) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.StudyDate, ds.StudyTime = "20240101", "103000"
    ds.AccessionNumber, ds.PatientID = "ACC1", "PID1"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.StudyDescription = description
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう" if "87" in str(charset) else "Doe^J"
    return round_trip(ds, implicit)


both = pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])


@both
@pytest.mark.parametrize(("charset", "text"), [
    ("ISO_IR 100", "Thorax pédiatrique, côté gauche"),
    ("ISO_IR 192", "Schädel 头部 CT ☢"),
    (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    (["ISO 2022 IR 6", "ISO 2022 IR 87"], "頭部 CT 単純"),
])
def test_charsets_from_the_wire(charset: str | list[str], text: str, implicit: bool) -> None:
    ds = study(charset, text, implicit)
    raw = ds.get_item(DESCRIPTION).value
    if "87" in str(charset):
        assert b"\x1b$B" in raw  # ISO 2022 escape sequence to JIS X 0208 really on the wire
    record, anomalies = parse_identifier(ds, WINDOW)
    assert anomalies == []
    assert record == {
        "accession": "ACC1", "date": "20240101", "time": "103000", "patient_id": "PID1",
        "uid": "1.2.3.4", "description": text, "desc": "present",
    }


@both
def test_latin1_bytes_are_not_utf8(implicit: bool) -> None:
    ds = wire(base(charset=b"ISO_IR 100", description="Crâne".encode("latin-1")), implicit)
    record, anomalies = parse_identifier(ds, WINDOW)
    assert (record["description"], anomalies) == ("Crâne", [])  # type: ignore[index]


@both
def test_default_charset_is_ascii_repertoire(implicit: bool) -> None:
    ds = wire(base(description=b"CT HEAD"), implicit)
    record, anomalies = parse_identifier(ds, WINDOW)
    assert (record["description"], anomalies) == ("CT HEAD", [])  # type: ignore[index]


@both
@pytest.mark.parametrize(("charset", "value"), [
    (b"ISO_IR 192", b"CT \xff\xfe HEAD"),  # not UTF-8
    (b"ISO_IR 192", b"\xe5\xa4"),  # truncated multi-byte sequence
    (b"\\ISO 2022 IR 87", b"\x1b$B\x7f\x7f\x1b(B"),  # not JIS X 0208
])
def test_undecodable_kept_with_replacement(charset: bytes, value: bytes, implicit: bool) -> None:
    record, anomalies = parse_identifier(wire(base(charset=charset, description=value),
                                              implicit), WINDOW)
    assert anomalies == ["undecodable"]
    assert record is not None
    if b"\x1b" not in value:  # pydicom keeps a bad ISO 2022 run as it came
        assert "\ufffd" in record["description"]
    assert record["uid"] == "1.2.826.0.1.3680043.2.1143.1"


@both
def test_unknown_charset_counted_undecodable(implicit: bool) -> None:
    record, anomalies = parse_identifier(
        wire(base(charset=b"ISO_IR 999", description=b"CT"), implicit), WINDOW)
    assert anomalies == ["undecodable"] and record is not None


@both
@pytest.mark.parametrize("uid", [None, b"", b"  ", b"\x00\x00"])
def test_missing_uid_dropped(uid: bytes | None, implicit: bool) -> None:
    record, anomalies = parse_identifier(wire(base(uid=uid), implicit), WINDOW)
    assert (record, anomalies) == (None, ["missing_uid"])


@both
def test_outside_window_kept_and_counted(implicit: bool) -> None:
    record, anomalies = parse_identifier(wire(base(date=b"20240102"), implicit), WINDOW)
    assert anomalies == ["outside_window"]
    assert record is not None and record["date"] == "20240102"
    assert parse_identifier(wire(base(date=b"20240102"), implicit), None)[1] == []


@both
@pytest.mark.parametrize(("value", "text", "state"), [
    (None, "", "absent"),
    (b"", "", "blank"),
    (b"    ", "", "blank"),
    (b" \\  ", "\\", "blank"),
    (b"CT HEAD ", "CT HEAD", "present"),
    (b"  CT HEAD\x00", "CT HEAD", "present"),
    (b"CT HEAD \\CHEST ", "CT HEAD\\CHEST", "present"),
    (b"A\\\\B", "A\\\\B", "present"),
])
def test_description_state_and_padding(value: bytes | None, text: str, state: str,
                                       implicit: bool) -> None:
    record, anomalies = parse_identifier(wire(base(description=value), implicit), WINDOW)
    assert anomalies == [] and record is not None
    assert (record["description"], record["desc"]) == (text, state)
    assert lacks_description(state) == (state != "present")


def test_converted_elements_match_raw_ones() -> None:
    """Values pydicom already converted (a MultiValue) give what raw bytes give."""
    ds = Dataset()
    ds.StudyInstanceUID = "1.2.3"
    ds.StudyDate = "20240101"
    ds.StudyDescription = ["CT HEAD ", "CHEST"]
    record, _ = parse_identifier(ds, WINDOW)
    raw, _ = parse_identifier(wire(base(description=b"CT HEAD \\CHEST")), WINDOW)
    assert record is not None and raw is not None
    assert record["description"] == raw["description"] == "CT HEAD\\CHEST"
    assert record["time"] == record["accession"] == record["patient_id"] == ""


def test_description_state() -> None:
    assert [description_state(v) for v in (None, "", "   ", "\\", "x", " \\x")] == [
        "absent", "blank", "blank", "blank", "present", "present"]


def test_parse_rows_dedups_and_counts() -> None:
    a = wire(base())
    b = wire(base(description=b"other answer"))  # same UID again (qrscp answers per instance)
    c = wire(base(uid=b"1.2.3\x00", date=b"20231231"))
    d = wire(base(uid=None))
    records, counts = parse_rows([a, b, c, d], WINDOW)
    assert [r["uid"] for r in records] == ["1.2.826.0.1.3680043.2.1143.1", "1.2.3"]
    assert records[0]["desc"] == "absent"  # first answer wins
    assert counts == {"repeated": 1, "outside_window": 1, "missing_uid": 1}


def test_parse_rows_prefers_a_clean_copy_of_an_undecodable_answer() -> None:
    bad = wire(base(charset=b"ISO_IR 192", patient_id=b"\xffBAD"))
    good = wire(base(charset=b"ISO_IR 192"))
    records, counts = parse_rows([bad, good, bad], WINDOW)
    assert [r["patient_id"] for r in records] == ["PID1"]
    assert counts == {"undecodable": 2, "repeated": 2}
    records, _ = parse_rows([bad], WINDOW)
    assert records[0]["patient_id"] == "\ufffdBAD"  # no clean copy: kept as it decoded


# --- hostile answers ----------------------------------------------------------------------

_VRS = ["AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD",
        "OF", "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI",
        "UL", "UN", "UR", "US", "UT", "UV", "XX", None]
_TERMS = ["", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 6", "ISO 2022 IR 87",
          "ISO 2022 IR 159", "ISO 2022 IR 149", "ISO 2022 IR 58", "GB18030", "GBK",
          "ISO_IR 13", "ISO 2022 IR 13", "ISO_IR 144", "ISO_IR 127", "ISO_IR 138", "latin_1",
          "utf-8", "ISO_IR 100 ", "\x00"]
_TAGS = [0x00080005, 0x00080020, 0x00080030, 0x00080050, 0x00081030, 0x00100020, 0x0020000D,
         0x00100010, 0x00080052, 0x7FE00010]

charset_values = st.lists(st.sampled_from(_TERMS) | st.text(max_size=20), max_size=4).map(
    lambda terms: "\\".join(terms).encode("utf-8", "surrogatepass"))
values = st.binary(max_size=64) | st.sampled_from(
    [b"\x1b$B", b"\x1b(B", b"\x1b$)C", b"\x1b", b"\\", b"\x00", b"\xff" * 3, b"\x1b$B\x30"])
elements = st.tuples(
    st.sampled_from(_TAGS) | st.integers(0, 0xFFFFFFFF),
    st.sampled_from(_VRS),
    values,
    st.booleans(),
)


@st.composite
def identifiers(draw: st.DrawFn) -> Dataset:
    ds = Dataset()
    for tag, vr, value, implicit in draw(st.lists(elements, max_size=10)):
        if tag == CHARSET and draw(st.booleans()):
            value = draw(charset_values)
        length = draw(st.sampled_from([len(value), 0xFFFFFFFF, 3]))
        ds[Tag(tag)] = RawDataElement(Tag(tag), vr, length, value, 0, implicit, True)
    return ds


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(identifiers(), max_size=5), st.booleans())
def test_hostile_identifiers_never_raise(rows: list[Dataset], with_window: bool) -> None:
    records, counts = parse_rows(rows, WINDOW if with_window else None)
    for r in records:
        assert set(r) == {"accession", "date", "time", "patient_id", "uid", "description",
                          "desc"}
        assert all(isinstance(v, str) for v in r.values()) and r["uid"]
    assert len({r["uid"] for r in records}) == len(records)
    assert set(counts) <= {"missing_uid", "outside_window", "undecodable", "repeated"}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_TAGS), st.sampled_from([v for v in _VRS if v]),
                          values), max_size=8, unique_by=lambda e: e[0]),
       st.booleans(), charset_values)
def test_hostile_wire_identifiers_never_raise(elems: list, implicit: bool,
                                              charset: bytes) -> None:
    """The same through a real byte stream, where it decodes at all."""
    table = {tag: (vr if vr != "XX" else "UN", v) for tag, vr, v in elems}
    table.setdefault(CHARSET, ("CS", charset))
    try:
        ds = wire(table, implicit)
    except Exception:  # pynetdicom would refuse this stream before we ever saw it
        return
    parse_rows([ds], WINDOW)
