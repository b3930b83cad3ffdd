"""Processor: one window -> one outcome, a plain JSON-safe dict for the results task.

Outcome keys: ``state`` (see :mod:`discovery.outcome`), ``status`` (final status or ``None``),
``rows`` (raw Pending answers), ``studies`` (unique records), ``anomalies`` (kind -> count),
``error`` (text without patient data) and ``seconds``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from discovery.dimse import PacsConnection, study_query
from discovery.outcome import FAILED, classify
from discovery.studies import parse_rows
from discovery.windows import Window

if TYPE_CHECKING:
    from discovery.settings import Settings


def sweep_limit(settings: Settings) -> int:
    """A day sweep is cancelled once it exceeds this many answers (bounded extra load)."""
    caps = [c for c in (settings.pacs_max_results, settings.day_sweep_max_results) if c]
    return min(caps)


def run_window(conn: PacsConnection, window: Window, settings: Settings) -> dict:
    """Query one window (or one day sweep) on an open or openable connection."""
    started = time.monotonic()
    max_rows = sweep_limit(settings) if window.is_sweep else 0
    result = conn.find(study_query(window), max_rows=max_rows)
    state = classify(result.status, len(result.rows), settings.pacs_max_results, result.cancelled)
    studies, anomalies = parse_rows(result.rows, window)
    error = result.error
    if result.undecodable:
        # pynetdicom could not decode an answer at all: a study we cannot even name. The
        # window is not complete; it is asked again (and reported failed if it stays so).
        anomalies["undecodable"] += result.undecodable
        state = FAILED
        error = "an answer could not be decoded at all (no identifier)"
    return {
        "state": state,
        "status": result.status,
        "rows": len(result.rows) + result.undecodable,
        "studies": studies,
        "anomalies": dict(anomalies),
        "error": error,
        "seconds": round(time.monotonic() - started, 4),
    }


def failed_outcome(error: str, seconds: float = 0.0) -> dict:
    """The outcome of a window that could not be queried at all."""
    return {"state": "failed", "status": None, "rows": 0, "studies": [], "anomalies": {},
            "error": error, "seconds": round(seconds, 4)}
