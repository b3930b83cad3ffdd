"""``python -m bench [A|B|C|D|E|F ...] [--quick] [--workdir DIR]``: run benchmarks, print tables.

A: against the seed's sequential way and a findscu loop (Orthanc, 7 days x 500 studies).
B: against the PACS limit (simulated PACS, 50 ms per C-FIND, 1 to 16 associations).
C: the aggregator (100k and 1M studies through Redis, the aggregator and the CSV).
D: milliseconds per C-FIND of our client against findscu.
E: CPU of a process holding 1 or 8 associations, pynetdicom's polling against reactor.py.
F: workers that outnumber the association slots (16 pool processes or threads for 2).
Results, commands and dates: docs/benchmarks.md."""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.common import SCALES, Table, git_revision

MODULES = {"A": "bench.a_seed", "B": "bench.b_limit", "C": "bench.c_aggregator",
           "D": "bench.d_client", "E": "bench.e_polling", "F": "bench.f_contention"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # No argparse choices: with nargs="*" they reject the empty default (run all).
    parser.add_argument("which", nargs="*", metavar="A|B|C|D|E|F",
                        help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, to check that everything works")
    parser.add_argument("--workdir", type=Path,
                        help="keep servers' data and logs here (default: a temp dir, removed)")
    args = parser.parse_args(argv)
    which = [w.upper() for w in args.which] or list(MODULES)
    unknown = [w for w in which if w not in MODULES]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}: choose from {', '.join(MODULES)}")
    scale = SCALES["quick" if args.quick else "full"]
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    header = (f"{command.strip()}  |  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  |  "
              f"git {git_revision()}  |  {os.cpu_count()} CPUs, load "
              f"{os.getloadavg()[0]:.2f}  |  Python {platform.python_version()}  |  "
              f"scale {scale.name}")
    print(header, flush=True)
    tables: list[Table] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pacs-bench-") as tmp:
        base = args.workdir or Path(tmp)
        for key in which:
            module = importlib.import_module(MODULES[key])
            print(f"\n== {key} ==", flush=True)
            t0 = time.perf_counter()
            tables.append(module.run(scale, base / key))
            print(f"({key} took {time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\n{header}\n")
    for table in tables:
        print(table.markdown() + "\n")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
