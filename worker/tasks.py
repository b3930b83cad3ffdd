"""Thin Celery tasks: turn arguments into values, call the core, classify errors for retry.

Arguments hold run ids, window keys and counts; never patient data, except the studies that a
result carries, which monitors see only as a count (``argsrepr``).
"""

from __future__ import annotations

import logging
import time
import uuid
from functools import lru_cache

import redis

from discovery import status
from discovery.aggregator import Aggregator
from discovery.dimse import PacsConnection
from discovery.errors import PermanentError, TransientError
from discovery.ledger import Ledger
from discovery.query import failed_outcome, run_window
from discovery.retry import backoff
from discovery.throttle import pace, pacs_key
from discovery.windows import parse_key
from worker.app import QUERIES, RESULTS, app, settings
from worker.session import query as query_pacs

log = logging.getLogger("discovery.worker")
UNKNOWN_RUN_RETRIES = 120


@lru_cache(maxsize=1)
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.broker_url, socket_timeout=30,
                                health_check_interval=30, **settings.broker_ssl())


#: Query tasks sent to Redis in one pipeline (the first go out before the rest are built).
DISPATCH_BATCH = 100
#: The first pipeline is smaller: the workers start on it while the rest are built.
FIRST_BATCH = 16


def dispatch(run_id: str, keys: list[str]) -> None:
    """Send one query task per window key, over one broker connection: the first
    ``FIRST_BATCH`` in one pipeline, the rest in pipelines of ``DISPATCH_BATCH`` (a transport
    without batches sends each at once)."""
    with app.producer_or_acquire() as producer:
        for part in (keys[:FIRST_BATCH], keys[FIRST_BATCH:]):
            with producer.batch(max_size=DISPATCH_BATCH):
                for key in part:
                    query_window.apply_async((run_id, key), queue=QUERIES, producer=producer)


def result_repr(run_id: str, key: str, outcome: dict, final: bool) -> dict[str, str]:
    """What monitors (Flower, events, logs) show of a result's arguments: a count, never the
    studies. Every send of ``record_result``, its retries included, must pass these, because
    Celery otherwise shows the first 1024 characters of the arguments."""
    return {
        "argsrepr": f"({run_id!r}, {key!r}, <{outcome['state']}: "
                    f"{len(outcome['studies'])} studies>, final={final})",
        "kwargsrepr": "{}",
    }


def send_result(run_id: str, key: str, outcome: dict, final: bool) -> None:
    record_result.apply_async((run_id, key, outcome, final), queue=RESULTS,
                              **result_repr(run_id, key, outcome, final))


@app.task(bind=True, name="discovery.query_window", max_retries=None)
def query_window(self, run_id: str, key: str) -> str:  # type: ignore[no-untyped-def]
    """C-FIND one window and send its outcome to the aggregator; retry transient faults."""
    client = redis_client()
    stop, state, wanted = status.gate(client, run_id)
    if stop:
        return "stopped"
    if wanted is not None and wanted != status.target(settings):
        message = (f"a worker is configured for {status.target(settings)} but the run queries "
                   f"{wanted}: give every worker the producer's DISCOVERY_PACS_HOST, "
                   "DISCOVERY_PACS_PORT, DISCOVERY_CALLED_AET and DISCOVERY_CALLING_AET")
        status.stop_run(client, run_id, message)
        log.error("run %s stopped: %s", run_id, message)
        return "stopped"
    if state == "finished":
        # A late copy (redelivered after the visibility timeout, re-sent by the watchdog):
        # the run has its answer; do not ask the PACS again.
        return "finished"
    window = parse_key(key)
    attempt = self.request.retries + 1
    started = time.monotonic()
    s = settings
    try:
        def ask(conn: PacsConnection) -> dict:
            pace(client, pacs_key("pace", s.pacs_host, s.pacs_port, s.called_aet),
                 s.pacs_max_queries_per_second)
            return run_window(conn, window, s)

        # This process's (or thread's) association, kept open for the next window
        # (worker/session.py).
        outcome = query_pacs(client, s, ask)
    except PermanentError as exc:
        # Leave the window open: --resume sends it again once the setting is fixed.
        status.stop_run(client, run_id, str(exc))
        log.error("run %s stopped: %s", run_id, exc)
        return "stopped"
    except TransientError as exc:
        outcome = failed_outcome(str(exc), time.monotonic() - started)
    except Exception as exc:
        # A bug or an unforeseen answer must not leave the window silently open until the
        # watchdog: report it as a failed attempt (retried, then failed in the report). Only
        # the type is logged at ERROR; the traceback, which may quote values, only at DEBUG.
        log.error("run %s window %s: unexpected %s in the worker", run_id, key,
                  type(exc).__name__)
        log.debug("traceback", exc_info=True)
        outcome = failed_outcome(f"unexpected {type(exc).__name__} in the worker",
                                 time.monotonic() - started)
    final = outcome["state"] != "failed" or attempt >= s.max_attempts
    log.info("run %s window %s: %s status=%s rows=%d studies=%d %.3fs attempt %d",
             run_id, key, outcome["state"],
             "none" if outcome["status"] is None else f"0x{outcome['status']:04X}",
             outcome["rows"], len(outcome["studies"]), outcome["seconds"], attempt,
             extra={"run_id": run_id, "window": key, "state": outcome["state"],
                    "status": outcome["status"],
                    "rows": outcome["rows"], "seconds": outcome["seconds"], "attempt": attempt})
    if not final:
        # The ledger expects the next attempt then; the watchdog does not send it twice.
        outcome["retry_in"] = backoff(attempt, s.retry_backoff, s.retry_backoff_max)
    send_result(run_id, key, outcome, final)
    if not final:
        raise self.retry(countdown=outcome["retry_in"])
    return outcome["state"]


@lru_cache(maxsize=1)
def aggregator() -> Aggregator:
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    return Aggregator(ledger, redis_client(), dispatch)


@app.task(bind=True, name="discovery.record_result", max_retries=UNKNOWN_RUN_RETRIES)
def record_result(self, run_id: str, key: str, outcome: dict, final: bool) -> str:  # type: ignore[no-untyped-def]
    if not aggregator().record(run_id, key, outcome, final):
        # The run's registration has not arrived yet (or was lost with a Redis flush and the
        # producer will send it again): wait for it.
        if self.request.retries >= UNKNOWN_RUN_RETRIES:
            # Not Celery's MaxRetriesExceededError: its message prints the arguments.
            log.error("run %s window %s: result dropped, the run was never registered",
                      run_id, key)
            return "dropped"
        raise self.retry(countdown=5, **result_repr(run_id, key, outcome, final))
    return "recorded"


@app.task(name="discovery.register_run")
def register_run(run_id: str, params: dict) -> str:
    aggregator().register(run_id, params)
    return "registered"


@app.task(name="discovery.control")
def control(action: str, run_id: str, nonce: str | None = None) -> str:
    aggregator().control(action, run_id, nonce or uuid.uuid4().hex)
    return action


@app.task(name="discovery.watchdog")
def watchdog() -> int:
    client = redis_client()
    return aggregator().watchdog(settings.redispatch_after, lambda: int(client.llen(QUERIES)))
