"""Shared parts of the benchmarks: scales, environments, the real cluster, tables, memory."""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from demo.cluster import ROOT, Cluster, RedisServer
from demo.servers import OrthancServer
from demo.studies import Study

PY = sys.executable


@dataclass(frozen=True)
class Scale:
    """Sizes of one benchmark run: ``full`` is what docs/benchmarks.md reports, ``quick``
    checks that everything works in a minute or two."""

    name: str
    a_days: int = 7
    a_per_day: int = 500
    b_days: int = 30
    b_associations: tuple[int, ...] = (1, 2, 4, 8, 16)
    c_sizes: tuple[int, ...] = (100_000, 1_000_000)
    d_queries: int = 200
    f_days: int = 20


SCALES = {
    "full": Scale("full"),
    "quick": Scale("quick", a_days=1, a_per_day=100, b_days=2, b_associations=(1, 4),
                   c_sizes=(10_000, 50_000), d_queries=30, f_days=2),
}


def plain_env(**extra: str) -> dict[str, str]:
    """Our environment without TCP_NODELAY (DCMTK tools read it) and without DISCOVERY_*."""
    env = {k: v for k, v in os.environ.items()
           if k != "TCP_NODELAY" and not k.startswith("DISCOVERY_")}
    env.update(extra)
    return env


def discovery_env(redis: RedisServer, host: str, port: int, aet: str, workdir: Path,
                  **extra: str) -> dict[str, str]:
    """The settings of one pacs-discovery contender (like tests/conftest.py ``make_cluster``)."""
    return {
        "DISCOVERY_PACS_HOST": host,
        "DISCOVERY_PACS_PORT": str(port),
        "DISCOVERY_CALLED_AET": aet,
        "DISCOVERY_CALLING_AET": "BENCH",
        "DISCOVERY_BROKER_URL": redis.url,
        "DISCOVERY_STATE_DIR": str(workdir / "state"),
        "DISCOVERY_OUTPUT": str(workdir / "out" / "dicom_query_results.csv"),
        **extra,
    }


@dataclass
class Discovered:
    seconds: float
    csv: Path
    returncode: int
    output: str
    #: CPU seconds used while the producer ran: ``ours`` = workers and their pool processes,
    #: the aggregator, the producer and Redis; ``others`` = the ``watch`` processes (the PACS);
    #: and ours by part: ``worker``, ``aggregator``, ``producer``, ``redis``.
    cpu: dict[str, float] = field(default_factory=dict)


def _cpu_of(pid: int) -> float:
    """utime + stime of one live process, in seconds (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pids: Iterable[int]) -> dict[int, float]:
    """CPU seconds of every live process in the trees rooted at ``pids``, by pid."""
    out: dict[int, float] = {}
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out[pid] = _cpu_of(pid)
            try:
                todo += children(pid)
            except OSError:
                pass
    return out


def _used(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def run_discovery(redis: RedisServer, workdir: Path, env: Mapping[str, str], start: str,
                  end: str, concurrency: int, pool: str | None = None,
                  producer_args: Sequence[str] = ("--all-studies",),
                  watch: Sequence[int] = (), workers: int = 1) -> Discovered:
    """Start ``workers`` query workers (``-c concurrency``, ``-P pool``) and the aggregator,
    wait until all are ready, then time ``python -m producer --start --end --wait`` from its
    start to its exit (the CSV is written before the producer sees the run finished). CPU
    seconds used meanwhile are counted for our processes and for the ``watch`` pids (the PACS)."""
    redis.client().flushall()
    out = workdir / "out" / "dicom_query_results.csv"
    with Cluster(workdir, {**plain_env(), **env}) as cluster:
        for _ in range(workers):
            cluster.worker(concurrency=concurrency, pool=pool)
        cluster.aggregator()
        cluster.wait_ready(120)
        parts = {"worker": [p.pid for p in cluster.processes if p.name == "worker"],
                 "aggregator": [p.pid for p in cluster.processes if p.name == "aggregator"],
                 "redis": [redis.proc.pid] if redis.proc else []}
        before = {part: tree_cpu(pids) for part, pids in parts.items()}
        others0 = tree_cpu(watch)
        producer0 = os.times()
        started = time.time()
        done = cluster.producer("--start", start, "--end", end, "--wait", "--output", str(out),
                                *producer_args, timeout=1800)
        producer1 = os.times()
        # Until the CSV was written (its mtime), not until the producer's next poll noticed.
        seconds = (out.stat().st_mtime if out.exists() else time.time()) - started
        producer_cpu = (producer1.children_user + producer1.children_system
                        - producer0.children_user - producer0.children_system)
        cpu = {part: _used(before[part], tree_cpu(pids)) for part, pids in parts.items()}
        cpu["producer"] = producer_cpu
        cpu["ours"] = sum(cpu.values())
        cpu["others"] = _used(others0, tree_cpu(watch))
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"pacs-discovery failed ({done.returncode}):\n{done.stdout}\n"
                               f"{done.stderr}\n{cluster.logs()[-4000:]}")
    return Discovered(seconds, out, done.returncode, done.stdout, cpu)


def csv_uids(path: Path) -> list[str]:
    """The Study UID column of a result CSV (the header names the column)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [row["Study UID"] for row in csv.DictReader(fh)]


def seed_orthanc(server: OrthancServer, studies: Sequence[Study], threads: int = 4) -> int:
    """Upload over REST in a few parallel streams (seeding is not what we measure)."""
    chunks = [studies[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(server.store, chunks))


def orthanc_as_shipped(workdir: Path) -> OrthancServer:
    """Orthanc as Debian ships it: no TCP_NODELAY in its environment."""
    server = OrthancServer(workdir, aet="ORTHANC", encoding="Utf8")
    server.tcp_nodelay = False
    return server


def vm_kib(pid: int, field_name: str = "VmHWM") -> int:
    """A ``/proc/<pid>/status`` memory field in KiB (VmHWM = peak resident set size)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


def children(pid: int) -> list[int]:
    """Direct children of a process (the Celery pool processes of a worker)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


@dataclass
class Table:
    """A result table: printed aligned, pasted into docs/benchmarks.md as Markdown."""

    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        if not self.rows:
            print(f"  {self.title}\n  " + " | ".join(self.headers), flush=True)
        self.rows.append([_cell(c) for c in cells])
        print("  " + " | ".join(self.rows[-1]), flush=True)

    def markdown(self) -> str:
        widths = [max(len(h), *(len(r[i]) for r in self.rows)) if self.rows else len(h)
                  for i, h in enumerate(self.headers)]

        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

        out = [f"### {self.title}", "", line(self.headers),
               "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        out += [line(r) for r in self.rows]
        if self.notes:
            out += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(out)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
