"""The aggregator's clock: a daemon thread in the aggregator's main process that asks, every
``DISCOVERY_WATCHDOG_INTERVAL`` seconds, for a watchdog task on the ``results`` queue, so the
ledger keeps one writer. If Redis lost the message, the next tick sends another."""

from __future__ import annotations

import logging
import threading

from celery import Celery

from discovery.settings import Settings

log = logging.getLogger("discovery.watchdog")
_started = threading.Event()


def start_clock(app: Celery, settings: Settings) -> None:
    if _started.is_set():
        return
    _started.set()

    def tick() -> None:
        stop = threading.Event()
        while not stop.wait(settings.watchdog_interval):
            try:
                app.send_task("discovery.watchdog", queue="results")
            except Exception as exc:  # broker down: try again next tick
                log.warning("watchdog tick not sent: %s", type(exc).__name__)

    threading.Thread(target=tick, name="discovery-watchdog", daemon=True).start()
