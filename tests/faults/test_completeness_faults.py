"""Issue 3 against the simulated PACS (demo.simscp): what real servers cannot be made to do.

Refusal (0xA700, 0xC001) and a silent cap (Success with exactly N rows) when a query matches
more than N studies: the window is split until it fits and the CSV holds the exact set.
Malformed rows: the run survives, keeps what can be kept and counts each kind. Each case runs
the real pipeline (a query worker with concurrency 2, the aggregator, ``producer --wait``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from demo.simscp import SimScp
from tests.expect import expected_rows, read_csv

DAY, ISO = "20240201", "2024-02-01"
N = 20
SWEEP = f"{ISO} (whole day, date-only)"


def study(i: int, tm: str | None, **extra: str) -> dict:
    return {"study_uid": f"1.2.826.0.1.3680043.10.543.6.{i}", "study_date": DAY,
            "study_time": tm, "patient_id": f"F{i}", "patient_name": "Fault^Case",
            "accession": f"FA{i}", "description": None, **extra}


# 60 studies 55 s apart in 10:00-10:59 (three times the cap), a few elsewhere, one untimed.
CROWD = [study(i, f"10{i * 55 // 60:02d}{i * 55 % 60:02d}") for i in range(60)]
SPREAD = [study(100, "0300"), study(101, "120000"), study(102, "183000.5"),
          study(103, "235959")]
UNTIMED = [study(104, "")]
TIMED = CROWD + SPREAD
# One StudyInstanceUID stored under two Patient IDs, in two different hours.
CONFLICT_UID = "1.2.826.0.1.3680043.10.543.6.900"
CONFLICT = [dict(study(900, "090000"), patient_id="CONF-A"),
            dict(study(900, "150000"), patient_id="CONF-B")]


@pytest.fixture
def simscp() -> Iterator:
    """``simscp(config)`` -> a running simulated PACS (in this process) with host/port/aet."""
    servers: list[SimScp] = []

    def start(config: dict) -> SimpleNamespace:
        server = SimScp(config)
        servers.append(server)
        return SimpleNamespace(host="127.0.0.1", port=server.start(0), aet=server.aet)

    yield start
    for server in servers:
        server.stop()


def run(cluster):  # type: ignore[no-untyped-def]
    cluster.worker(concurrency=2)
    cluster.aggregator()
    return cluster.producer("--start", ISO, "--end", ISO, "--all-studies", "--wait")


def results(tmp_path: Path) -> tuple[Path, dict]:
    """(the CSV that was written, complete or not; the coverage report)."""
    out = tmp_path / "out"
    report = json.loads((out / "dicom_query_results.coverage.json").read_text())
    complete = out / "dicom_query_results.csv"
    incomplete = out / "dicom_query_results.incomplete.csv"
    assert complete.exists() != incomplete.exists()
    assert complete.exists() == (report["verdict"] == "complete")
    return (complete if complete.exists() else incomplete), report


def exact_uids(path: Path, expected: set[str]) -> list[list[str]]:
    rows = read_csv(path)
    counts = Counter(r[4] for r in rows)
    assert [u for u, n in counts.items() if n > 1] == []
    assert set(counts) == expected
    return rows


def uids(studies: list[dict]) -> set[str]:
    return {s["study_uid"] for s in studies}


@pytest.mark.parametrize(
    ("cap", "env", "first_status"),
    [
        ({"mode": "refuse", "limit": N, "status": 0xA700}, {}, "0xA700"),
        ({"mode": "refuse", "limit": N, "status": 0xC001}, {}, "0xC001"),
        ({"mode": "silent", "limit": N}, {"DISCOVERY_PACS_MAX_RESULTS": str(N)}, "0x0000"),
    ],
    ids=["refused-A700", "refused-C001", "silent-cap"],
)
def test_capped_window_split_until_it_fits(simscp, make_cluster, tmp_path, cap, env,
                                           first_status) -> None:
    pacs = simscp({"studies": TIMED + CONFLICT, "cap": cap})
    done = run(make_cluster(pacs, DISCOVERY_DAY_SWEEP="false", **env))
    assert done.returncode == 0, done.stdout + done.stderr
    path, report = results(tmp_path)
    rows = exact_uids(path, uids(TIMED) | {CONFLICT_UID})
    windows = {w["key"]: w for w in report["windows"]}
    hour = windows[f"{DAY}/100000-110000"]
    assert (hour["status"], hour["final_status"]) == ("split", first_status)
    assert {w["status"] for w in report["windows"]} == {"done", "split"}
    assert all(w["rows"] < N for w in report["windows"] if w["status"] == "done")
    # every split window has its two halves in the report
    children = Counter(w["parent"] for w in report["windows"] if w["parent"])
    assert children == {k: 2 for k, w in windows.items() if w["status"] == "split"}
    # a UID under two Patient IDs: one row, flagged
    assert report["patient_id_conflicts"] == [CONFLICT_UID]
    assert report["anomalies"]["patient_id_conflict"] == 1
    assert next(r[3] for r in rows if r[4] == CONFLICT_UID) in ("CONF-A", "CONF-B")


def test_refused_day_sweep_leaves_the_day_unreconciled(simscp, make_cluster, tmp_path) -> None:
    pacs = simscp({"studies": TIMED + UNTIMED, "cap": {"mode": "refuse", "limit": N}})
    done = run(make_cluster(pacs))
    # The timed studies are all there; the untimed one only a date-only query could find,
    # and the PACS refused it: the day is reported, the run is incomplete.
    assert done.returncode == 3, done.stdout + done.stderr
    path, report = results(tmp_path)
    exact_uids(path, uids(TIMED))
    assert report["day_sweeps"][0]["status"] == "incomplete"
    assert report["day_sweeps"][0]["final_status"] == "0xA700"
    assert [u["range"] for u in report["uncovered"]] == [SWEEP]
    assert report["days"][0]["reconciliation"] == "not reconciled (incomplete, status 0xA700)"
    assert f"not covered: {SWEEP}" in done.stdout


def test_malformed_rows_counted_and_survived(simscp, make_cluster, tmp_path) -> None:
    studies = SPREAD + UNTIMED + [study(105, None)]
    pacs = simscp({"studies": studies,
                   "malformed": ["missing_uid", "wrong_date", "bad_charset", "duplicate"]})
    done = run(make_cluster(pacs))
    path, report = results(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    # The injected row dated the day after is a study outside the run's range: counted, not
    # listed. The row without a UID cannot be kept. Everything stored is there once.
    rows = exact_uids(path, uids(studies))
    # Each first answer carries bytes that are not UTF-8; another query (or simscp's repeat)
    # returned the same study cleanly, and that copy is the one listed.
    assert rows == expected_rows(studies, all_studies=True)
    queries = 24 + 1  # hourly windows and the day sweep; simscp adds its extras to each
    with_rows = len(SPREAD) + 1  # windows holding a study, and the sweep
    assert report["anomalies"] == {
        "missing_uid": queries,
        "outside_window": queries,
        "undecodable": with_rows,
        "repeated": with_rows,
        "found_only_by_day_sweep": 2,
    }
    assert report["patient_id_conflicts"] == []
    assert "anomalies: " in done.stdout and f"missing_uid {queries}" in done.stdout


def test_undeclared_silent_cap_is_caught_by_the_day_sweep(simscp, make_cluster, tmp_path) -> None:
    """A PACS that stops at N answers and says Success, with DISCOVERY_PACS_MAX_RESULTS left
    at 0 (unknown): the crowded hour is cut short without a sign. The day sweep (also cut at
    N) found fewer studies than the windows did, which a complete answer cannot: the run is
    incomplete and names the setting and the value to use."""
    pacs = simscp({"studies": TIMED, "cap": {"mode": "silent", "limit": N}})
    done = run(make_cluster(pacs))
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"DISCOVERY_PACS_MAX_RESULTS={N}" in done.stdout
    _, report = results(tmp_path)
    assert report["verdict"] == "incomplete"
    day = next(d for d in report["days"] if d["date"] == ISO)
    assert day["reconciliation"].startswith("not reconciled (silent cap")
