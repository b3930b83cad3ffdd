"""B. Against the PACS limit: the simulated PACS (``python -m demo.simscp``) answers each C-FIND
after a fixed delay; pacs-discovery runs with 1, 2, 4, 8 and 16 concurrent associations, in
three ways: the Celery prefork pool (one association per pool process), the threads pool (one
per thread), and the threads pool with two threads per association
(``DISCOVERY_WORKER_ASSOCIATIONS``, one worker process per CPU). The limit a PACS allows is
``windows x delay / associations``; we report wall time / limit.

The day sweep is off here (``DISCOVERY_DAY_SWEEP=false``): the limit counts hourly windows only,
as the issue defines it. Benchmark A runs with the day sweep on.

``BENCH_B_ASSOCIATIONS=8`` and ``BENCH_B_POOLS=shared`` (comma-separated; ``prefork``,
``threads``, ``shared``) run only those rows: a quick look at one change.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import date, timedelta
from pathlib import Path

from bench.common import PY, Scale, Table, csv_uids, discovery_env, plain_env, run_discovery
from demo.cluster import ROOT, RedisServer
from demo.simscp import generate_studies
from discovery.dimse import study_query
from discovery.windows import Window

DELAY_MS = 50
PER_HOUR = 5
START = date(2024, 1, 1)
POOLS = ("prefork", "threads", "shared")
#: The keys pacs-discovery asks: the simulated PACS builds its answers to them before the run.
PREPARE_KEYS = [e.keyword for e in study_query(Window(START, 0, 3600))]


class SimPacs:
    """``python -m demo.simscp`` as a subprocess on a free port, with its stats file."""

    def __init__(self, workdir: Path, config: dict) -> None:
        self.workdir, self.config = workdir, config
        self.host, self.aet, self.port = "127.0.0.1", "SIMPACS", 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def stats_path(self) -> Path:
        return self.workdir / "stats.json"

    def stats(self) -> dict:
        return json.loads(self.stats_path.read_text())

    def __enter__(self) -> SimPacs:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "config.json"
        cfg.write_text(json.dumps(self.config))
        # An earlier run's stats (--workdir kept) name a port nobody listens on any more.
        self.stats_path.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [PY, "-m", "demo.simscp", "--port", "0", "--aet", self.aet, "--config", str(cfg),
             "--stats", str(self.stats_path)],
            cwd=ROOT, env=plain_env(), stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "simscp.log", "wb"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 60
        while not (self.stats_path.exists() and self.stats().get("port")):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"simscp did not start: see {self.workdir / 'simscp.log'}")
            time.sleep(0.1)
        self.port = int(self.stats()["port"])
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(15)


def workers_for(way: str, associations: int) -> tuple[int, str, int, int]:
    """How ``way`` runs ``associations`` associations: worker processes, pool, threads or
    processes per worker (``-c``) and DISCOVERY_WORKER_ASSOCIATIONS (0 = one per ``-c``)."""
    if way == "shared":
        processes = max(1, min(associations, os.cpu_count() or 1))
        while associations % processes:
            processes -= 1
        per_process = associations // processes
        return processes, "threads", 2 * per_process, per_process
    return 1, way, associations, 0


def run(scale: Scale, workdir: Path) -> Table:
    generate = {"start": START.strftime("%Y%m%d"), "days": scale.b_days, "per_hour": PER_HOUR,
                "seed": 2}
    expected = sorted(s["study_uid"] for s in generate_studies(**generate))  # type: ignore[arg-type]
    windows = 24 * scale.b_days
    last = START + timedelta(days=scale.b_days - 1)
    table = Table(
        f"B. Against the PACS limit: simulated PACS, {DELAY_MS} ms per C-FIND, {scale.b_days} "
        f"days = {windows} hourly windows, {len(expected)} studies",
        ["associations", "workers", "wall s", "limit s", "wall / limit", "CPU s ours",
         "CPU s PACS", "CPU floor s", "CPU ms/window: worker, aggr, redis, producer",
         "PACS saw: max concurrent", "associations", "C-FINDs",
         "same studies"],
    )
    counts = [int(n) for n in os.environ.get("BENCH_B_ASSOCIATIONS", "").split(",") if n]
    pools = [p for p in os.environ.get("BENCH_B_POOLS", "").split(",") if p] or POOLS
    with RedisServer(workdir / "redis") as redis:
        for n in counts or scale.b_associations:
            for way in pools:
                processes, pool, concurrency, per_process = workers_for(way, n)
                wd = workdir / f"{way}-{n}"
                config = {"generate": generate, "delay_ms": DELAY_MS, "record_queries": False,
                          "prepare_keys": PREPARE_KEYS}
                with SimPacs(wd / "pacs", config) as pacs:
                    env = discovery_env(redis, pacs.host, pacs.port, pacs.aet, wd,
                                        DISCOVERY_PACS_MAX_ASSOCIATIONS=str(n),
                                        DISCOVERY_WORKER_ASSOCIATIONS=str(per_process),
                                        DISCOVERY_DAY_SWEEP="false")
                    done = run_discovery(redis, wd, env, START.isoformat(), last.isoformat(),
                                         concurrency=concurrency, pool=pool,
                                         watch=[pacs.proc.pid] if pacs.proc else [],
                                         workers=processes)
                    stats = pacs.stats()
                label = f"-P {pool} -c {concurrency}"
                if per_process:
                    label += f", {per_process} shared"
                if processes > 1:
                    label = f"{processes} x ({label})"
                limit = windows * DELAY_MS / 1000 / n
                uids = sorted(csv_uids(done.csv))
                floor = (done.cpu["ours"] + done.cpu["others"]) / (os.cpu_count() or 1)
                table.add(n, label, f"{done.seconds:.2f}", f"{limit:.2f}",
                          f"{done.seconds / limit:.2f}", f"{done.cpu['ours']:.1f}",
                          f"{done.cpu['others']:.1f}", f"{floor:.2f}",
                          ", ".join(f"{done.cpu[p] * 1000 / windows:.1f}"
                                    for p in ("worker", "aggregator", "redis", "producer")),
                          stats["max_concurrent_associations"],
                          stats["total_associations"], stats["total_queries"],
                          "yes" if uids == expected else f"NO ({len(uids)} found)")
    table.notes += [
        "limit = windows x delay / associations; wall = `python -m producer --wait` start "
        "(workers and aggregator already ready) to CSV written, including the producer's start "
        "and preflight (one C-ECHO and one C-FIND, which also wait for the delay)",
        "workers: `celery -A worker worker -Q queries -P POOL -c C` (once per worker "
        "process), DISCOVERY_PACS_MAX_ASSOCIATIONS=N, DISCOVERY_DAY_SWEEP=false, "
        "`--all-studies`; 'K shared' = DISCOVERY_WORKER_ASSOCIATIONS=K: each worker process "
        "keeps K associations for its C threads",
        "PACS saw: counted by the simulated PACS itself (max concurrent associations must not "
        "exceed N; associations opened; C-FIND requests incl. the preflight's)",
        "the simulated PACS sends each C-FIND's pendings at once and its final response "
        f"{DELAY_MS} ms after the request arrived, its own work included",
        "CPU s: used while the producer ran; ours = query workers with their pool processes, "
        "the aggregator, the producer and Redis; PACS = the simulated PACS. CPU floor = "
        "(ours + PACS) / CPUs: no run on this machine can be faster, whatever the PACS allows",
    ]
    return table
