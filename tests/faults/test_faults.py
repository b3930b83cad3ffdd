"""Issue 4: faults during real runs - real Redis, real `celery worker` processes, a real Orthanc
where it can produce the fault, the simulated PACS (demo.simscp) where it cannot. Every run
ends with the CSV equal to the ground truth: every study exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from demo.cluster import ROOT, Cluster, Process, RedisServer
from demo.servers import OrthancServer, free_port
from demo.simscp import generate_studies as sim_studies
from demo.studies import generate_studies
from discovery import status
from tests.expect import expected_rows, read_csv

pytestmark = pytest.mark.timeout(240)

# One day, 2 studies an hour, some with fractional seconds, some without a description.
SIM_DAY = sim_studies("20240101", days=1, per_hour=2, seed=4)
DAY = ("--start", "2024-01-01", "--end", "2024-01-01")


class Sim:
    """``python -m demo.simscp`` as a subprocess; ``restart(config)`` keeps its port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.host, self.aet, self.port = workdir, "127.0.0.1", "SIMPACS", 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.n = 0

    def start(self, config: dict[str, Any], port: int = 0) -> Sim:
        self.n += 1
        cfg = self.workdir / f"sim{self.n}.json"
        self.stats_path = self.workdir / f"sim{self.n}.stats.json"
        cfg.write_text(json.dumps({"studies": SIM_DAY, **config}))
        with open(self.workdir / f"sim{self.n}.log", "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "demo.simscp", "--port", str(port), "--config", str(cfg),
                 "--stats", str(self.stats_path)], cwd=ROOT, stderr=log)
        wait_until(lambda: self.stats_path.exists(), 20, "simscp did not start")
        self.port = self.stats()["port"]
        return self

    def stats(self) -> dict[str, Any]:
        return json.loads(self.stats_path.read_text())

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)
            self.proc = None

    def restart(self, config: dict[str, Any]) -> Sim:
        self.stop()
        return self.start(config, self.port)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], Sim]]:
    sims: list[Sim] = []

    def start(config: dict[str, Any]) -> Sim:
        (tmp_path / "sim").mkdir(exist_ok=True)
        sims.append(Sim(tmp_path / "sim").start(config))
        return sims[-1]

    yield start
    for s in sims:
        s.stop()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return value


def progress(url: str, run_id: str) -> dict:
    import redis

    try:
        return status.read(redis.Redis.from_url(url), run_id)
    except redis.RedisError:
        return {}


def run_id_of(proc: Process) -> str:
    """The run id the producer prints first (``run <id>: ... enqueued``)."""
    line = wait_until(lambda: next((ln for ln in proc.log().splitlines()
                                    if ln.startswith("run ")), None), 60, "no run id printed")
    return line.split()[1].rstrip(":")


def finished(proc: Process, timeout: float = 120) -> int:
    """Wait for an async producer (``--wait``) and return its exit code."""
    assert proc.proc is not None
    return proc.proc.wait(timeout)


def csv_rows(tmp_path: Path) -> list[list[str]]:
    rows = read_csv(tmp_path / "out" / "dicom_query_results.csv")
    assert len({r[4] for r in rows}) == len(rows), "duplicate Study UIDs in the CSV"
    return rows


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


# -- a worker dies -------------------------------------------------------------------------------

def test_kill_9_worker_during_c_find(sim, make_cluster, tmp_path: Path) -> None:
    """The pool child running a slow C-FIND is killed (its task comes back at once), then a
    whole worker dies with a C-FIND on the wire (its task is lost in Redis's unacked set until
    the watchdog sends the window again); a new worker finishes the run exactly."""
    scp = sim({"delay_ms": 1500})
    # a dead worker's association slot is free again after DISCOVERY_ASSOCIATION_LEASE
    cluster = make_cluster(scp, DISCOVERY_WINDOW_MINUTES="240", DISCOVERY_REDISPATCH_AFTER="5",
                           DISCOVERY_ASSOCIATION_LEASE="5")
    first = cluster.worker(concurrency=1)
    cluster.aggregator()
    producer = cluster.producer_async(*DAY, "--wait")
    # the first association is the producer's preflight; the second a worker's C-FIND
    wait_until(lambda: scp.stats()["total_associations"] >= 2
               and scp.stats()["current_associations"] == 1, 60, "no C-FIND started")
    child = children(first.pid)[0]
    os.kill(child, signal.SIGKILL)
    queries = scp.stats()["total_queries"]
    wait_until(lambda: scp.stats()["total_queries"] > queries
               and scp.stats()["current_associations"] == 1, 60, "no C-FIND after the kill")
    first.signal(signal.SIGKILL)  # main process and pool child, mid C-FIND
    cluster.worker(concurrency=2)
    assert finished(producer) == 0, cluster.logs()[-5000:]
    assert csv_rows(tmp_path) == expected_rows(SIM_DAY)


# -- the aggregator dies, Redis forgets ------------------------------------------------------------

def started_run(cluster: Cluster, url: str, done: int = 3) -> tuple[Process, str]:
    """A ``--wait`` producer for one day and its run id, once ``done`` windows reported."""
    producer = cluster.producer_async(*DAY, "--wait")
    run_id = run_id_of(producer)
    wait_until(lambda: progress(url, run_id).get("windows_done", 0) >= done, 60,
               "the run does not progress")
    return producer, run_id


def test_kill_9_aggregator_and_start_it_again(sim, make_cluster, broker_url: str,
                                              tmp_path: Path) -> None:
    scp = sim({"delay_ms": 300})
    cluster = make_cluster(scp, DISCOVERY_REDISPATCH_AFTER="5")
    cluster.worker(concurrency=2)
    aggregator = cluster.aggregator()
    producer, _ = started_run(cluster, broker_url)
    aggregator.signal(signal.SIGKILL)
    time.sleep(2)  # results pile up in Redis meanwhile
    cluster.aggregator()
    assert finished(producer) == 0, cluster.logs()[-5000:]
    assert csv_rows(tmp_path) == expected_rows(SIM_DAY)


def test_redis_flushall_mid_run(sim, make_cluster, redis_server: RedisServer, broker_url: str,
                                tmp_path: Path) -> None:
    """Every queued task, every unacknowledged one, the progress mirror and the registration
    (if not yet read) are gone: the ledger knows which windows are open, the watchdog sends
    them again."""
    scp = sim({"delay_ms": 300})
    cluster = make_cluster(scp, DISCOVERY_REDISPATCH_AFTER="3")
    cluster.worker(concurrency=2)
    cluster.aggregator()
    producer, _ = started_run(cluster, broker_url)
    redis_server.client().flushall()
    assert finished(producer) == 0, cluster.logs()[-5000:]
    assert csv_rows(tmp_path) == expected_rows(SIM_DAY)


def test_redis_flushall_before_the_aggregator_read_the_registration(
        sim, make_cluster, redis_server: RedisServer, broker_url: str, tmp_path: Path) -> None:
    """The aggregator is not running yet when Redis is flushed: the registration is gone too.
    The producer's --wait sees no progress and sends it again; the watchdog does the rest."""
    scp = sim({"delay_ms": 300})
    cluster = make_cluster(scp, DISCOVERY_REDISPATCH_AFTER="3")
    cluster.worker(concurrency=2)
    producer = cluster.producer_async(*DAY, "--wait")
    wait_until(lambda: scp.stats()["total_queries"] >= 4, 60, "no C-FIND")
    redis_server.client().flushall()
    cluster.aggregator()
    assert finished(producer) == 0, cluster.logs()[-5000:]
    assert csv_rows(tmp_path) == expected_rows(SIM_DAY)


def test_redis_restart_mid_run(sim, make_cluster, tmp_path: Path) -> None:
    """Redis stops and comes back empty (no persistence) on the same port. The waiting
    producer says once that the broker is unreachable (after a few seconds), and once that it
    is back, instead of a bar frozen without a word."""
    with RedisServer(tmp_path / "redis") as broker:
        scp = sim({"delay_ms": 300})
        cluster = make_cluster(scp, DISCOVERY_REDISPATCH_AFTER="3",
                               DISCOVERY_BROKER_URL=broker.url)
        cluster.worker(concurrency=2)
        cluster.aggregator()
        producer, _ = started_run(cluster, broker.url)
        broker.stop()
        time.sleep(7)
        broker.start()
        assert finished(producer) == 0, cluster.logs()[-5000:]
        assert csv_rows(tmp_path) == expected_rows(SIM_DAY)
    lines = producer.log().splitlines()
    assert lines.count("pacs-discovery: broker unreachable, retrying") == 1, producer.log()
    assert lines.count("pacs-discovery: broker reachable again") == 1, producer.log()
    assert lines.index("pacs-discovery: broker unreachable, retrying") < lines.index(
        "pacs-discovery: broker reachable again")


# -- Celery redelivers, the PACS limits associations ---------------------------------------------

def test_visibility_timeout_shorter_than_a_slow_task(sim, make_cluster, tmp_path: Path) -> None:
    """Redis hands a task still running (8 s C-FIND, 5 s visibility timeout) to a second
    worker process: both answer, the ledger keeps one."""
    scp = sim({"delay_ms": 8000})
    cluster = make_cluster(scp, DISCOVERY_WINDOW_MINUTES="720", DISCOVERY_VISIBILITY_TIMEOUT="5",
                           DISCOVERY_PACS_MAX_ASSOCIATIONS="8")
    cluster.worker(concurrency=4)
    cluster.aggregator()
    done = cluster.producer(*DAY, "--skip-preflight", "--wait", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr + cluster.logs()[-5000:]
    assert csv_rows(tmp_path) == expected_rows(SIM_DAY)
    assert scp.stats()["total_queries"] > 3  # 2 windows and 1 day sweep, some asked twice


def test_eight_processes_never_exceed_two_associations(sim, make_cluster,
                                                       tmp_path: Path) -> None:
    """Many hand-overs (50 short C-FINDs, no hold time): a slot is free again only once the
    PACS has let go of the association, a few milliseconds after our A-RELEASE."""
    scp = sim({"delay_ms": 100, "max_associations": 2})
    cluster = make_cluster(scp, DISCOVERY_PACS_MAX_ASSOCIATIONS="2",
                           DISCOVERY_ASSOCIATION_HOLD_SECONDS="0")
    cluster.worker(concurrency=4)
    cluster.worker(concurrency=4)
    cluster.aggregator()
    done = cluster.producer("--start", "2024-01-01", "--end", "2024-01-02", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr + cluster.logs()[-5000:]
    assert csv_rows(tmp_path) == expected_rows(SIM_DAY)
    stats = scp.stats()
    assert stats["max_concurrent_associations"] == 2
    assert stats["rejected_associations"] == 0
    # Six processes always wait (longer than YIELD_AFTER): holders hand over after most of
    # the 50 queries (the preflight, 48 windows, 2 day sweeps), not after every one.
    assert stats["total_associations"] >= 20


# -- the PACS goes away, or refuses us -------------------------------------------------------------

ORTHANC_DAY = generate_studies(date(2024, 1, 1), days=1, per_day=16, seed=11)
#: Orthanc that knows one calling AE title (DISCOVERY) and rejects every other (PS3.8 reject
#: 1/1/3), like a clinical PACS: nothing is allowed without a DicomModalities entry.
STRICT = {"DicomAlwaysAllowEcho": False, "DicomAlwaysAllowFind": False,
          "DicomAlwaysAllowStore": False, "DicomCheckCalledAet": True,
          "DicomModalities": {"discovery": ["DISCOVERY", "127.0.0.1", 104]}}


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path / "orthanc", extra_config=STRICT) as server:
        server.store(ORTHANC_DAY)
        yield server


def test_pacs_down_for_30_seconds(orthanc: OrthancServer, make_cluster, broker_url: str,
                                  tmp_path: Path) -> None:
    """Orthanc stops mid-run and comes back on the same port 30 s later; retries with backoff
    (20 attempts, at most 5 s apart) outlast the outage."""
    cluster = make_cluster(orthanc, DISCOVERY_PACS_MAX_QUERIES_PER_SECOND="2",
                           DISCOVERY_MAX_ATTEMPTS="20", DISCOVERY_RETRY_BACKOFF="1",
                           DISCOVERY_RETRY_BACKOFF_MAX="5")
    cluster.worker(concurrency=2)
    cluster.aggregator()
    producer, run_id = started_run(cluster, broker_url)
    port = orthanc.port
    orthanc.stop()
    time.sleep(30)
    assert progress(broker_url, run_id)["windows_open"] > 0  # the outage was mid-run
    orthanc.start(port=port)
    assert finished(producer) == 0, cluster.logs()[-5000:]
    assert csv_rows(tmp_path) == expected_rows(ORTHANC_DAY)


def queued(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    return int(client.llen("queries")) + int(client.llen("results"))


def test_wrong_calling_aet_wrong_port_and_a_stop_during_the_run(
        orthanc: OrthancServer, make_cluster, broker_url: str, tmp_path: Path) -> None:
    wrong = make_cluster(orthanc, DISCOVERY_CALLING_AET="WRONG")
    # Preflight: one line naming the setting, exit 5, nothing enqueued.
    done = wrong.producer(*DAY, "--wait", timeout=60)
    assert (done.returncode, done.stdout) == (5, ""), done.stderr
    assert len(done.stderr.splitlines()) == 1 and "DISCOVERY_CALLING_AET" in done.stderr
    assert "calling AE title not recognized" in done.stderr
    assert queued(broker_url) == 0
    # A port where nothing listens: exit 6, one line naming the port setting, nothing enqueued.
    nowhere = make_cluster(orthanc, DISCOVERY_PACS_PORT=str(free_port()))
    done = nowhere.producer(*DAY, "--wait", timeout=60)
    assert (done.returncode, done.stdout) == (6, ""), done.stderr
    assert len(done.stderr.splitlines()) == 1 and "DISCOVERY_PACS_PORT" in done.stderr
    assert queued(broker_url) == 0
    # Without the preflight the workers meet the rejection: the run stops at once (exit 5),
    # its windows stay open; fixed workers and --resume finish it exactly.
    wrong.worker(concurrency=2)
    wrong.aggregator()
    done = wrong.producer(*DAY, "--skip-preflight", "--wait", timeout=60)
    assert done.returncode == 5, done.stdout + done.stderr + wrong.logs()[-5000:]
    assert "DISCOVERY_CALLING_AET" in done.stderr
    run_id = done.stdout.split()[1].rstrip(":")
    assert progress(broker_url, run_id)["windows_open"] == 25
    # one association per worker process at most; every other task stood down
    assert wrong.processes[0].log().count("rejected the association") <= 2
    for proc in wrong.processes[:1]:
        proc.stop()  # the misconfigured query worker
    right = make_cluster(orthanc)
    right.worker(concurrency=2)
    done = right.producer("--resume", run_id, "--wait", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr + wrong.logs()[-5000:]
    assert csv_rows(tmp_path) == expected_rows(ORTHANC_DAY)


# -- status, resume, retry ---------------------------------------------------------------------

def test_status_unknown_run_and_retry_failed(sim, make_cluster, broker_url: str,
                                             tmp_path: Path) -> None:
    """Every C-FIND is aborted (both attempts): the run ends incomplete, exit 3. With the
    PACS fixed, ``--retry-failed`` completes it; ``--status`` shows it running, then done."""
    scp = sim({"abort_after_rows": 0})
    cluster = make_cluster(scp, DISCOVERY_WINDOW_MINUTES="720", DISCOVERY_MAX_ATTEMPTS="2")
    cluster.worker(concurrency=2)
    cluster.aggregator()
    done = cluster.producer(*DAY, "--skip-preflight", "--wait")
    assert done.returncode == 3, done.stdout + done.stderr + cluster.logs()[-5000:]
    incomplete = tmp_path / "out" / "dicom_query_results.incomplete.csv"
    assert read_csv(incomplete) == []
    run_id = done.stdout.split()[1].rstrip(":")
    assert scp.stats()["aborted_associations"] == 6  # 2 windows and 1 day sweep, 2 attempts
    shown = cluster.producer("--status", run_id)
    assert shown.returncode == 3 and f"run {run_id}: INCOMPLETE" in shown.stdout, shown.stderr
    assert "windows ok 0, failed 3" in shown.stdout

    unknown = cluster.producer("--resume", "20240101-000000-abcdef")
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert unknown.stderr.splitlines() == [
        "pacs-discovery: unknown run id '20240101-000000-abcdef': the aggregator's ledger has "
        "no such run"]

    scp.restart({"delay_ms": 1500})  # fixed, and slow enough to be seen running
    retried = cluster.producer("--retry-failed", run_id)
    assert retried.returncode == 0, retried.stderr
    assert f"run {run_id}: retry failed sent; 3 windows open" in retried.stdout
    running = cluster.producer("--status", run_id)
    assert running.returncode == 0, running.stderr
    assert running.stdout.startswith(f"run {run_id}: running\n")
    wait_until(lambda: progress(broker_url, run_id).get("state") == "finished", 60,
               "the retried run does not finish")
    shown = cluster.producer("--status", run_id)
    assert shown.returncode == 0 and f"run {run_id}: COMPLETE" in shown.stdout, shown.stderr
    assert csv_rows(tmp_path) == expected_rows(SIM_DAY)
    assert not incomplete.exists()  # superseded
