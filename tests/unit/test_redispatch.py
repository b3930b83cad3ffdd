"""The watchdog's notion of overdue (discovery.ledger): a window waiting for its next attempt
is not lost."""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path

from discovery.ledger import Ledger
from discovery.windows import Window

RUN = "run-1"
W = Window(date(2024, 1, 1), 0, 3600)


def failed(**extra: object) -> dict:
    return {"state": "failed", "status": None, "rows": 0, "studies": [], "anomalies": {},
            "error": "refused", "seconds": 0.1, **extra}


def test_a_window_waiting_for_its_retry_is_not_overdue(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.create_run(RUN, {"all_studies": False}, [W])
    ledger.record(RUN, W.key, failed(retry_in=60.0), final=False)
    assert ledger.open_windows(RUN, older_than=time.time() + 30) == []
    assert ledger.open_windows(RUN, older_than=time.time() + 61) == [W.key]
    ledger.record(RUN, W.key, failed(), final=False)  # no retry_in: due at once
    assert ledger.open_windows(RUN, older_than=time.time() + 1) == [W.key]

