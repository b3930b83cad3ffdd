"""C. The aggregator: synthetic studies through the real results path - ``record_result``
messages in Redis for a registered run, as query workers send them (one per hourly window),
the real aggregator (``celery -A worker worker -Q results -c 1``), the ledger, the CSV.

The messages are sent first (all of them wait in Redis), then the aggregator starts: on 2
cores a sender running at the same time would measure the sender too. Studies per second =
studies / (the aggregator registered the run, ``runs.created`` in its ledger -> CSV written, by
the CSV's mtime): every result message, the ledger, the CSV and the coverage report. Peak
RSS is ``VmHWM`` of the aggregator's main process and of its pool child, read from /proc after
the CSV is written; a fresh aggregator per size, so each peak is that size's own.

``BENCH_C_SIZES=100000`` (comma-separated) runs only those sizes, solo only: a quick look at one
size while working on the aggregator; the documented tables use the scale's sizes.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path

from bench.common import PY, Scale, Table, children, csv_uids, plain_env, vm_kib
from demo.cluster import ROOT, Cluster, RedisServer

PER_WINDOW = 120
#: The documented command (prefork, one pool child) and ``-P solo`` (tasks run in the main
#: process: no hand-over of each message to a child through a pipe).
POOLS = ("prefork", "solo")


def run(scale: Scale, workdir: Path) -> Table:
    table = Table(
        f"C. Aggregator: synthetic studies through Redis, the aggregator and the CSV "
        f"({PER_WINDOW} studies per window message)",
        ["aggregator pool", "studies", "windows", "send s", "aggregator s", "studies/s",
         "peak RSS main MB", "peak RSS pool child MB", "CSV rows"],
    )
    with RedisServer(workdir / "redis") as redis:
        # The documented prefork aggregator at the smaller size only (the full run stays well
        # under 20 minutes); solo, the faster one, at every size.
        runs = [("prefork", scale.c_sizes[0])] + [("solo", size) for size in scale.c_sizes]
        if os.environ.get("BENCH_C_SIZES"):
            runs = [("solo", int(n)) for n in os.environ["BENCH_C_SIZES"].split(",")]
        for pool, size in runs:
            redis.client().flushall()
            wd = workdir / f"c-{pool}-{size}"
            out = wd / "out" / "all.csv"
            env = {**plain_env(), "DISCOVERY_BROKER_URL": redis.url,
                   "DISCOVERY_STATE_DIR": str(wd / "state"), "DISCOVERY_OUTPUT": str(out)}
            with Cluster(wd, env) as cluster:
                feed = subprocess.run(
                    [PY, "-m", "bench.c_feed", "--studies", str(size), "--per-window",
                     str(PER_WINDOW), "--output", str(out)],
                    cwd=ROOT, env=cluster.env, capture_output=True, text=True, check=True)
                _, first, last, windows, sent = feed.stdout.split()
                agg = cluster.aggregator(pool=pool)
                deadline = time.monotonic() + 1800
                while not out.exists():
                    if not agg.alive() or time.monotonic() > deadline:
                        raise RuntimeError(f"no CSV: {cluster.logs()[-3000:]}")
                    time.sleep(0.2)
                written = out.stat().st_mtime
                main_kib = vm_kib(agg.pid)
                child_kib = max((vm_kib(c) for c in children(agg.pid)), default=0)
            rows = len(csv_uids(out))
            with sqlite3.connect(wd / "state" / "ledger.sqlite3") as db:
                registered = db.execute("SELECT created FROM runs").fetchone()[0]
            seconds = written - registered
            table.add(pool, f"{size:,}", windows, f"{float(last) - float(first):.1f}",
                      f"{seconds:.1f}", f"{size / seconds:,.0f}", f"{main_kib / 1024:.0f}",
                      f"{child_kib / 1024:.0f}",
                      f"{rows:,}" + ("" if rows == size == int(sent) else " (WRONG)"))
    table.notes += [
        "send s: the sender (`python -m bench.c_feed`, same task and queue as the workers) "
        "from its first message to its last, before the aggregator starts; aggregator s: "
        "run registered by the aggregator (its first message) -> CSV written",
        "`--all-studies`: every study is a CSV row; day sweep off (no duplicate answers)",
        "aggregator: `celery -A worker worker -Q results -c 1` runs the solo pool (worker/app.py "
        "sets it for the results queue); the prefork row adds `-P prefork` for comparison; "
        "with solo there is no pool child (0 MB)",
    ]
    return table
