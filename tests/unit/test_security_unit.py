"""Issue 7, pure parts: hostile C-FIND answers never crash a worker or the aggregator;
secrets are masked; the broker's TLS options."""

from __future__ import annotations

import json
import ssl
import struct
import uuid
from datetime import date
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pynetdicom.dsutils import decode

from discovery.ledger import Ledger
from discovery.settings import load_settings, mask_secrets, mask_url
from discovery.studies import FIELDS, parse_rows
from discovery.windows import Window

WINDOW = Window(date(2024, 1, 1), 36000, 39600)
KEY = WINDOW.key
# The six attributes, Specific Character Set, and neighbours of them.
TAGS = [*FIELDS.values(), 0x00080005, 0x00100010, 0x00080052, 0x00080051, 0x7FE00010]
VRS = ["AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OD",
       "OF", "OL", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL",
       "UN", "UR", "US", "UT", "UV"]
LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
CHARSETS = ["", "ISO_IR 100", "ISO_IR 192", "ISO_IR 13", "ISO 2022 IR 87", "\\ISO 2022 IR 87",
            "ISO 2022 IR 6\\ISO 2022 IR 100", "GB18030", "GBK", "ISO_IR 144", "ISO_IR 999",
            "utf-8", "\\\\", "ISO_IR 192\\ISO_IR 100"]
TEXTS = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
CODECS = ["utf-8", "latin-1", "iso2022_jp", "gb18030", "cp1251", "utf-16-le"]


@st.composite
def raw_value(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "text", "charset"]))
    if kind == "bytes":
        return draw(st.binary(max_size=80))
    if kind == "charset":
        return draw(st.sampled_from(CHARSETS)).encode("ascii")
    text = draw(TEXTS)
    return text.encode(draw(st.sampled_from(CODECS)), errors="replace")


@st.composite
def identifier(draw: st.DrawFn) -> bytes:
    """An identifier as it comes off the wire (explicit VR little endian), with arbitrary
    tags, VRs, lengths and character sets."""
    elements = draw(st.dictionaries(
        st.one_of(st.sampled_from(TAGS), st.integers(0x00080000, 0x7FDFFFFF)),
        st.tuples(st.sampled_from(VRS), raw_value()), max_size=10))
    out = BytesIO()
    for tag in sorted(elements):
        vr, value = elements[tag]
        if len(value) % 2:
            value += b" "
        out.write(struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii"))
        if vr in LONG_VRS:
            out.write(struct.pack("<HL", 0, len(value)))
        else:
            out.write(struct.pack("<H", len(value)))
        out.write(value)
    return out.getvalue()


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Ledger:
    return Ledger(tmp_path_factory.mktemp("state") / "ledger.sqlite3")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(identifier(), max_size=6))
def test_hostile_identifiers_never_crash_worker_or_aggregator(ledger: Ledger,
                                                              encoded: list[bytes]) -> None:
    rows = []
    for raw in encoded:
        try:  # what pynetdicom does with the bytes; if it cannot, we count "undecodable"
            rows.append(decode(BytesIO(raw), False, True))
        except Exception:
            continue
    studies, anomalies = parse_rows(rows, WINDOW)
    for record in studies:
        assert set(record) == {*FIELDS, "desc"}
        assert all(isinstance(v, str) for v in record.values())
    outcome = {"state": "complete", "status": 0, "rows": len(rows), "studies": studies,
               "anomalies": dict(anomalies), "error": None, "seconds": 0.1}
    # The outcome travels as JSON (the results task), then the aggregator records it.
    outcome = json.loads(json.dumps(outcome))
    run_id = uuid.uuid4().hex
    ledger.create_run(run_id, {"start": "2024-01-01T10:00:00"}, [WINDOW])
    recorded = ledger.record(run_id, KEY, outcome, final=True)
    assert recorded.accepted and recorded.finished
    rows_out = list(ledger.studies(run_id, all_studies=True))
    assert sorted(r[4] for r in rows_out) == sorted(s["uid"] for s in studies)


def test_mask_url_and_free_text() -> None:
    assert mask_url("redis://:pw@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert mask_url("rediss://user:p%40ss@host:6380/1") == "rediss://user:***@host:6380/1"
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    text = "Error connecting to redis://:s3cret@h:1/0 and rediss://u:x@y@h:2/0."
    masked = mask_secrets(text)
    assert "s3cret" not in masked and "redis://:***@h:1/0" in masked


def test_broker_tls_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    monkeypatch.setenv("DISCOVERY_BROKER_URL", "redis://:pw@h:6379/0")
    monkeypatch.setenv("DISCOVERY_BROKER_CA_FILE", str(ca))
    assert load_settings().broker_ssl() == {}
    monkeypatch.setenv("DISCOVERY_BROKER_URL", "rediss://:pw@h:6380/0")
    assert load_settings().broker_ssl() == {"ssl_cert_reqs": ssl.CERT_REQUIRED,
                                            "ssl_ca_certs": str(ca)}
    # Empty means "none" (as in .env.example): the system's CAs, still verified.
    monkeypatch.setenv("DISCOVERY_BROKER_CA_FILE", "")
    assert load_settings().broker_ssl() == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    monkeypatch.setenv("DISCOVERY_BROKER_CERT_FILE", str(ca))
    with pytest.raises(Exception, match="DISCOVERY_BROKER_CERT_FILE and "
                                        "DISCOVERY_BROKER_KEY_FILE go together"):
        load_settings()


def test_empty_tls_file_settings_mean_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCOVERY_TLS_ENABLED", "true")
    for name in ("TLS_CA_FILE", "TLS_CERT_FILE", "TLS_KEY_FILE"):
        monkeypatch.setenv(f"DISCOVERY_{name}", "")
    s = load_settings()
    assert (s.tls_ca_file, s.tls_cert_file, s.tls_key_file) == (None, None, None)
