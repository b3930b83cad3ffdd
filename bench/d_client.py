"""D. Client overhead: milliseconds per C-FIND of our client (:class:`PacsConnection`) against
DCMTK findscu, on the same one-hour window of the same Orthanc (without TCP_NODELAY in its
environment), with and without TCP_NODELAY on our socket, one association per window against
one association reused for many windows."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

from bench.common import Scale, Table, median, orthanc_as_shipped, plain_env, seed_orthanc
from demo.servers import OrthancServer
from demo.studies import generate_studies
from discovery.dimse import PacsConnection, study_query
from discovery.settings import Settings, load_settings
from discovery.windows import Window

DAY = date(2024, 1, 1)
WINDOW = Window(DAY, 10 * 3600, 11 * 3600)


def _findscu(server: OrthancServer, repeat: int = 1) -> list[str]:
    return ["findscu", "-S", "-aet", "FINDSCU", "-aec", server.aet, "--repeat", str(repeat),
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyDate={WINDOW.study_date()}",
            "-k", f"StudyTime={WINDOW.study_time()}", "-k", "AccessionNumber",
            "-k", "PatientID", "-k", "StudyInstanceUID", "-k", "StudyDescription",
            server.host, str(server.port)]


def _times(n: int, once: Callable[[], None]) -> list[float]:
    once()  # warm up (imports, Orthanc's caches)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        once()
        out.append((time.perf_counter() - t) * 1000)
    return out


def run(scale: Scale, workdir: Path) -> Table:
    n = scale.d_queries
    studies = generate_studies(DAY, days=1, per_day=500, seed=4)
    expected = sum(1 for s in studies if WINDOW.lo <= _seconds(s["study_time"]) < WINDOW.hi)
    table = Table(
        f"D. Milliseconds per C-FIND, window {WINDOW.key} ({expected} studies) on Orthanc "
        f"without TCP_NODELAY, {n} queries each",
        ["client", "association", "TCP_NODELAY", "ms/query (median)", "ms/query (mean)",
         "vs findscu"],
    )
    with orthanc_as_shipped(workdir / "orthanc") as server:
        seed_orthanc(server, studies)
        env = plain_env()

        def findscu_once() -> None:
            subprocess.run(_findscu(server), env=env, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)

        per_process = _times(n, findscu_once)
        subprocess.run(_findscu(server, n), env=env, check=True, capture_output=True)
        t = time.perf_counter()
        subprocess.run(_findscu(server, n), env=env, check=True, capture_output=True)
        repeated = (time.perf_counter() - t) * 1000 / n
        table.add("findscu", "one per window (one process each)", "no",
                  f"{median(per_process):.1f}", f"{sum(per_process) / n:.1f}", "")
        table.add("findscu --repeat", "one for all windows", "no", "", f"{repeated:.1f}", "")

        for nodelay in (True, False):
            settings = load_settings(pacs_host=server.host, pacs_port=server.port,
                                     called_aet=server.aet, calling_aet="BENCH",
                                     tcp_nodelay=nodelay)
            per_window, reused = _ours(settings, n, expected)
            flag = "yes" if nodelay else "no"
            table.add("PacsConnection", "one per window", flag, f"{median(per_window):.1f}",
                      f"{sum(per_window) / n:.1f}",
                      f"{median(per_window) - median(per_process):+.1f} ms")
            table.add("PacsConnection", "one for all windows", flag, f"{median(reused):.1f}",
                      f"{sum(reused) / n:.1f}", f"{sum(reused) / n - repeated:+.1f} ms")
    table.notes.append(f"wrong answers (not Success with all {expected} rows) from our client: "
                       f"{len(WRONG)}" + (f" {WRONG[:5]}" if WRONG else ""))
    table.notes += [
        "findscu per window includes starting the process; `--repeat` gives only the mean",
        "vs findscu: one association per window against findscu per process (medians), "
        "reused association against `findscu --repeat` (means)",
    ]
    return table


def _ours(settings: Settings, n: int, expected: int) -> tuple[list[float], list[float]]:
    """ms per C-FIND with one association per window, then with one for all windows."""
    query = study_query(WINDOW)

    def fresh() -> None:
        with PacsConnection(settings) as conn:
            _check(conn.find(query), expected)

    per_window = _times(n, fresh)
    conn = PacsConnection(settings)
    try:
        reused = _times(n, lambda: _check(conn.find(query), expected))
    finally:
        conn.close()
    return per_window, reused


#: Answers that were not Success with every expected row (status, rows, undecodable, error).
WRONG: list[tuple] = []


def _check(result, expected: int) -> None:  # type: ignore[no-untyped-def]
    """Count, do not stop at, a wrong answer: it is a finding (and shows in the table)."""
    if result.status != 0 or len(result.rows) != expected:
        WRONG.append((result.status, len(result.rows), result.undecodable, result.error))
        print(f"  wrong answer: status {result.status}, {len(result.rows)} rows, "
              f"{result.undecodable} undecodable, error {result.error}", flush=True)


def _seconds(tm: str | None) -> int:
    from discovery.windows import parse_tm

    value = parse_tm(tm)
    return -1 if value is None else int(value)
