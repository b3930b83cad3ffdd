"""The Celery app and its configuration. Tasks live in :mod:`worker.tasks`.

* queue ``queries``: one task per window; workers run C-FIND
  (``celery -A worker worker -Q queries``).
* queue ``results``: the aggregator, the single writer of the ledger
  (``celery -A worker worker -Q results -c 1``).

Tasks are idempotent, acknowledged late and prefetched one at a time, so a killed worker's
task is delivered again, and the ledger makes the second delivery harmless. Redis must run with
``maxmemory-policy noeviction``: an evicted message is a lost window until the watchdog notices.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys

from celery import Celery, signals

from discovery import logs
from discovery.settings import SettingsError, get_settings
from worker import broker

QUERIES = "queries"
RESULTS = "results"

try:
    settings = get_settings()
except SettingsError as exc:
    print(f"pacs-discovery: {exc}", file=sys.stderr)
    raise SystemExit(2) from None


def _guard_flower(argv: list[str]) -> None:
    """``celery -A worker flower`` shows every task: never without a password, and on the
    loopback interface unless FLOWER_ADDRESS says otherwise. FLOWER_BASIC_AUTH may come from
    the environment or from ``.env`` (Flower itself reads only the environment)."""
    if "flower" not in argv[1:]:
        return
    if not os.environ.get("FLOWER_BASIC_AUTH"):
        from dotenv import dotenv_values

        value = dotenv_values(".env").get("FLOWER_BASIC_AUTH")
        if value:
            os.environ["FLOWER_BASIC_AUTH"] = value
    given = any(a.startswith(("--basic-auth", "--basic_auth", "--auth")) for a in argv)
    auth = os.environ.get("FLOWER_BASIC_AUTH", "")
    if not given and not all(":" in pair and pair.split(":", 1)[0] and pair.split(":", 1)[1]
                             for pair in auth.split(",")):
        print("pacs-discovery: Flower refuses to start without credentials: set "
              "FLOWER_BASIC_AUTH=user:password (environment or .env)", file=sys.stderr)
        raise SystemExit(2)
    os.environ.setdefault("FLOWER_ADDRESS", "127.0.0.1")


def consumes_results(argv: list[str]) -> bool:
    """Whether this is the aggregator's command line (``-Q results`` or ``--queues=results``)."""
    for i, arg in enumerate(argv):
        value = None
        if arg in ("-Q", "--queues") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--queues="):
            value = arg.split("=", 1)[1]
        elif arg.startswith("-Q") and len(arg) > 2:
            value = arg[2:]
        if value is not None and RESULTS in value.split(","):
            return True
    return False


def pool_given(argv: list[str]) -> bool:
    """Whether the command line names a pool (``-P x``, ``-Px``, ``--pool x``, ``--pool=x``)."""
    return any(a in ("-P", "--pool") or a.startswith(("--pool=", "-P")) for a in argv[1:])


_guard_flower(sys.argv)
broker.install()  # before the app's first connection: one redis-py client per channel
app = Celery("pacs_discovery", broker=settings.broker_url, include=["worker.tasks"])
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    result_backend=None,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue=QUERIES,
    task_routes={
        "discovery.query_window": {"queue": QUERIES},
        "discovery.*": {"queue": RESULTS},
    },
    broker_transport_options={
        # Longer than the longest task plus its wait: a lease wait, a slow C-FIND, a backoff.
        "visibility_timeout": settings.visibility_timeout,
        # Hand on messages past their visibility timeout within seconds; kombu's own default
        # looks only every 100 s (interval 10 x throttle 10).
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 4)),
        "unacked_restore_throttle": 1,
    },
    broker_use_ssl=settings.broker_ssl() or False,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    # Task events cost every task three extra messages (received, started, succeeded): off
    # unless a monitor asks. Flower asks (it sends ``enable_events`` every few seconds while it
    # runs), as does ``celery -A worker control enable_events``. See docs/benchmarks.md.
    worker_send_task_events=False,
    task_send_sent_event=False,
    worker_cancel_long_running_tasks_on_connection_loss=False,
    worker_hijack_root_logger=False,
)
if consumes_results(sys.argv) and not pool_given(sys.argv):
    # The aggregator runs one task at a time anyway: the solo pool runs it in the main process
    # and saves the hand-over to a pool child (docs/benchmarks.md C). A pool on the command
    # line wins; Celery itself would prefer this setting to an explicit `-P prefork`, which it
    # cannot tell from its default.
    app.conf.worker_pool = "solo"


@signals.setup_logging.connect
def _setup_logging(**_: object) -> None:
    logs.setup(settings.log_level, settings.log_format)


@signals.worker_init.connect
def _check_state_dir(sender: object = None, **_: object) -> None:
    """The aggregator (the worker consuming ``results``) stops at start, with one line naming
    DISCOVERY_STATE_DIR, when it cannot create its ledger there; otherwise every result would
    fail later, one traceback at a time, while the producer waits. Runs before any message is
    taken, in the main process (the connection is closed again before the pool forks)."""
    if RESULTS not in set(app.amqp.queues.consume_from or {}):
        return
    from discovery.ledger import Ledger

    try:
        Ledger(settings.state_dir / "ledger.sqlite3").close()  # the path worker.tasks uses
    except (OSError, sqlite3.Error) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        print(f"pacs-discovery: cannot keep the ledger in DISCOVERY_STATE_DIR="
              f"{settings.state_dir} ({why}): make it a writable directory", file=sys.stderr,
              flush=True)
        raise SystemExit(2) from None


@signals.worker_ready.connect
def _worker_ready(sender: object = None, **_: object) -> None:
    """Log the effective settings (secrets masked); the worker that consumes ``results`` is the
    aggregator: check its state dir and start its watchdog clock."""
    queues = set(app.amqp.queues.consume_from or {})
    logging.getLogger("discovery.worker").info("settings: %s", settings.masked())
    if RESULTS in queues:
        from worker.watchdog import start_clock

        start_clock(app, settings)
