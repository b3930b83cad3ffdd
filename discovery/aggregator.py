"""The aggregator's logic, without Celery: register runs, record results, split, finish, resume,
and the watchdog. ``dispatch(run_id, keys)`` is injected (the Celery task sends query tasks).

It runs in one process (the ``results`` worker with concurrency 1), so the ledger has a single
writer. Everything it does is idempotent: a register, a result or a control message delivered
twice changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import redis

from discovery import report, status
from discovery.finalize import finish_run
from discovery.ledger import Ledger
from discovery.windows import plan, sweeps

log = logging.getLogger("discovery.aggregator")
Dispatch = Callable[[str, list[str]], None]


def planned_windows(params: dict) -> list:
    """The windows (and day sweeps) a run's parameters define; the producer uses the same."""
    start = datetime.fromisoformat(params["start"])
    end = datetime.fromisoformat(params["end"])
    windows = plan(start, end, int(params["window_minutes"]))
    return windows + (sweeps(windows) if params.get("day_sweep", True) else [])


class Aggregator:
    #: The progress mirror counts studies in the ledger; refresh it at most this often.
    PUBLISH_EVERY = 1.0

    def __init__(self, ledger: Ledger, client: redis.Redis, dispatch: Dispatch) -> None:
        self.ledger, self.client, self.dispatch = ledger, client, dispatch
        self._published: dict[str, float] = {}
        self._publish_cost: dict[str, float] = {}

    def publish_soon(self, run_id: str) -> None:
        """Refresh the mirror unless it was refreshed less than a second ago (a result costs
        a few milliseconds; counting a million studies after each would not)."""
        # Counting grows with the ledger (a full scan of a million studies takes a few tenths
        # of a second): never spend more than a twentieth of the time on the mirror (a tenth
        # was 7 % of the aggregator's time at a million studies, docs/benchmarks.md C).
        every = max(self.PUBLISH_EVERY, 20 * self._publish_cost.get(run_id, 0.0))
        if time.monotonic() - self._published.get(run_id, 0.0) >= every:
            self.publish(run_id)

    def publish(self, run_id: str, **extra: object) -> None:
        self._published[run_id] = time.monotonic()
        run = self.ledger.run(run_id)
        if run is None:
            status.publish(self.client, run_id, {"state": "unknown", **extra},
                           ttl=status.UNKNOWN_TTL)
            return
        fields = {"state": run["state"], **self.ledger.progress(run_id), **extra,
                  "created": run["created"], "updated": time.time()}
        if run["summary"]:
            fields["summary"] = run["summary"]
        stop = status.stopped(self.client, run_id)
        if stop and run["state"] != "finished":
            fields["state"], fields["message"] = "stopped", stop
        status.publish(self.client, run_id, fields)
        self._publish_cost[run_id] = time.monotonic() - self._published[run_id]

    def register(self, run_id: str, params: dict) -> None:
        windows = planned_windows(params)
        if self.ledger.create_run(run_id, params, windows):
            log.info("run %s registered: %d windows and sweeps", run_id, len(windows))
            try:
                # Here, not only at the end: the aggregator writes the CSV, on its machine, and
                # a path it cannot write would be found after every window was queried.
                report.check_writable(Path(params["output"]))
            except OSError as exc:
                self._stop_unwritable(run_id, params["output"], exc)
        self.publish(run_id)

    def _stop_unwritable(self, run_id: str, where: str, exc: OSError) -> None:
        message = (f"cannot write the CSV or its report at {where} "
                   f"({exc.strerror or type(exc).__name__}): fix the path, its folder or the "
                   f"free space, then python -m producer --resume {run_id} --wait")
        log.error("run %s: %s", run_id, message)
        status.stop_run(self.client, run_id, message)

    def record(self, run_id: str, key: str, outcome: dict, final: bool) -> bool:
        """Apply a result; ``False`` when the run is not known (yet)."""
        if self.ledger.run(run_id) is None:
            return False
        # The ledger limits what a window or a sweep adds to the run's own span (its params).
        rec = self.ledger.record(run_id, key, outcome, final=final)
        if rec.dispatch:
            self.dispatch(run_id, rec.dispatch)
        if rec.finished and rec.accepted:
            self.finish(run_id)
        else:
            self.publish_soon(run_id)
        return True

    def finish(self, run_id: str) -> dict:
        try:
            summary = finish_run(self.ledger, run_id)
        except OSError as exc:
            # A full disk, a folder that became a file, a permission: the run is done but its
            # CSV cannot be written. Stop it with the reason, so --wait ends with it, instead of
            # trying again at every watchdog tick; --resume writes it once the path is fixed.
            run = self.ledger.run(run_id) or {"params": {}}
            self._stop_unwritable(run_id, run["params"].get("output", "the output path"), exc)
            return {}
        log.info("run %s finished: %s, %d studies, %d windows failed, %d incomplete",
                 run_id, summary["verdict"], summary["studies"], summary["windows_failed"],
                 summary["windows_incomplete"])
        self.publish(run_id)
        return summary

    def control(self, action: str, run_id: str, nonce: str) -> None:
        """``status``, ``resume``, ``retry_failed`` or ``cancel``; answers by publishing
        ``ack=nonce``. A cancel of a finished run changes nothing (the answer says finished);
        a cancel of a stopped run neither: its stop message stays (the reason it stopped), and
        the answer says ``cancel=already_stopped`` (else ``cancel=cancelled``)."""
        run = self.ledger.run(run_id)
        if run is None:
            self.publish(run_id, ack=nonce)
            return
        extra: dict[str, object] = {}
        if action == "cancel" and run["state"] != "finished":
            if status.stopped(self.client, run_id):
                extra["cancel"] = "already_stopped"
            else:
                status.stop_run(self.client, run_id, "cancelled by the operator (python -m "
                                f"producer --cancel {run_id}); resume with: python -m producer "
                                f"--resume {run_id} --wait")
                extra["cancel"] = "cancelled"
        if action in ("resume", "retry_failed"):
            self._follow_target(run_id, run["params"])
            status.clear_stop(self.client, run_id)
            try:
                report.check_writable(Path(run["params"]["output"]))
            except OSError as exc:  # still not fixed: no window is sent again for nothing
                self._stop_unwritable(run_id, run["params"]["output"], exc)
                self.publish(run_id, ack=nonce)
                return
            keys = self.ledger.reset_failed(run_id) if action == "retry_failed" else []
            open_keys = self.ledger.open_windows(run_id)
            if open_keys:
                self.ledger.reopen(run_id)
                self.ledger.mark_dispatched(run_id, open_keys)
                # The mirror says "running" before a worker sees the windows: query tasks of
                # a finished run stand down.
                self.publish(run_id)
                self.dispatch(run_id, open_keys)
                log.info("run %s: %s re-dispatched %d windows (%d were failed)",
                         run_id, action, len(open_keys), len(keys))
            elif run["state"] != "finished":
                self.finish(run_id)
        self.publish(run_id, ack=nonce, **extra)

    def _follow_target(self, run_id: str, params: dict) -> None:
        """A resume may come with fixed settings (a wrong AE title stopped the run): from then
        on the run queries what the resuming producer published, and its report says so."""
        target = status.published_target(self.client, run_id)
        if target is None or target == (params.get("calling_aet"), params.get("pacs")):
            return
        log.info("run %s now queries %s as %s (was %s as %s)", run_id, target[1], target[0],
                 params.get("pacs"), params.get("calling_aet"))
        self.ledger.set_params(run_id, {**params, "calling_aet": target[0], "pacs": target[1]})

    def watchdog(self, redispatch_after: float, queue_len: Callable[[], int]) -> int:
        """Re-dispatch windows dispatched long ago and never reported, once nothing waits in
        the queries queue (so they are lost, not queued); finish runs that are done; mirror
        progress again (after a Redis flush). Returns the number re-dispatched."""
        total = 0
        for run_id in self.ledger.runs_with_open_windows():
            if status.stopped(self.client, run_id):
                self.publish(run_id)
                continue
            overdue = self.ledger.open_windows(run_id, older_than=time.time() - redispatch_after)
            if overdue and queue_len() == 0:
                self.ledger.mark_dispatched(run_id, overdue)
                self.dispatch(run_id, overdue)
                total += len(overdue)
                log.warning("run %s: watchdog re-dispatched %d overdue windows",
                            run_id, len(overdue))
            self.publish(run_id)
        for run_id in self.ledger.unfinished_runs():
            if not self.ledger.open_windows(run_id) and not status.stopped(self.client, run_id):
                self.finish(run_id)
        return total
