"""Benchmark C's sender: registers one run and sends one ``discovery.record_result`` per hourly
window, as the query workers would (same task, same queue, same outcome dicts), with
``studies`` synthetic studies spread evenly over the windows.

``python -m bench.c_feed --studies N --per-window K --output CSV`` with ``DISCOVERY_BROKER_URL``
set; prints ``sent <first send time> <last send time>`` (``time.time()``) and the window count.
"""

from __future__ import annotations

import argparse
import math
import time
from datetime import datetime, timedelta

START = datetime(2020, 1, 1)


def outcome(window_no: int, key: str, count: int, first: int) -> dict:
    """A complete window with ``count`` studies numbered from ``first``; one in three lacks a
    description (blank or absent), like the demo data."""
    day, span = key.split("/")
    lo = int(span[:2]) * 3600
    studies = []
    for i in range(count):
        n = first + i
        t = lo + (i * 3600) // max(count, 1)
        kind = n % 3
        description = "" if kind == 2 else "CT THORAX"
        studies.append({
            "uid": f"1.2.826.0.1.3680043.10.543.9.{n}",
            "accession": f"A{n:09d}",
            "date": day,
            "time": f"{t // 3600:02d}{t // 60 % 60:02d}{t % 60:02d}",
            "patient_id": f"P{n % 99991:05d}",
            "description": description,
            "desc": "present" if description else ("absent" if n % 2 else "blank"),
        })
    return {"state": "complete", "status": 0, "rows": count, "studies": studies,
            "anomalies": {}, "error": None, "seconds": 0.05}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.c_feed", description=__doc__)
    parser.add_argument("--studies", type=int, required=True)
    parser.add_argument("--per-window", type=int, default=120)
    parser.add_argument("--output", required=True)
    parser.add_argument("--run-id", default="bench-c")
    args = parser.parse_args(argv)

    from discovery.aggregator import planned_windows
    from worker.app import RESULTS, app
    from worker.tasks import record_result

    days = math.ceil(args.studies / args.per_window / 24)
    params = {
        "start": START.isoformat(), "end": (START + timedelta(days=days)).isoformat(),
        "window_minutes": 60, "day_sweep": False, "all_studies": True, "excel_safe": False,
        "output": args.output, "pacs": "BENCH@127.0.0.1:104", "calling_aet": "BENCH",
        "pacs_max_results": 0,
    }
    keys = [w.key for w in planned_windows(params)]
    base, extra = divmod(args.studies, len(keys))
    first = time.time()
    app.send_task("discovery.register_run", (args.run_id, params), queue=RESULTS)
    n = 0
    with app.producer_or_acquire() as producer:
        for i, key in enumerate(keys):
            count = base + (i < extra)
            out = outcome(i, key, count, n)
            n += count
            record_result.apply_async(
                (args.run_id, key, out, True), queue=RESULTS, producer=producer,
                argsrepr=f"({args.run_id!r}, {key!r}, <{count} studies>)", kwargsrepr="{}",
            )
    print(f"sent {first:.6f} {time.time():.6f} {len(keys)} {n}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
