"""E. pynetdicom's polling: the CPU a process spends holding associations, with pynetdicom's
own threads (they wake every millisecond) against discovery/reactor.py (they wait for work).

Each variant runs in a fresh process (the reactor change is process-wide): it opens N
associations to the simulated PACS and measures its own CPU for a few seconds while they are
idle (a worker between windows) or while each waits for an answer (the PACS's delay).
``python -m bench.e_polling --child ...`` is that process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the child imports none of this: discovery.dimse installs reactor.py
    from bench.b_limit import SimPacs
    from bench.common import Scale, Table

MEASURE_S = 4.0
COUNTS = (1, 8)


def run(scale: Scale, workdir: Path) -> Table:
    from bench.b_limit import SimPacs
    from bench.common import Table

    table = Table(
        "E. CPU of a process holding N associations (% of one core, over "
        f"{MEASURE_S:g} s), pynetdicom's own threads against discovery/reactor.py",
        ["associations", "state", "pynetdicom's threads % CPU", "reactor.py % CPU", "ratio"],
    )
    config = {"generate": {"start": "20240101", "days": 1, "per_hour": 1, "seed": 1},
              "delay_ms": 60_000, "record_queries": False}
    with SimPacs(workdir / "pacs", config) as pacs:
        for n in COUNTS:
            for state in ("idle", "waiting"):
                stock, ours = (_child(pacs, n, state, reactor) for reactor in (False, True))
                table.add(n, "idle (between windows)" if state == "idle"
                          else "waiting for the PACS's answer", f"{stock:.1f}", f"{ours:.1f}",
                          f"{stock / ours:.1f}" if ours else "")
    table.notes += [
        "a fresh process per cell: `python -m bench.e_polling --child --associations N "
        "--state idle|waiting [--reactor]` (pynetdicom's AE directly; --reactor installs "
        "discovery/reactor.py first, as discovery/dimse.py does)",
        "waiting: each association has one C-FIND in flight that the simulated PACS answers "
        "only after 60 s",
    ]
    return table


def _child(pacs: SimPacs, n: int, state: str, reactor: bool) -> float:
    from bench.common import PY
    from demo.cluster import ROOT

    argv = [PY, "-m", "bench.e_polling", "--child", "--host", pacs.host, "--port",
            str(pacs.port), "--aet", pacs.aet, "--associations", str(n), "--state", state]
    done = subprocess.run(argv + (["--reactor"] if reactor else []), cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["cpu_percent"])


def child(args: argparse.Namespace) -> int:
    from pydicom import Dataset
    from pynetdicom import AE, _config
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    if "discovery.reactor" in sys.modules:
        # Imported with something else of ours (discovery.dimse installs it): the column
        # "pynetdicom's threads" would measure reactor.py too.
        raise SystemExit("bench.e_polling: discovery.reactor was imported before the child "
                         "chose; import nothing of discovery in the child but reactor.py")
    if args.reactor:
        from discovery import reactor

        reactor.install()
    _config.LOG_RESPONSE_IDENTIFIERS = _config.LOG_REQUEST_IDENTIFIERS = False
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(FIND)
    ae.dimse_timeout = ae.network_timeout = 120
    assocs = [ae.associate(args.host, args.port, ae_title=args.aet)
              for _ in range(args.associations)]
    if not all(a.is_established for a in assocs):
        raise SystemExit("bench.e_polling: an association was not established")
    if args.state == "waiting":
        query = Dataset()
        query.QueryRetrieveLevel, query.StudyDate, query.StudyInstanceUID = "STUDY", "", ""

        def ask(assoc) -> None:  # type: ignore[no-untyped-def]
            for _ in assoc.send_c_find(query, FIND):
                pass

        for a in assocs:
            threading.Thread(target=ask, args=(a,), daemon=True).start()
    time.sleep(0.5)
    before, t0 = os.times(), time.monotonic()
    time.sleep(MEASURE_S)
    after, t1 = os.times(), time.monotonic()
    cpu = (after.user + after.system - before.user - before.system) / (t1 - t0) * 100
    print(json.dumps({"cpu_percent": round(cpu, 2)}), flush=True)
    for a in assocs:
        a.abort()
    os._exit(0)  # the waiting C-FINDs' threads need not be joined


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.e_polling", description=__doc__)
    parser.add_argument("--child", action="store_true", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--aet", required=True)
    parser.add_argument("--associations", type=int, default=8)
    parser.add_argument("--state", choices=("idle", "waiting"), default="idle")
    parser.add_argument("--reactor", action="store_true")
    return child(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
