"""Issue 3 on real servers: every study exactly once, or the exact spans that were not covered.

Each case runs the real pipeline (one query worker with concurrency 2, the aggregator, the
producer with ``--wait``) against Orthanc, dcmqrscp or pynetdicom's qrscp, and checks the exact
set of Study UIDs in the CSV, that none repeats, and the coverage report's fields.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import date
from pathlib import Path

import pytest

from demo.servers import DcmqrscpServer, OrthancServer, QrscpServer
from demo.studies import LATIN1, UTF8, Study, edge_time_studies, generate_studies
from tests.expect import expected_rows, read_csv

DAY, ISO = "20240105", "2024-01-05"
EDGE = edge_time_studies(DAY)
UNTIMED = {s["study_uid"] for s in EDGE if not s["study_time"]}  # empty and absent
ORDINARY = generate_studies(date(2024, 1, 5), days=1, per_day=12, seed=31)
EDGE_DAY = EDGE + ORDINARY

# Orthanc with LimitFindResults=100: 250 studies in 10:00-10:59 (distinct times, 14 s apart)
# plus the edge studies on one day; 250 studies sharing the second 10:30:00 on another.
CAP = 100
HOUR_DAY, HOUR_ISO = "20240110", "2024-01-10"
SECOND_DAY, SECOND_ISO = "20240111", "2024-01-11"


def _crowd(day: str, tag: int, times: list[str]) -> list[Study]:
    return [
        {"study_uid": f"1.2.826.0.1.3680043.10.543.7.{tag}.{i}", "patient_id": f"C{tag}-{i}",
         "patient_name": "Crowd^Test", "accession": f"C{day}{i:03d}", "study_date": day,
         "study_time": tm, "description": None, "charset": UTF8, "instances": 1}
        for i, tm in enumerate(times, start=1)
    ]


CROWDED_HOUR = _crowd(HOUR_DAY, 1, [
    f"10{s // 60:02d}{s % 60:02d}" for s in range(0, 250 * 14, 14)
]) + edge_time_studies(HOUR_DAY)
CROWDED_SECOND = _crowd(SECOND_DAY, 2, ["103000"] * 250)

# Non-ASCII Patient ID, Accession Number and Study Description, stored in both charsets.
CHARSET_DAY, CHARSET_ISO = "20240107", "2024-01-07"
CHARSETS = [
    {"study_uid": f"1.2.826.0.1.3680043.10.543.8.{i}", "patient_id": pid,
     "patient_name": name, "accession": acc, "study_date": CHARSET_DAY,
     "study_time": f"{9 + i:02d}0000", "description": desc, "charset": cs, "instances": 1}
    for i, (cs, pid, name, acc, desc) in enumerate([
        (LATIN1, "PÄT-1", "Müller^Jürgen", "ÄÖÜ1", "Schädel nativ ÄÖÜß"),
        (LATIN1, "ÅSA-2", "Åsa^Ødegård", "ÉÈ2", "Thorax, größer"),
        (UTF8, "ŁÓDŹ-3", "Nowak^Łucja", "ŻÓŁ3", "Głowa – TK"),
        (UTF8, "ΑΒΓ-4", "Παπαδόπουλος^Νίκος", "ΔΕ4", "Θώρακας ακτινογραφία"),
        (UTF8, "ЖЗ-5", "Иванов^Иван", "ЮЯ5", "МРТ головного мозга"),
    ], start=1)
]


def uids(studies: list[Study]) -> set[str]:
    return {s["study_uid"] for s in studies}


def run(cluster, day_iso: str, *extra: str):  # type: ignore[no-untyped-def]
    cluster.worker(concurrency=2)
    cluster.aggregator()
    return cluster.producer("--start", day_iso, "--end", day_iso, "--all-studies", "--wait",
                            *extra)


def out_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    out = tmp_path / "out"
    return (out / "dicom_query_results.csv", out / "dicom_query_results.incomplete.csv",
            out / "dicom_query_results.coverage.json")


def csv_uids(path: Path) -> list[str]:
    return [r[4] for r in read_csv(path)]


def exactly_once(path: Path, expected: set[str]) -> list[list[str]]:
    """The CSV at ``path`` holds every expected Study UID once, and nothing else."""
    rows = read_csv(path)
    counts = Counter(r[4] for r in rows)
    assert not [u for u, n in counts.items() if n > 1], "a study is listed twice"
    assert set(counts) - expected == set(), "studies that were not stored"
    assert expected - set(counts) == set(), "stored studies missing from the CSV"
    return rows


def coverage(tmp_path: Path) -> dict:
    return json.loads(out_files(tmp_path)[2].read_text())


def day_entry(report: dict, iso: str) -> dict:
    return next(d for d in report["days"] if d["date"] == iso)


# Orthanc -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    with OrthancServer(tmp_path_factory.mktemp("orthanc"), encoding="Utf8") as server:
        server.store(EDGE_DAY + CHARSETS)
        yield server


def test_orthanc_edge_times_exactly_once(orthanc, make_cluster, tmp_path: Path) -> None:
    done = run(make_cluster(orthanc), ISO)
    assert done.returncode == 0, done.stdout + done.stderr
    csv_path, incomplete, _ = out_files(tmp_path)
    rows = exactly_once(csv_path, uids(EDGE_DAY))
    assert rows == expected_rows(EDGE_DAY, all_studies=True)  # stored StudyTime, unchanged
    assert not incomplete.exists()
    report = coverage(tmp_path)
    assert report["verdict"] == "complete"
    assert report["anomalies"]["found_only_by_day_sweep"] == len(UNTIMED) == 2
    assert day_entry(report, ISO) == {
        "date": ISO, "studies": len(EDGE_DAY), "found_only_by_day_sweep": 2,
        "reconciliation": "reconciled",
    }
    assert report["totals"]["days_not_reconciled"] == 0
    assert {w["status"] for w in report["windows"]} == {"done"}
    assert len(report["windows"]) == 24 and report["uncovered"] == []


def test_orthanc_without_day_sweep_misses_untimed(orthanc, make_cluster, tmp_path) -> None:
    done = run(make_cluster(orthanc, DISCOVERY_DAY_SWEEP="false"), ISO)
    assert done.returncode == 0, done.stdout + done.stderr
    exactly_once(out_files(tmp_path)[0], uids(EDGE_DAY) - UNTIMED)
    report = coverage(tmp_path)
    assert report["day_sweeps"] == [] and report["totals"]["day_sweeps"] == 0
    assert day_entry(report, ISO)["reconciliation"] == "off"
    assert "found_only_by_day_sweep" not in report["anomalies"]
    assert any("DISCOVERY_DAY_SWEEP=false" in r for r in report["reasons"])
    assert "day sweep off (DISCOVERY_DAY_SWEEP=false)" in done.stdout


def test_orthanc_charsets_in_utf8_csv(orthanc, make_cluster, tmp_path: Path) -> None:
    done = run(make_cluster(orthanc), CHARSET_ISO)
    assert done.returncode == 0, done.stdout + done.stderr
    csv_path = out_files(tmp_path)[0]
    exactly_once(csv_path, uids(CHARSETS))
    assert read_csv(csv_path) == expected_rows(CHARSETS, all_studies=True)
    raw = csv_path.read_bytes()
    assert "Schädel nativ ÄÖÜß".encode() in raw and "МРТ головного мозга".encode() in raw
    assert "undecodable" not in coverage(tmp_path)["anomalies"]


# Orthanc with LimitFindResults -------------------------------------------------------------
@pytest.fixture(scope="module")
def orthanc_capped(tmp_path_factory: pytest.TempPathFactory):
    with OrthancServer(tmp_path_factory.mktemp("orthanc-capped"), encoding="Utf8",
                       limit_find_results=CAP) as server:
        server.store(CROWDED_HOUR + CROWDED_SECOND)
        yield server


def test_orthanc_limit_splits_crowded_hour(orthanc_capped, make_cluster, tmp_path) -> None:
    cluster = make_cluster(orthanc_capped, DISCOVERY_PACS_MAX_RESULTS=str(CAP))
    done = run(cluster, HOUR_ISO)
    csv_path, incomplete, _ = out_files(tmp_path)
    report = coverage(tmp_path)
    # Every timed study comes from a window that was split until it fitted.
    windows = {w["key"]: w for w in report["windows"]}
    assert windows[f"{HOUR_DAY}/100000-110000"]["status"] == "split"
    assert windows[f"{HOUR_DAY}/100000-110000"]["final_status"] == "0xFE00"
    assert {w["status"] for w in report["windows"]} == {"done", "split"}
    assert all(w["rows"] < CAP for w in report["windows"] if w["status"] == "done")
    assert report["totals"]["windows_split"] >= 1
    # The day sweep (267 studies) is truncated too: the day cannot be reconciled.
    sweep = report["day_sweeps"][0]
    assert sweep["status"] == "incomplete" and sweep["rows"] == CAP
    assert day_entry(report, HOUR_ISO)["reconciliation"].startswith("not reconciled")
    assert report["totals"]["days_not_reconciled"] == 1
    assert [u["range"] for u in report["uncovered"]] == [f"{HOUR_ISO} (whole day, date-only)"]
    assert report["verdict"] == "incomplete" and done.returncode == 3, done.stdout
    assert "days not reconciled by the day sweep: 1" in done.stdout
    assert not csv_path.exists()
    # Exactly once all the same: every timed study; an untimed one only if the sweep's 100
    # answers happened to include it.
    timed = uids(CROWDED_HOUR) - {s["study_uid"] for s in CROWDED_HOUR if not s["study_time"]}
    got = csv_uids(incomplete)
    assert len(got) == len(set(got))
    assert timed <= set(got) <= uids(CROWDED_HOUR)


def test_orthanc_limit_one_second_floor(orthanc_capped, make_cluster, tmp_path) -> None:
    cluster = make_cluster(orthanc_capped, DISCOVERY_PACS_MAX_RESULTS=str(CAP))
    done = run(cluster, SECOND_ISO)
    assert done.returncode == 3, done.stdout + done.stderr
    csv_path, incomplete, _ = out_files(tmp_path)
    assert not csv_path.exists() and incomplete.exists()
    report = coverage(tmp_path)
    assert report["verdict"] == "incomplete"
    floor = f"{SECOND_ISO} 10:30:00-10:30:00.999999"
    assert {u["range"] for u in report["uncovered"]} == {
        floor, f"{SECOND_ISO} (whole day, date-only)"}
    leaf = next(w for w in report["windows"] if w["range"] == floor)
    assert leaf["status"] == "incomplete" and leaf["final_status"] == "0xFE00"
    assert leaf["rows"] == CAP
    assert f"not covered: {floor}" in done.stdout
    got = csv_uids(incomplete)
    assert len(got) == len(set(got)) and CAP <= len(got) and set(got) <= uids(CROWDED_SECOND)


# dcmqrscp ----------------------------------------------------------------------------------
def test_dcmqrscp_edge_times_exactly_once(make_cluster, tmp_path: Path) -> None:
    with DcmqrscpServer(tmp_path / "dcmqrscp") as server:
        server.store(EDGE_DAY)
        done = run(make_cluster(server), ISO)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = exactly_once(out_files(tmp_path)[0], uids(EDGE_DAY))
    assert rows == expected_rows(EDGE_DAY, all_studies=True)
    report = coverage(tmp_path)
    assert report["anomalies"]["found_only_by_day_sweep"] == 2
    assert day_entry(report, ISO)["reconciliation"] == "reconciled"


# pynetdicom qrscp --------------------------------------------------------------------------
QRSCP_DAY = [dict(s, instances=3 if i % 4 == 0 else 1) for i, s in enumerate(EDGE_DAY)]
REPEATS = sum(s["instances"] - 1 for s in QRSCP_DAY)


@pytest.fixture(scope="module")
def qrscp(tmp_path_factory: pytest.TempPathFactory):
    with QrscpServer(tmp_path_factory.mktemp("qrscp")) as server:
        server.store(QRSCP_DAY)
        yield server


def test_qrscp_instances_counted_once(qrscp, make_cluster, tmp_path: Path) -> None:
    done = run(make_cluster(qrscp), ISO)
    # An inventory does not depend on the description: complete, with a note saying why the
    # Study Description column is empty.
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the PACS does not return Study Description" in done.stdout
    report = coverage(tmp_path)
    assert report["verdict"] == "complete"
    rows = exactly_once(out_files(tmp_path)[0], uids(QRSCP_DAY))
    assert [r[:5] for r in rows] == [r[:5] for r in expected_rows(QRSCP_DAY, all_studies=True)]
    # each extra instance answers once in its window and once in the day sweep
    timed_repeats = sum(s["instances"] - 1 for s in QRSCP_DAY if s["study_time"])
    assert report["anomalies"]["repeated"] == REPEATS + timed_repeats
    assert report["anomalies"]["found_only_by_day_sweep"] == 2
    assert {r[5] for r in rows} == {""}


def test_qrscp_no_description_exits_4(qrscp, make_cluster, tmp_path: Path) -> None:
    cluster = make_cluster(qrscp)
    cluster.worker(concurrency=2)
    cluster.aggregator()
    done = cluster.producer("--start", ISO, "--end", ISO, "--wait")
    assert done.returncode == 4, done.stdout + done.stderr
    assert "NO DESCRIPTION" in done.stdout
    assert "does not return" in done.stdout or "never returned" in done.stdout
    report = coverage(tmp_path)
    assert report["verdict"] == "no_description"
    assert report["totals"]["description_returned"] == 0
