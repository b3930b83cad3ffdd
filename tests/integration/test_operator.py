"""What an operator can get wrong or want to do mid-run, on real parts: workers configured
for another PACS than the producer, cancelling and resuming, a PACS that lets us associate but
not query, and Flower started without credentials."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import pytest

from demo.cluster import ROOT, RedisServer
from demo.servers import OrthancServer, free_port
from demo.studies import generate_studies
from tests.expect import expected_rows, read_csv

STUDIES = generate_studies(date(2024, 3, 1), days=1, per_day=12, seed=3)
DAY = ("--start", "2024-03-01", "--end", "2024-03-01")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory):
    with OrthancServer(tmp_path_factory.mktemp("pacs"), encoding="Utf8") as server:
        server.store(STUDIES)
        yield server


def test_worker_configured_for_another_pacs_stops_the_run(pacs, make_cluster, tmp_path) -> None:
    with OrthancServer(tmp_path / "other", aet="OTHER") as other:  # empty, and not the target
        cluster = make_cluster(pacs)
        cluster.worker(concurrency=1, extra_env={"DISCOVERY_PACS_PORT": str(other.port),
                                                  "DISCOVERY_CALLED_AET": "OTHER"})
        cluster.aggregator()
        done = cluster.producer(*DAY, "--wait", timeout=120)
        assert done.returncode == 5, done.stdout + done.stderr
        assert f"OTHER@127.0.0.1:{other.port}" in done.stderr
        assert "DISCOVERY_PACS_HOST" in done.stderr and "--resume" in done.stderr
        assert not (tmp_path / "out" / "dicom_query_results.csv").exists()
        # Resumed from a shell configured for the other PACS: the run follows it (README: the
        # way to fix a wrong target), and the producer says so in one line.
        run_id = done.stdout.split()[1].rstrip(":")
        resumed = cluster.producer("--resume", run_id, env={
            "DISCOVERY_PACS_PORT": str(other.port), "DISCOVERY_CALLED_AET": "OTHER"})
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert resumed.stdout.splitlines()[0] == (
            f"run {run_id}: now queries OTHER@127.0.0.1:{other.port} as DISCOVERY (was "
            f"{pacs.aet}@127.0.0.1:{pacs.port} as DISCOVERY)")
        again = cluster.producer("--resume", run_id, env={
            "DISCOVERY_PACS_PORT": str(other.port), "DISCOVERY_CALLED_AET": "OTHER"})
        assert again.returncode == 0 and "now queries" not in again.stdout, again.stdout


def test_cancel_then_resume(pacs, make_cluster, redis_server: RedisServer,
                            tmp_path: Path) -> None:
    cluster = make_cluster(pacs)
    cluster.aggregator()
    started = cluster.producer(*DAY)
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split()[1].rstrip(":")
    cancel = cluster.producer("--cancel", run_id)
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    assert "cancelled; workers skip" in cancel.stdout
    again = cluster.producer("--cancel", run_id)  # says so, and the run stays stopped
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.startswith(f"run {run_id}: already stopped (cancelled by the operator")
    assert "workers skip" not in again.stdout and again.stdout.count("--resume") == 1
    cluster.worker(concurrency=2)  # every queued window of the run stands down
    status = cluster.producer("--status", run_id)
    assert "stopped" in status.stdout and "cancelled by the operator" in status.stdout
    assert status.returncode == 5, status.stdout + status.stderr  # as --wait says
    assert not (tmp_path / "out" / "dicom_query_results.csv").exists()
    resumed = cluster.producer("--resume", run_id, "--wait", timeout=180)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert read_csv(tmp_path / "out" / "dicom_query_results.csv") == expected_rows(STUDIES)
    # A finished run is not cancelled: it says so, and its state stays finished.
    late = cluster.producer("--cancel", run_id)
    assert late.returncode == 0, late.stdout + late.stderr
    assert late.stdout == f"run {run_id}: already finished (COMPLETE); nothing to cancel\n"
    mirror = redis_server.client()
    assert mirror.hget(f"discovery:run:{run_id}", "state") == b"finished"
    assert mirror.get(f"discovery:stop:{run_id}") is None
    shown = cluster.producer("--status", run_id)
    assert shown.returncode == 0 and f"run {run_id}: COMPLETE" in shown.stdout, shown.stdout


def test_ctrl_c_while_waiting_names_the_run(make_cluster, tmp_path: Path) -> None:
    """Ctrl-C during --wait: the message names the run to follow, not a placeholder. A
    one-day run enqueues "1 day sweep" (not "1 day sweeps"). Nothing consumes the queues:
    --wait says the run is not registered (not an empty bar), then how to start the
    aggregator."""
    nowhere = SimpleNamespace(host="127.0.0.1", port=free_port(), aet="NOWHERE")
    cluster = make_cluster(nowhere)
    waiting = cluster.producer_async(*DAY, "--skip-preflight", "--wait")
    deadline = time.monotonic() + 60
    while " enqueued (" not in waiting.log() and time.monotonic() < deadline:
        assert waiting.alive(), waiting.log()
        time.sleep(0.2)
    match = re.search(r"^run (\S+): 24 windows and 1 day sweep enqueued \(", waiting.log(),
                      re.MULTILINE)
    assert match, waiting.log()
    # No aggregator registers the run: --wait says so, then names the command that starts it.
    hint = (f"pacs-discovery: run {match.group(1)} is still not registered: is `celery -A "
            "worker worker -Q results -c 1 -n aggregator@%h` running")
    deadline = time.monotonic() + 40
    while hint not in waiting.log() and time.monotonic() < deadline:
        assert waiting.alive(), waiting.log()
        time.sleep(0.5)
    assert f"waiting for the aggregator to register run {match.group(1)}\n" in waiting.log()
    assert hint in waiting.log() and "windows 0/0" not in waiting.log()
    waiting.signal(signal.SIGINT)
    assert waiting.proc is not None and waiting.proc.wait(30) == 1
    assert waiting.log().splitlines()[-1] == (
        "pacs-discovery: interrupted; the run goes on in the workers "
        f"(python -m producer --status {match.group(1)})")


def test_pacs_that_associates_but_refuses_queries(make_cluster, tmp_path: Path) -> None:
    """Orthanc accepts the association (C-ECHO allowed to all) but drops a C-FIND from an AE
    title it does not list: exit 5 naming DISCOVERY_CALLING_AET, nothing enqueued."""
    strict = {"DicomAlwaysAllowFind": False, "DicomAlwaysAllowEcho": True,
              "DicomModalities": {"known": ["KNOWN", "127.0.0.1", 104]}}
    with OrthancServer(tmp_path / "strict", extra_config=strict) as orthanc:
        cluster = make_cluster(orthanc, DISCOVERY_CALLING_AET="STRANGER")
        done = cluster.producer(*DAY, timeout=60)
    assert done.returncode == 5, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1
    assert "DISCOVERY_CALLING_AET=STRANGER" in done.stderr


@pytest.mark.parametrize("auth", [None, "", "admin"])
def test_flower_refuses_to_start_without_credentials(tmp_path: Path, auth) -> None:
    env = {k: v for k, v in __import__("os").environ.items() if k != "FLOWER_BASIC_AUTH"}
    if auth is not None:
        env["FLOWER_BASIC_AUTH"] = auth
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "worker", "flower"],
                          cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "set FLOWER_BASIC_AUTH=user:password" in done.stderr


def test_unwritable_output_stops_the_run_then_resume_writes_it(pacs, make_cluster,
                                                               tmp_path: Path) -> None:
    """The output's folder becomes a file after the producer's check (a full disk or lost
    permissions look the same to the aggregator): the run stops with the path in one message
    instead of hanging at 'all windows done'; --resume writes the CSV once it is fixed."""
    target = tmp_path / "later" / "out.csv"
    cluster = make_cluster(pacs)
    cluster.aggregator()
    started = cluster.producer(*DAY, "--output", str(target))
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split()[1].rstrip(":")
    wait_registered(cluster, run_id)  # the aggregator has checked the folder (and made it)
    shutil.rmtree(target.parent)
    target.parent.write_text("not a folder")
    cluster.worker(concurrency=2)
    deadline = time.monotonic() + 120
    while True:
        status = cluster.producer("--status", run_id)
        if "stopped:" in status.stdout or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert f"cannot write the CSV or its report at {target}" in status.stdout
    assert f"--resume {run_id}" in status.stdout
    target.parent.unlink()
    resumed = cluster.producer("--resume", run_id, "--wait", timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert read_csv(target) == expected_rows(STUDIES)


def wait_registered(cluster, run_id: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 60
    while "windows" not in cluster.producer("--status", run_id).stdout:
        assert time.monotonic() < deadline, "the aggregator did not register the run"
        time.sleep(0.5)


def _stopped(cluster, run_id: str) -> str:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 60
    while True:
        out = cluster.producer("--status", run_id).stdout
        if "stopped:" in out or time.monotonic() > deadline:
            return out
        time.sleep(0.5)


def test_an_output_the_aggregator_cannot_write_stops_the_run_at_registration(
        pacs, make_cluster, tmp_path: Path) -> None:
    """Found by a new user: an output the producer could write but the aggregator cannot (here
    the folder became a file after the producer's check; also another machine's or
    container's view) was found only after the whole range was queried. The aggregator tries
    the folder when it registers the run (no query worker runs here: before, the run never
    stopped), and a resume that has not fixed it stops again at once."""
    folder = tmp_path / "later-a-file"
    folder.mkdir()
    output = folder / "out.csv"
    cluster = make_cluster(pacs)
    started = cluster.producer(*DAY, "--output", str(output))
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split()[1].rstrip(":")
    folder.rmdir()
    folder.write_text("not a folder")
    cluster.aggregator()
    out = _stopped(cluster, run_id)
    assert f"cannot write the CSV or its report at {output}" in out
    resumed = cluster.producer("--resume", run_id)
    assert resumed.returncode == 0, resumed.stderr
    assert "cannot write the CSV" in _stopped(cluster, run_id)


def test_redis_that_may_evict_is_refused(pacs, make_cluster, tmp_path: Path) -> None:
    """allkeys-lru once evicted queued windows and leases (4 associations against a cap of 1)."""
    with RedisServer(tmp_path / "lru", policy="allkeys-lru") as lru:
        cluster = make_cluster(pacs, DISCOVERY_BROKER_URL=lru.url)
        done = cluster.producer(*DAY, timeout=60)
        assert lru.client().llen("queries") == 0
    assert done.returncode == 5, done.stdout + done.stderr
    assert "maxmemory-policy allkeys-lru" in done.stderr and "noeviction" in done.stderr
