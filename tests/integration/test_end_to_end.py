"""Issue 2: the main job end to end on real parts - a real Orthanc, a private Redis, real
`celery worker` processes for queries and the aggregator, and `python -m producer --wait`."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from demo.servers import OrthancServer
from demo.studies import generate_studies
from tests.expect import expected_rows, read_csv

STUDIES = generate_studies(date(2024, 1, 1), days=3, per_day=16, seed=7)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    with OrthancServer(tmp_path_factory.mktemp("orthanc"), encoding="Utf8") as server:
        server.store(STUDIES)
        yield server


def test_lacking_descriptions_exactly(orthanc, make_cluster, tmp_path: Path) -> None:
    cluster = make_cluster(orthanc)
    cluster.worker(concurrency=2)
    cluster.aggregator()
    done = cluster.producer("--start", "2024-01-01", "--end", "2024-01-03", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "72 windows and 3 day sweeps" in done.stdout
    out = tmp_path / "out" / "dicom_query_results.csv"
    rows = read_csv(out)
    assert rows == expected_rows(STUDIES)
    # the fixture covers what the issue asks for
    assert any("\\" in s["description"] for s in STUDIES if s["description"])
    assert any(r[0] == "-12345" for r in expected_rows(STUDIES, all_studies=True))
    assert {type(s["description"]) for s in STUDIES if not (s["description"] or "").strip()}
    report = json.loads((tmp_path / "out" / "dicom_query_results.coverage.json").read_text())
    assert report["verdict"] == "complete"
    assert report["totals"]["windows_done"] == 75
    assert f"studies found {len(STUDIES)}" in done.stdout
    assert f"lacking a description {len(rows)}" in done.stdout


def test_all_studies_with_output_override(orthanc, make_cluster, tmp_path: Path) -> None:
    cluster = make_cluster(orthanc)
    cluster.worker(concurrency=2)
    cluster.aggregator()
    target = tmp_path / "elsewhere" / "all.csv"
    done = cluster.producer("--start", "2024-01-01", "--end", "2024-01-03", "--all-studies",
                            "--output", str(target), "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = read_csv(target)
    assert rows == expected_rows(STUDIES, all_studies=True)
    # non-ASCII names and descriptions survive (UTF-8 CSV); multi-valued joined with "\"
    assert any("Schädel nativ" == r[5] for r in rows)
    assert any("CT HEAD\\CONTRAST" == r[5] for r in rows)
    assert any("Thorax, PA und lateral" == r[5] for r in rows)
    assert not (tmp_path / "out" / "dicom_query_results.csv").exists()
    assert oct(target.stat().st_mode & 0o777) == "0o640"
