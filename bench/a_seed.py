"""A. Against the seed's way: the baseline, a findscu loop and pacs-discovery with 1, 2 and 4
workers, over the same hourly windows of the same Orthanc (as Debian ships it: no TCP_NODELAY
in its environment), side by side in one run. Every contender must find every seeded study."""

from __future__ import annotations

import subprocess
import time
from datetime import date, timedelta
from pathlib import Path

from pydicom import dcmread

from bench.common import (
    PY,
    Scale,
    Table,
    csv_uids,
    discovery_env,
    orthanc_as_shipped,
    plain_env,
    run_discovery,
    seed_orthanc,
)
from demo.cluster import ROOT, RedisServer
from demo.servers import OrthancServer
from demo.studies import generate_studies

START = date(2024, 1, 1)
WORKERS = (1, 2, 4)


def findscu_loop(server: OrthancServer, days: int, outdir: Path) -> float:
    """One ``findscu`` process per hourly window (one association each), responses extracted
    to files (``-X``); returns the wall time of the loop."""
    started = time.perf_counter()
    for d in range(days):
        day = (START + timedelta(days=d)).strftime("%Y%m%d")
        for hour in range(24):
            target = outdir / f"{day}-{hour:02d}"
            target.mkdir(parents=True)
            subprocess.run(
                ["findscu", "-S", "-aet", "FINDSCU", "-aec", server.aet,
                 "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyDate={day}",
                 "-k", f"StudyTime={hour:02d}-{hour:02d}5959.999999",
                 "-k", "AccessionNumber", "-k", "PatientID", "-k", "StudyInstanceUID",
                 "-k", "StudyDescription", "-X", "-od", str(target),
                 server.host, str(server.port)],
                env=plain_env(), check=True, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
    return time.perf_counter() - started


def findscu_uids(outdir: Path) -> list[str]:
    return [str(dcmread(p).StudyInstanceUID) for p in sorted(outdir.rglob("rsp*.dcm"))]


def run(scale: Scale, workdir: Path) -> Table:
    studies = generate_studies(START, days=scale.a_days, per_day=scale.a_per_day, seed=6)
    expected = sorted(s["study_uid"] for s in studies)
    last = START + timedelta(days=scale.a_days - 1)
    table = Table(
        f"A. Against the seed's way: Orthanc 1.10 without TCP_NODELAY, {scale.a_days} days x "
        f"{scale.a_per_day} studies ({24 * scale.a_days} hourly windows)",
        ["contender", "wall s", "speed-up vs baseline", "CPU s ours", "CPU s Orthanc",
         "studies found", "same studies"],
    )
    with orthanc_as_shipped(workdir / "orthanc") as server, \
            RedisServer(workdir / "redis") as redis:
        seed_orthanc(server, studies)
        print(f"A: Orthanc seeded with {len(studies)} studies", flush=True)
        out = workdir / "baseline.csv"
        started = time.perf_counter()
        subprocess.run([PY, "-m", "bench.baseline", "--port", str(server.port), "--aet",
                        server.aet, "--start", START.isoformat(), "--days", str(scale.a_days),
                        "--output", str(out)], cwd=ROOT, env=plain_env(), check=True,
                       stdout=subprocess.DEVNULL)
        baseline = time.perf_counter() - started
        uids = csv_uids(out)
        table.add("baseline (seed's way, pynetdicom)", f"{baseline:.2f}", "1.00", "", "",
                  len(uids), _same(uids, expected))

        seconds = findscu_loop(server, scale.a_days, workdir / "findscu")
        uids = findscu_uids(workdir / "findscu")
        table.add("findscu loop (DCMTK 3.6.7)", f"{seconds:.2f}", f"{baseline / seconds:.2f}",
                  "", "", len(uids), _same(uids, expected))

        # The default (with the day sweeps: every study is fetched a second time, by its
        # day's sweep), then the baseline's own work: hourly windows only.
        for workers, sweep in [(w, True) for w in WORKERS] + [(WORKERS[-1], False)]:
            wd = workdir / f"discovery-{workers}{'' if sweep else '-nosweep'}"
            env = discovery_env(redis, server.host, server.port, server.aet, wd,
                                DISCOVERY_PACS_MAX_ASSOCIATIONS=str(workers),
                                DISCOVERY_DAY_SWEEP=str(sweep).lower())
            done = run_discovery(redis, wd, env, START.isoformat(), last.isoformat(), workers,
                                 watch=[server.proc.pid] if server.proc else [])
            uids = csv_uids(done.csv)
            label = f"pacs-discovery, {workers} worker{'s' if workers > 1 else ''}"
            table.add(label + ("" if sweep else ", no day sweep (the baseline's work)"),
                      f"{done.seconds:.2f}", f"{baseline / done.seconds:.2f}",
                      f"{done.cpu['ours']:.1f}", f"{done.cpu['others']:.1f}", len(uids),
                      _same(uids, expected))
    table.notes += [
        "wall time of each contender from its process start to its output written; "
        "pacs-discovery: from `python -m producer --wait` start (workers already ready) to the "
        "CSV written, including preflight and, by default, the day sweeps (one more C-FIND "
        "per day, which fetches every study of the day a second time: the untimed ones are "
        "found only so); `DISCOVERY_DAY_SWEEP=false` does the baseline's work, hourly windows "
        "only",
        "pacs-discovery with N workers: `celery -A worker worker -Q queries -c N`, "
        "DISCOVERY_PACS_MAX_ASSOCIATIONS=N, `--all-studies` (the baseline lists every study)",
        "same studies: the set of Study UIDs equals the seeded set, each exactly once",
        "CPU s: used while the producer ran; ours = query workers with their pool processes, "
        "the aggregator, the producer and Redis; Orthanc = the PACS",
    ]
    return table


def _same(uids: list[str], expected: list[str]) -> str:
    if sorted(uids) == expected:
        return "yes"
    return f"NO ({len(set(expected) - set(uids))} missing, {len(uids) - len(set(uids))} twice)"
