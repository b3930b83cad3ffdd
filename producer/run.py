"""The producer's work once input is valid: preflight, enqueue, wait, print."""

from __future__ import annotations

import argparse
import importlib
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import redis

from discovery import status
from discovery.aggregator import planned_windows
from discovery.dimse import PacsConnection, study_query
from discovery.errors import PermanentError, TransientError
from discovery.settings import Settings, mask_url
from discovery.throttle import AssociationLease, pacs_key
from discovery.windows import Window
from producer import progress
from producer.cli import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_RUNNING,
    EXIT_USAGE,
    VERDICT_EXIT,
    Interrupted,
    UsageError,
    describe,
    new_run_id,
)

#: How README starts the aggregator; messages that ask for it say the same.
AGGREGATOR_COMMAND = "celery -A worker worker -Q results -c 1 -n aggregator@%h"


def broker(settings: Settings) -> redis.Redis:
    """A Redis client for the broker, checked with PING (fails in seconds, not minutes)."""
    client = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=5,
                                  socket_timeout=10, **settings.broker_ssl())
    try:
        client.ping()
    except redis.AuthenticationError:
        if urlsplit(settings.broker_url).password is None:
            raise PermanentError(f"the broker {mask_url(settings.broker_url)} requires a "
                                 "password: put it in DISCOVERY_BROKER_URL "
                                 "(redis://:PASSWORD@host:port/0)") from None
        raise PermanentError(f"the broker {mask_url(settings.broker_url)} refused our password: "
                             "fix DISCOVERY_BROKER_URL") from None
    except redis.ResponseError as exc:
        # Redis answered, with an error (SELECT of a database it does not have: "DB index is
        # out of range"): waiting will not help, the URL must change.
        hint = " (Redis has databases 0-15 unless its `databases` says otherwise)" \
            if "DB index" in str(exc) else ""
        raise PermanentError(f"the broker {mask_url(settings.broker_url)} refused the "
                             f"connection: {exc}: fix DISCOVERY_BROKER_URL{hint}") from None
    except redis.RedisError as exc:
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            raise PermanentError(f"the broker {mask_url(settings.broker_url)} has a TLS "
                                 "certificate we do not trust: set DISCOVERY_BROKER_CA_FILE to "
                                 "the CA that signed it") from None
        raise TransientError(f"cannot reach the broker {mask_url(settings.broker_url)} "
                             f"({type(exc).__name__}): start Redis or fix DISCOVERY_BROKER_URL"
                             ) from None
    _check_eviction(client, settings)
    try:
        version = str(client.info("server").get("redis_version", ""))
    except redis.RedisError:  # INFO disabled (managed Redis): the scripts will say so
        version = ""
    if too_old(version):
        raise PermanentError(f"the broker {mask_url(settings.broker_url)} runs Redis {version}: "
                             "pacs-discovery needs Redis 5 or newer (its association slots are "
                             "Lua scripts that read the server's clock)")
    return client


def too_old(redis_version: str) -> bool:
    """Whether a Redis version (``INFO server``'s ``redis_version``) is older than 5."""
    major = redis_version.split(".", 1)[0]
    return major.isdigit() and int(major) < 5


def _check_eviction(client: redis.Redis, settings: Settings) -> None:
    """Refuse a Redis that may evict keys: queued windows and association leases would vanish
    without an error (README). Managed Redis may forbid CONFIG: then only a note."""
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.RedisError:
        print("pacs-discovery: note: cannot read Redis's maxmemory-policy (CONFIG is disabled); "
              "make sure it is noeviction", file=sys.stderr)
        return
    if policy not in (None, "noeviction"):
        raise PermanentError(
            f"the broker {mask_url(settings.broker_url)} runs with maxmemory-policy {policy}, "
            "which may delete queued windows and association leases: set it to noeviction "
            "(redis-cli CONFIG SET maxmemory-policy noeviction, and in redis.conf)")


def preflight(settings: Settings, probe: Window) -> None:
    """C-ECHO, then one small C-FIND (one second of the first day): a wrong host, port, AE
    title or a PACS that refuses queries shows up here, before anything is enqueued."""
    with PacsConnection(settings, contexts=(
        "1.2.840.10008.5.1.4.1.2.2.1", "1.2.840.10008.1.1",
    )) as conn:
        echo = conn.echo()
        if echo not in (0x0000, None):
            print(f"pacs-discovery: note: C-ECHO answered 0x{echo:04X}", file=sys.stderr)
        started = time.monotonic()
        result = conn.find(study_query(probe))
        waited = time.monotonic() - started
    if result.status is None and waited < min(5.0, settings.dimse_timeout):
        # The association and C-ECHO were fine, then the PACS dropped the C-FIND at once: what
        # Orthanc does when the calling AE title may not query (DicomModalities).
        raise PermanentError(f"{settings.pacs_label} accepted the association but dropped a "
                             f"test C-FIND at once: allow DISCOVERY_CALLING_AET="
                             f"{settings.calling_aet} to query on the PACS, or set it to an AE "
                             "title that may")
    if result.status is None:
        raise TransientError(f"{settings.pacs_label} did not answer a test C-FIND "
                             f"({result.error}); check the PACS and DISCOVERY_DIMSE_TIMEOUT")
    if result.status not in (0x0000, 0xFE00, 0xA700) and not 0xC000 <= result.status <= 0xCFFF:
        raise PermanentError(f"{settings.pacs_label} failed a test C-FIND with status "
                             f"0x{result.status:04X}: check that DISCOVERY_CALLING_AET may query")


def _import_in_background(module: str) -> Callable[[], None]:
    """Import ``module`` in a thread; the function returned waits for it and raises what the
    import raised."""
    failed: list[BaseException] = []

    def load() -> None:
        try:
            importlib.import_module(module)
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            failed.append(exc)

    loader = threading.Thread(target=load, name=f"import {module}", daemon=True)
    loader.start()

    def wait() -> None:
        loader.join()
        if failed:
            raise failed[0]

    return wait


def new_run(args: argparse.Namespace, settings: Settings, start: datetime, end: datetime,
            output: Path) -> int:
    # Celery's import (about 50 ms of CPU) runs while the preflight waits for the PACS.
    celery_ready = _import_in_background("worker.tasks")
    params = {
        "start": start.isoformat(), "end": end.isoformat(),
        "window_minutes": settings.window_minutes, "day_sweep": settings.day_sweep,
        "all_studies": bool(args.all_studies), "excel_safe": bool(args.excel_safe),
        "output": str(output), "pacs": settings.pacs_label, "calling_aet": settings.calling_aet,
        "pacs_max_results": settings.pacs_max_results,
    }
    windows = planned_windows(params)  # a range too large is bad input: before the broker
    client = broker(settings)
    if not args.skip_preflight:
        # Within the association cap like any worker: the PACS never sees one more.
        lease = AssociationLease(client, pacs_key("assoc", settings.pacs_host, settings.pacs_port,
                                                  settings.called_aet),
                                 settings.pacs_max_associations, settings.association_lease,
                                 wait=120)
        with lease:
            try:
                preflight(settings, Window(start.date(), 0, 1))
            except TransientError:
                # Once more after a pause: a PACS busy for a moment is not unreachable.
                time.sleep(2)
                preflight(settings, Window(start.date(), 0, 1))
    celery_ready()
    from worker.app import QUERIES, RESULTS, app
    from worker.tasks import dispatch

    run_id = new_run_id()
    status.publish(client, run_id, {"state": "queued", "target": status.target(settings)})
    app.send_task("discovery.register_run", (run_id, params), queue=RESULTS)
    dispatch(run_id, [w.key for w in windows])
    # After enqueueing: the check waits a second for replies, while the workers start already.
    _warn_without_consumers(app, QUERIES, RESULTS)
    sweeps = sum(1 for w in windows if w.is_sweep)
    print(f"run {run_id}: {progress.plural(len(windows) - sweeps, 'window')} and "
          f"{progress.plural(sweeps, 'day sweep')} enqueued ({describe(settings)})", flush=True)
    if not args.wait:
        print(f"follow it with: python -m producer --status {run_id}")
        return EXIT_OK
    return wait(app, client, run_id, params, args.timeout)


def wait(app, client: redis.Redis, run_id: str, params: dict | None, timeout: float) -> int:  # type: ignore[no-untyped-def]
    """Poll the run's mirror until it is finished or stopped; re-send the registration if the
    aggregator seems not to know the run (e.g. after a Redis flush)."""
    try:
        return _wait(app, client, run_id, params, timeout)
    except KeyboardInterrupt:
        raise Interrupted(run_id) from None


#: --wait: seconds without the aggregator registering the run before it names the aggregator's
#: command (again every as many seconds) and sends the registration again.
REGISTER_HINT_AFTER = 15.0
#: --wait: seconds of failed reads of the mirror before it says the broker is unreachable.
BROKER_QUIET = 5.0


def registered(state: dict) -> bool:
    """Whether the aggregator has registered the run: its mirror says more than the producer's
    own ``queued``. An empty mirror (a Redis flush, until the watchdog writes it again) is not
    registered."""
    return state.get("state") not in (None, "queued")


def _wait(app, client: redis.Redis, run_id: str, params: dict | None, timeout: float) -> int:  # type: ignore[no-untyped-def]
    bar = progress.Bar(sys.stderr)
    deadline = time.monotonic() + timeout if timeout else None
    last_seen = time.monotonic()
    hint_at = time.monotonic() + REGISTER_HINT_AFTER
    said_waiting = False
    unreachable_since: float | None = None
    said_unreachable = False
    while True:
        now = time.monotonic()
        try:
            state: dict | None = status.read(client, run_id)
        except redis.RedisError:
            state = None
            unreachable_since = unreachable_since or now
            if not said_unreachable and now - unreachable_since >= BROKER_QUIET:
                bar.note("pacs-discovery: broker unreachable, retrying")
                said_unreachable = True
        else:
            if said_unreachable:
                bar.note("pacs-discovery: broker reachable again")
            unreachable_since, said_unreachable = None, False
        if state is not None and state.get("state") in ("running", "finished"):
            last_seen = now
        if state and state.get("state") == "finished" and state.get("summary"):
            bar.done(state)
            summary = state["summary"]
            progress.print_summary(run_id, summary, sys.stdout)
            return VERDICT_EXIT.get(summary["verdict"], 1)
        if state and state.get("state") == "stopped":
            bar.done(state)
            print(progress.stopped_lines(run_id, str(state.get("message"))), file=sys.stderr)
            return EXIT_CONFIG
        if state is not None and registered(state):
            bar.update(state)
            hint_at = now + REGISTER_HINT_AFTER
        elif state is not None and not said_waiting:
            bar.note(f"pacs-discovery: waiting for the aggregator to register run {run_id}")
            said_waiting = True
        elif state is not None and now >= hint_at:
            bar.note(f"pacs-discovery: run {run_id} is still not registered: is "
                     f"`{AGGREGATOR_COMMAND}` running, with the same DISCOVERY_BROKER_URL?")
            hint_at = now + REGISTER_HINT_AFTER
        if params is not None and now - last_seen > REGISTER_HINT_AFTER:
            try:
                app.send_task("discovery.register_run", (run_id, params), queue="results")
            except Exception:  # broker down; the next round tries again
                pass
            last_seen = now
        if deadline and now > deadline:
            bar.done(state or {})
            print(f"pacs-discovery: gave up waiting after {timeout:g} s; the run goes on: "
                  f"python -m producer --status {run_id}", file=sys.stderr)
            return EXIT_RUNNING
        time.sleep(0.5)


def _ask(app, client: redis.Redis, action: str, run_id: str, wait_s: float = 30) -> dict:  # type: ignore[no-untyped-def]
    nonce = uuid.uuid4().hex
    app.send_task("discovery.control", (action, run_id, nonce), queue="results")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        state = status.read(client, run_id)
        if state.get("ack") == nonce:
            return state
        time.sleep(0.2)
    raise TransientError(f"the aggregator did not answer within {wait_s:g} s: is "
                         f"`{AGGREGATOR_COMMAND}` running?")


def existing(args: argparse.Namespace, settings: Settings) -> int:
    from worker.app import app

    client = broker(settings)
    run_id = args.resume or args.retry_failed or args.status or args.cancel
    action = ("resume" if args.resume else "retry_failed" if args.retry_failed
              else "cancel" if args.cancel else "status")
    if action == "cancel":
        # The aggregator stops the run, unless it has finished: it alone knows, and it cannot
        # finish the run between looking and stopping it.
        state = _ask(app, client, "cancel", run_id)
        if state.get("state") == "unknown":
            raise UsageError(f"unknown run id {run_id!r}: the aggregator's ledger has no such run")
        if state.get("state") == "finished":
            verdict = state.get("summary", {}).get("verdict", "unknown")
            print(f"run {run_id}: already finished ({verdict.replace('_', ' ').upper()}); "
                  "nothing to cancel")
            return VERDICT_EXIT.get(verdict, 1)
        if state.get("cancel") == "already_stopped":
            message = str(state.get("message", ""))
            advice = progress.resume_advice(run_id, message)
            print(f"run {run_id}: already stopped ({message}); nothing to cancel"
                  + (f"; {advice}" if advice else ""))
            return EXIT_OK
        print(f"run {run_id}: cancelled; workers skip its remaining windows (a query already "
              f"running finishes). Resume with: python -m producer --resume {run_id} --wait")
        return EXIT_OK
    if action in ("resume", "retry_failed"):
        # The settings were fixed where the resume is run: from now on the run queries what
        # this producer is configured for, and workers are checked against that. Not refused
        # when it differs (that is how a wrong target is fixed), but said: it may be a shell
        # configured for another PACS by mistake.
        before = status.published_target(client, run_id)
        now = (settings.calling_aet, settings.pacs_label)
        if before is not None and before != now:
            print(f"run {run_id}: now queries {now[1]} as {now[0]} (was {before[1]} as "
                  f"{before[0]})", flush=True)
        status.publish(client, run_id, {"target": status.target(settings)})
    state = _ask(app, client, action, run_id)
    if state.get("state") == "unknown":
        raise UsageError(f"unknown run id {run_id!r}: the aggregator's ledger has no such run")
    if action == "status":
        progress.print_status(run_id, state, sys.stdout)
        if state.get("state") == "finished":
            return VERDICT_EXIT.get(state.get("summary", {}).get("verdict"), 1)
        if state.get("state") == "stopped":
            return EXIT_CONFIG  # what --wait gives for a stopped run
        return EXIT_OK
    print(f"run {run_id}: {action.replace('_', ' ')} sent; "
          f"{progress.plural(state.get('windows_open', 0), 'window')} open", flush=True)
    if args.wait:
        return wait(app, client, run_id, None, args.timeout)
    return EXIT_OK


def _warn_without_consumers(app, *queues: str) -> None:  # type: ignore[no-untyped-def]
    """Warn when no worker answers for a queue. Workers that share a node name (no ``-n``)
    answer under one name, so Celery keeps one reply: the warning names ``-n`` too."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DuplicateNodenameWarning: handled below
            active = app.control.inspect(timeout=2.0).active_queues() or {}
    except Exception:
        return
    consumed = {q["name"] for qs in active.values() for q in qs}
    for q in queues:
        if q not in consumed:
            cmd = AGGREGATOR_COMMAND if q == "results" \
                else "celery -A worker worker -Q queries -n queries@%h"
            print(f"pacs-discovery: warning: no worker consumes queue {q!r} yet; start `{cmd}`",
                  file=sys.stderr)


__all__ = ["EXIT_USAGE", "existing", "new_run"]
