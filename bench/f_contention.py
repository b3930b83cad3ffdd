"""F. Workers that outnumber the slots: more pool processes or threads want an association
than ``DISCOVERY_PACS_MAX_ASSOCIATIONS`` allows (2 here), against the simulated PACS of B
(50 ms per C-FIND). They take turns (worker/session.py): a holder hands its slot over to a
worker that has waited, after holding it ``DISCOVERY_ASSOCIATION_HOLD_SECONDS``. Reported:
wall time / limit, as in B, and the associations the PACS saw opened. The first row has as
many pool processes as slots (nobody waits): the reference.

The last row runs ``DISCOVERY_ASSOCIATION_HOLD_SECONDS=0`` (a hand-over after every query once
someone has waited), the behaviour before the hold time.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from bench.b_limit import DELAY_MS, PER_HOUR, PREPARE_KEYS, START, SimPacs
from bench.common import Scale, Table, csv_uids, discovery_env, run_discovery
from demo.cluster import RedisServer
from demo.simscp import generate_studies

SLOTS = 2
#: label, worker processes, pool, -c, DISCOVERY_WORKER_ASSOCIATIONS, hold seconds (None: default)
WAYS: tuple[tuple[str, int, str, int, int, str | None], ...] = (
    ("1 x (-P prefork -c 2): as many as slots", 1, "prefork", 2, 0, None),
    ("4 x (-P prefork -c 4): 16 for 2 slots", 4, "prefork", 4, 0, None),
    ("2 x (-P threads -c 8): 16 for 2 slots", 2, "threads", 8, 0, None),
    ("2 x (-P threads -c 8, 4 shared): 4 sessions for 2 slots", 2, "threads", 8, 4, None),
    ("4 x (-P prefork -c 4), hold 0 s", 4, "prefork", 4, 0, "0"),
)


def run(scale: Scale, workdir: Path) -> Table:
    days = scale.f_days
    generate = {"start": START.strftime("%Y%m%d"), "days": days, "per_hour": PER_HOUR,
                "seed": 3}
    expected = sorted(s["study_uid"] for s in generate_studies(**generate))  # type: ignore[arg-type]
    windows = 24 * days
    limit = windows * DELAY_MS / 1000 / SLOTS
    last = START + timedelta(days=days - 1)
    table = Table(
        f"F. Workers that outnumber the slots: simulated PACS, {DELAY_MS} ms per C-FIND, "
        f"DISCOVERY_PACS_MAX_ASSOCIATIONS={SLOTS}, {days} days = {windows} hourly windows",
        ["workers", "wall s", "limit s", "wall / limit", "PACS saw: max concurrent",
         "associations", "C-FINDs", "same studies"],
    )
    with RedisServer(workdir / "redis") as redis:
        for n, (label, processes, pool, concurrency, shared, hold) in enumerate(WAYS):
            wd = workdir / f"way{n}"
            config = {"generate": generate, "delay_ms": DELAY_MS, "record_queries": False,
                      "prepare_keys": PREPARE_KEYS}
            extra = {"DISCOVERY_ASSOCIATION_HOLD_SECONDS": hold} if hold is not None else {}
            with SimPacs(wd / "pacs", config) as pacs:
                env = discovery_env(redis, pacs.host, pacs.port, pacs.aet, wd,
                                    DISCOVERY_PACS_MAX_ASSOCIATIONS=str(SLOTS),
                                    DISCOVERY_WORKER_ASSOCIATIONS=str(shared),
                                    DISCOVERY_DAY_SWEEP="false", **extra)
                done = run_discovery(redis, wd, env, START.isoformat(), last.isoformat(),
                                     concurrency=concurrency, pool=pool, workers=processes)
                stats = pacs.stats()
            uids = sorted(csv_uids(done.csv))
            table.add(label, f"{done.seconds:.2f}", f"{limit:.2f}",
                      f"{done.seconds / limit:.2f}", stats["max_concurrent_associations"],
                      stats["total_associations"], stats["total_queries"],
                      "yes" if uids == expected else f"NO ({len(uids)} found)")
    table.notes += [
        "limit = windows x delay / slots; wall as in B (producer start to CSV written)",
        "workers: `celery -A worker worker -Q queries -P POOL -c C`, once per worker process; "
        "'K shared' = DISCOVERY_WORKER_ASSOCIATIONS=K (at most the limit: 2 of the 4 open)",
        "each pool process or thread that waits for a slot holds one window meanwhile; once "
        "the queue is empty every waiter still needs a turn for it: a tail of about "
        "(waiters / slots) hand-overs that a longer run does not grow",
    ]
    return table
