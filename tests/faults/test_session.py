"""Association reuse (worker/session.py), counted by the simulated PACS itself: a worker keeps
one association for many windows, holds its slot only while it is open, releases it when idle,
and workers that outnumber the slots still finish without ever exceeding them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from demo.cluster import ROOT, RedisServer
from demo.simscp import generate_studies as sim_studies
from discovery.throttle import pacs_key
from tests.expect import expected_rows, read_csv

pytestmark = pytest.mark.timeout(180)

SIM_DAY = sim_studies("20240101", days=1, per_hour=2, seed=5)
DAY = ("--start", "2024-01-01", "--end", "2024-01-01", "--skip-preflight", "--wait")
QUERIES = 24 + 1  # hourly windows and the day sweep


class Sim:
    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.host, self.aet = "127.0.0.1", "SIMPACS"
        cfg, self.stats_path = workdir / "sim.json", workdir / "sim.stats.json"
        cfg.write_text(json.dumps({"studies": SIM_DAY, **config}))
        with open(workdir / "sim.log", "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "demo.simscp", "--port", "0", "--config", str(cfg),
                 "--stats", str(self.stats_path)], cwd=ROOT, stderr=log)
        wait_until(lambda: self.stats_path.exists(), "simscp did not start")
        self.port = self.stats()["port"]

    def stats(self) -> dict[str, Any]:
        return json.loads(self.stats_path.read_text())


def wait_until(check: Callable[[], bool], message: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Callable[..., Sim]]:
    started: list[Sim] = []

    def start(**config: Any) -> Sim:
        started.append(Sim(tmp_path, config))
        return started[-1]

    yield start
    for s in started:
        s.proc.terminate()
        s.proc.wait(10)


def csv_rows(tmp_path: Path) -> list[list[str]]:
    return read_csv(tmp_path / "out" / "dicom_query_results.csv")


def test_one_worker_one_association_released_when_idle(sim, make_cluster,
                                                       redis_server: RedisServer,
                                                       tmp_path: Path) -> None:
    scp = sim()
    cluster = make_cluster(scp, DISCOVERY_PACS_MAX_ASSOCIATIONS="1",
                           DISCOVERY_ASSOCIATION_IDLE_SECONDS="1")
    cluster.worker(concurrency=1)
    cluster.aggregator()
    done = cluster.producer(*DAY, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr + cluster.logs()[-5000:]
    assert csv_rows(tmp_path) == expected_rows(SIM_DAY)
    stats = scp.stats()
    assert (stats["total_associations"], stats["total_queries"]) == (1, QUERIES)
    # Idle: the association is released and its slot returned.
    wait_until(lambda: scp.stats()["current_associations"] == 0, "association kept open")
    lease = pacs_key("assoc", scp.host, scp.port, scp.aet)
    # (a returned lease stays in the set with a past expiry until the next acquire cleans up)
    wait_until(lambda: redis_server.client().zcount(lease, time.time(), "+inf") == 0,
               "lease kept")


def test_idle_zero_is_one_association_per_window(sim, make_cluster, tmp_path: Path) -> None:
    scp = sim()
    cluster = make_cluster(scp, DISCOVERY_PACS_MAX_ASSOCIATIONS="1",
                           DISCOVERY_ASSOCIATION_IDLE_SECONDS="0")
    cluster.worker(concurrency=1)
    cluster.aggregator()
    done = cluster.producer(*DAY, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr + cluster.logs()[-5000:]
    assert csv_rows(tmp_path) == expected_rows(SIM_DAY)
    stats = scp.stats()
    assert (stats["total_associations"], stats["total_queries"]) == (QUERIES, QUERIES)


def test_workers_outnumbering_slots_take_turns(sim, make_cluster, tmp_path: Path) -> None:
    """Six worker processes, two slots, a long idle time: holders hand their slot over after
    a query when others wait, so nobody waits for the idle time (or the queue to empty)."""
    scp = sim(delay_ms=20)
    cluster = make_cluster(scp, DISCOVERY_PACS_MAX_ASSOCIATIONS="2",
                           DISCOVERY_ASSOCIATION_IDLE_SECONDS="600")
    cluster.worker(concurrency=3)
    cluster.worker(concurrency=3)
    cluster.aggregator()
    done = cluster.producer(*DAY, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr + cluster.logs()[-5000:]
    assert csv_rows(tmp_path) == expected_rows(SIM_DAY)
    stats = scp.stats()
    assert stats["max_concurrent_associations"] == 2
    assert stats["rejected_associations"] == 0
    assert stats["total_queries"] == QUERIES


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_as_many_workers_as_slots_keep_their_associations(sim, make_cluster, tmp_path: Path,
                                                          pool: str) -> None:
    """Workers no more than the slots never hand their association over: a slot in its
    release grace (the producer's preflight, a closed association) makes a worker wait a
    moment, and that short wait must not make every holder release after each query (each
    release is a grace in which the releaser waits in turn: associations churn, workers stand
    in line and the run loses its parallelism)."""
    scp = sim(delay_ms=20)
    cluster = make_cluster(scp, DISCOVERY_PACS_MAX_ASSOCIATIONS="3",
                           DISCOVERY_ASSOCIATION_IDLE_SECONDS="600")
    cluster.worker(concurrency=3, pool=pool)
    cluster.aggregator()
    cluster.wait_ready()
    days = ("--start", "2024-01-01", "--end", "2024-01-01", "--wait")  # with the preflight
    done = cluster.producer(*days, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr + cluster.logs()[-5000:]
    assert csv_rows(tmp_path) == expected_rows(SIM_DAY)
    stats = scp.stats()
    assert stats["max_concurrent_associations"] == 3
    # One association per worker process or thread, and the preflight's; at most two more for
    # a wait longer than YIELD_AFTER on a loaded machine (the churn opened 22 for 25 queries).
    assert stats["total_associations"] <= 3 + 1 + 2, stats


def run_workers(scp: Sim, make_cluster, tmp_path: Path, workers: int, concurrency: int,  # type: ignore[no-untyped-def]
                pool: str, args: tuple[str, ...] = DAY, **env: str) -> dict[str, Any]:
    """``workers`` query workers (``-P pool -c concurrency``) and the aggregator with ``env``
    (association idle time 600 s): the run must give the exact CSV; the PACS's stats."""
    cluster = make_cluster(scp, DISCOVERY_ASSOCIATION_IDLE_SECONDS="600", **env)
    for _ in range(workers):
        cluster.worker(concurrency=concurrency, pool=pool)
    cluster.aggregator()
    done = cluster.producer(*args, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr + cluster.logs()[-5000:]
    assert csv_rows(tmp_path) == expected_rows(SIM_DAY)
    return scp.stats()


def test_pool_threads_share_the_worker_associations(sim, make_cluster, tmp_path: Path) -> None:
    """DISCOVERY_WORKER_ASSOCIATIONS=1 with four pool threads: one association for the whole
    run, although the limit would allow three (without the setting each thread opens its
    own)."""
    stats = run_workers(sim(delay_ms=20), make_cluster, tmp_path, 1, 4, "threads",
                        DISCOVERY_PACS_MAX_ASSOCIATIONS="3", DISCOVERY_WORKER_ASSOCIATIONS="1")
    assert stats["max_concurrent_associations"] == 1, stats
    assert (stats["total_associations"], stats["total_queries"]) == (1, QUERIES), stats


def test_shared_associations_of_two_workers_stay_within_the_limit(sim, make_cluster,
                                                                  tmp_path: Path) -> None:
    """Two worker processes that would keep two associations each, three slots: the PACS
    never sees a fourth; the process left short queries on the association it has (its
    other threads wait in the process, its other session in the queue for a slot)."""
    stats = run_workers(sim(delay_ms=20), make_cluster, tmp_path, 2, 4, "threads",
                        DISCOVERY_PACS_MAX_ASSOCIATIONS="3", DISCOVERY_WORKER_ASSOCIATIONS="2")
    assert stats["max_concurrent_associations"] == 3, stats
    assert stats["rejected_associations"] == 0, stats
    assert stats["total_queries"] == QUERIES, stats


def test_shared_associations_above_the_limit_are_not_opened(sim, make_cluster,
                                                            tmp_path: Path) -> None:
    """DISCOVERY_WORKER_ASSOCIATIONS=3 with a limit of 1: the worker keeps the one association
    it may have (the other two sessions would only wait for a slot and make it hand over:
    8 associations for 26 queries before)."""
    stats = run_workers(sim(delay_ms=20), make_cluster, tmp_path, 1, 6, "threads",
                        DISCOVERY_PACS_MAX_ASSOCIATIONS="1", DISCOVERY_WORKER_ASSOCIATIONS="3")
    assert (stats["total_associations"], stats["total_queries"]) == (1, QUERIES), stats


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_workers_that_always_wait_hand_over_after_the_hold_time(sim, make_cluster,
                                                                tmp_path: Path,
                                                                pool: str) -> None:
    """Sixteen pool processes or threads for two slots, 125 queries: the waiters have always
    waited long, so a hand-over after every query opened about one association per query
    (107 for 125), each leaving its slot unused for a moment. A holder keeps its slot for
    the hold time (2 s) first, unless it is idle: each of the 16 gets a slot for the window
    it holds, and a few more hand-overs while the windows last."""
    days = ("--start", "2024-01-01", "--end", "2024-01-05", "--skip-preflight", "--wait")
    stats = run_workers(sim(delay_ms=50), make_cluster, tmp_path, 2, 8, pool, days,
                        DISCOVERY_PACS_MAX_ASSOCIATIONS="2")
    assert stats["max_concurrent_associations"] == 2, stats
    assert stats["total_queries"] == 5 * QUERIES, stats
    assert stats["total_associations"] <= 50, stats
