"""The aggregator's durable store (sqlite3): runs, windows, studies. The truth of every run.

Only the aggregator writes it (one process, concurrency 1). Every change of one result is one
transaction, so a killed aggregator leaves either all of a result or none of it, and a result
delivered twice changes nothing: a window already in a final state ignores it, and studies are
keyed by (run, StudyInstanceUID).

Window states: ``dispatched`` (a query task is, or should be, on its way), ``done``,
``split`` (truncated or refused; its two halves carry on), ``incomplete`` (truncated or
refused at the one-second floor, or a day sweep that could not finish), ``failed``
(every attempt failed).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from discovery.outcome import COMPLETE, FAILED, REFUSED, TRUNCATED
from discovery.windows import DAY_SECONDS, Window, day_span, parse_key, parse_tm

OPEN = ("dispatched",)
_WHOLE_DAY = (0, DAY_SECONDS)
FINAL = ("done", "split", "incomplete", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, created REAL NOT NULL, params TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'running', finished REAL, summary TEXT
);
CREATE TABLE IF NOT EXISTS windows (
    run_id TEXT NOT NULL, key TEXT NOT NULL, parent TEXT, sweep INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL, rows INTEGER NOT NULL DEFAULT 0, studies INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, status INTEGER, error TEXT, seconds REAL,
    dispatched REAL, updated REAL, PRIMARY KEY (run_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS windows_state ON windows (run_id, state);
CREATE TABLE IF NOT EXISTS studies (
    run_id TEXT NOT NULL, uid TEXT NOT NULL, date TEXT NOT NULL, time TEXT NOT NULL,
    accession TEXT NOT NULL, patient_id TEXT NOT NULL, description TEXT NOT NULL,
    desc TEXT NOT NULL, by_window INTEGER NOT NULL, conflict INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, uid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS anomalies (
    run_id TEXT NOT NULL, kind TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (run_id, kind)
) WITHOUT ROWID;
"""

_UPSERT = """
INSERT INTO studies (run_id, uid, date, time, accession, patient_id, description, desc,
                     by_window)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (run_id, uid) DO UPDATE SET
    by_window = max(by_window, excluded.by_window),
    conflict = conflict OR (patient_id != excluded.patient_id
                            AND instr(patient_id || excluded.patient_id, char(65533)) = 0),
    date = CASE WHEN {swap} THEN excluded.date ELSE date END,
    time = CASE WHEN {swap} THEN excluded.time ELSE time END,
    accession = CASE WHEN {swap} THEN excluded.accession ELSE accession END,
    patient_id = CASE WHEN {swap} THEN excluded.patient_id ELSE patient_id END,
    description = CASE WHEN {swap} THEN excluded.description ELSE description END,
    desc = CASE WHEN {swap} THEN excluded.desc ELSE desc END
""".format(
    # Text that could not be decoded holds U+FFFD (discovery.studies): a clean copy of the
    # same study from another query replaces it, and it never counts as a Patient ID conflict.
    swap="instr(accession || patient_id || description, char(65533)) > 0 AND instr("
         "excluded.accession || excluded.patient_id || excluded.description, char(65533)) = 0"
)


@dataclass
class Recorded:
    """What recording one result changed: windows to dispatch now, and whether the run ended."""

    accepted: bool
    dispatch: list[str] = field(default_factory=list)
    finished: bool = False


class Ledger:
    """One sqlite3 database file under ``DISCOVERY_STATE_DIR``."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        self.db = sqlite3.connect(str(path), isolation_level=None, timeout=30)
        self._spans: dict[str, tuple[datetime, datetime] | None] = {}
        if new:
            os.chmod(path, 0o640)  # patient data: owner and group only
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def _tx(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    # Runs -------------------------------------------------------------------------------
    def create_run(self, run_id: str, params: dict, windows: list[Window]) -> bool:
        """Register a run and its windows as dispatched; ``False`` if it existed already."""
        now = time.time()
        db = self._tx()
        try:
            cur = db.execute(
                "INSERT OR IGNORE INTO runs (run_id, created, params) VALUES (?, ?, ?)",
                (run_id, now, json.dumps(params, sort_keys=True)),
            )
            if cur.rowcount:
                db.executemany(
                    "INSERT OR IGNORE INTO windows (run_id, key, sweep, state, dispatched, updated)"
                    " VALUES (?, ?, ?, 'dispatched', ?, ?)",
                    [(run_id, w.key, int(w.is_sweep), now, now) for w in windows],
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return bool(cur.rowcount)

    def run(self, run_id: str) -> dict | None:
        row = self.db.execute(
            "SELECT run_id, created, params, state, finished, summary FROM runs WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        if row is None:
            return None
        return {
            "run_id": row[0], "created": row[1], "params": json.loads(row[2]), "state": row[3],
            "finished": row[4], "summary": json.loads(row[5]) if row[5] else None,
        }

    def set_params(self, run_id: str, params: dict) -> None:
        self.db.execute("UPDATE runs SET params = ? WHERE run_id = ?",
                        (json.dumps(params, sort_keys=True), run_id))

    def runs_with_open_windows(self) -> list[str]:
        rows = self.db.execute(
            "SELECT DISTINCT run_id FROM windows WHERE state = 'dispatched'"
        ).fetchall()
        return [r[0] for r in rows]

    def unfinished_runs(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT run_id FROM runs WHERE state = 'running'")]

    def finish(self, run_id: str, summary: dict) -> None:
        self.db.execute(
            "UPDATE runs SET state = 'finished', finished = ?, summary = ? WHERE run_id = ?",
            (time.time(), json.dumps(summary, sort_keys=True), run_id),
        )

    def reopen(self, run_id: str) -> None:
        self.db.execute(
            "UPDATE runs SET state = 'running', finished = NULL WHERE run_id = ?", (run_id,)
        )

    # Results ----------------------------------------------------------------------------
    def record(self, run_id: str, key: str, outcome: dict, *, final: bool,
               day_span: tuple[int, int] | None = None) -> Recorded:
        """Apply one window's outcome in one transaction.

        ``final`` says the worker will not retry a failed outcome (attempts exhausted).
        Only studies the run asked for are added (see :func:`_asked_for`): a row dated outside
        the run's range is counted (``outside_window``) but not listed. ``day_span`` does the
        same for a day sweep when the run's parameters hold no ``start``/``end``.
        """
        window = parse_key(key)
        now = time.time()
        db = self._tx()
        try:
            row = db.execute(
                "SELECT state, attempts FROM windows WHERE run_id = ? AND key = ?", (run_id, key)
            ).fetchone()
            if row is None or row[0] in FINAL:
                db.execute("COMMIT")
                return Recorded(accepted=False)
            state = outcome["state"]
            if state == FAILED and not final:
                # The worker tries again in ``retry_in`` seconds: not overdue before then.
                again = now + float(outcome.get("retry_in") or 0)
                db.execute(
                    "UPDATE windows SET attempts = attempts + 1, error = ?, status = ?,"
                    " updated = ?, dispatched = ? WHERE run_id = ? AND key = ?",
                    (outcome.get("error"), outcome.get("status"), now, again, run_id, key),
                )
                db.execute("COMMIT")
                return Recorded(accepted=True)
            studies = outcome.get("studies", [])
            if run_id not in self._spans:  # a run's range never changes: read it once
                self._spans[run_id] = _run_span(db, run_id)
            span = self._spans[run_id]
            if span is not None:
                spans: dict[str, tuple[int, int] | None] = {}  # one day_span per date
                studies = [s for s in studies if _asked_for(s, *span, spans)]
            elif window.is_sweep and day_span is not None:
                studies = [s for s in studies if _sweep_keeps(s, day_span)]
            db.executemany(
                _UPSERT,
                [(run_id, s["uid"], s["date"], s["time"], s["accession"], s["patient_id"],
                  s["description"], s["desc"], 0 if window.is_sweep else 1) for s in studies],
            )
            for kind, count in outcome.get("anomalies", {}).items():
                if count:
                    db.execute(
                        "INSERT INTO anomalies VALUES (?, ?, ?) ON CONFLICT (run_id, kind)"
                        " DO UPDATE SET count = count + excluded.count",
                        (run_id, kind, count),
                    )
            dispatch: list[str] = []
            if state == COMPLETE:
                new_state = "done"
            elif state in (TRUNCATED, REFUSED) and window.can_split():
                new_state = "split"
                dispatch = [child.key for child in window.split()]
                db.executemany(
                    "INSERT OR IGNORE INTO windows (run_id, key, parent, state, dispatched,"
                    " updated) VALUES (?, ?, ?, 'dispatched', ?, ?)",
                    [(run_id, k, key, now, now) for k in dispatch],
                )
            elif state in (TRUNCATED, REFUSED):
                new_state = "incomplete"
            else:
                new_state = "failed"
            db.execute(
                "UPDATE windows SET state = ?, rows = ?, studies = ?, attempts = attempts + 1,"
                " status = ?, error = ?, seconds = ?, updated = ? WHERE run_id = ? AND key = ?",
                (new_state, outcome.get("rows", 0), len(studies), outcome.get("status"),
                 outcome.get("error"), outcome.get("seconds"), now, run_id, key),
            )
            still_open = db.execute(
                "SELECT 1 FROM windows WHERE run_id = ? AND state = 'dispatched' LIMIT 1",
                (run_id,),
            ).fetchone()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return Recorded(accepted=True, dispatch=dispatch, finished=still_open is None)

    # Dispatch bookkeeping ---------------------------------------------------------------
    def open_windows(self, run_id: str, older_than: float | None = None) -> list[str]:
        """Keys still waiting for a result; with ``older_than``, only those dispatched before
        that time (the watchdog's overdue windows)."""
        sql = "SELECT key FROM windows WHERE run_id = ? AND state = 'dispatched'"
        args: tuple = (run_id,)
        if older_than is not None:
            sql += " AND dispatched < ?"
            args = (run_id, older_than)
        return [r[0] for r in self.db.execute(sql + " ORDER BY key", args)]

    def mark_dispatched(self, run_id: str, keys: list[str]) -> None:
        now = time.time()
        self.db.executemany(
            "UPDATE windows SET dispatched = ? WHERE run_id = ? AND key = ?",
            [(now, run_id, k) for k in keys],
        )

    def reset_failed(self, run_id: str) -> list[str]:
        """Failed windows go back to dispatched, with fresh attempts. (Incomplete windows are
        at the one-second floor already: asking again gives the same truncated answer.)"""
        now = time.time()
        db = self._tx()
        keys = [r[0] for r in db.execute(
            "SELECT key FROM windows WHERE run_id = ? AND state = 'failed'", (run_id,)
        )]
        db.executemany(
            "UPDATE windows SET state = 'dispatched', attempts = 0, error = NULL,"
            " dispatched = ?, updated = ? WHERE run_id = ? AND key = ?",
            [(now, now, run_id, k) for k in keys],
        )
        if keys:
            db.execute("UPDATE runs SET state = 'running', finished = NULL WHERE run_id = ?",
                       (run_id,))
        db.execute("COMMIT")
        return keys

    # Reading ----------------------------------------------------------------------------
    def progress(self, run_id: str) -> dict:
        """Counts for the progress bar and ``--status``; leaves only (split parents excluded)."""
        counts = dict(self.db.execute(
            "SELECT state, COUNT(*) FROM windows WHERE run_id = ? GROUP BY state", (run_id,)
        ).fetchall())
        studies, lacking, described = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(desc != 'present'), 0),"
            " COALESCE(SUM(desc != 'absent'), 0) FROM studies WHERE run_id = ?", (run_id,)
        ).fetchone()
        sweeps = dict(self.db.execute(
            "SELECT state, COUNT(*) FROM windows WHERE run_id = ? AND sweep = 1"
            " AND state IN ('incomplete', 'failed') GROUP BY state", (run_id,)
        ).fetchall())
        open_ = counts.get("dispatched", 0)
        leaves = sum(v for k, v in counts.items() if k != "split")
        return {
            "windows_total": leaves, "windows_open": open_,
            "windows_done": counts.get("done", 0), "windows_split": counts.get("split", 0),
            "windows_failed": counts.get("failed", 0),
            "windows_incomplete": counts.get("incomplete", 0),
            "sweeps_incomplete": sweeps.get("incomplete", 0),
            "sweeps_failed": sweeps.get("failed", 0),
            "studies": studies, "lacking_description": lacking,
            "description_returned": described,
        }

    def anomalies(self, run_id: str) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT kind, count FROM anomalies WHERE run_id = ?", (run_id,)
        ).fetchall()
        out = dict(rows)
        conflict = self.db.execute(
            "SELECT COUNT(*) FROM studies WHERE run_id = ? AND conflict", (run_id,)
        ).fetchone()[0]
        if conflict:
            out["patient_id_conflict"] = conflict
        sweep_only = self.db.execute(
            "SELECT COUNT(*) FROM studies WHERE run_id = ? AND by_window = 0", (run_id,)
        ).fetchone()[0]
        if sweep_only:
            out["found_only_by_day_sweep"] = sweep_only
        return out

    def silent_caps(self, run_id: str) -> list[tuple[str, int, int, int]]:
        """Days whose date-only sweep ended in Success with fewer studies than the windows found
        on that day: (date, sweep studies, window studies, sweep answers). A complete answer to
        a whole-day query cannot hold fewer studies than answers to parts of it, so the PACS
        caps its answers without saying so (Success after N rows)."""
        rows = self.db.execute(
            "SELECT substr(w.key, 1, 8) AS day, w.studies, w.rows,"
            " (SELECT COUNT(*) FROM studies s WHERE s.run_id = w.run_id"
            "  AND s.date = substr(w.key, 1, 8) AND s.by_window = 1)"
            " FROM windows w WHERE w.run_id = ? AND w.sweep = 1 AND w.state = 'done'"
            " ORDER BY day", (run_id,)
        ).fetchall()
        return [(day, sweep, found, answers) for day, sweep, answers, found in rows
                if sweep < found]

    def conflict_uids(self, run_id: str) -> list[str]:
        return [r[0] for r in self.db.execute(
            "SELECT uid FROM studies WHERE run_id = ? AND conflict ORDER BY uid", (run_id,)
        )]

    def windows(self, run_id: str) -> Iterator[tuple]:
        """(key, parent, sweep, state, rows, studies, attempts, status, error, seconds)."""
        yield from self.db.execute(
            "SELECT key, parent, sweep, state, rows, studies, attempts, status, error, seconds"
            " FROM windows WHERE run_id = ? ORDER BY key", (run_id,)
        )

    def per_day(self, run_id: str) -> Iterator[tuple[str, int, int]]:
        """(date, studies, found only by the day sweep)."""
        yield from self.db.execute(
            "SELECT date, COUNT(*), SUM(by_window = 0) FROM studies WHERE run_id = ?"
            " GROUP BY date ORDER BY date", (run_id,)
        )

    def studies(self, run_id: str, all_studies: bool) -> Iterator[tuple[str, ...]]:
        """Rows for the CSV, sorted by date, then time, then UID; streamed, never all in memory."""
        where = "" if all_studies else " AND desc != 'present'"
        return self.db.execute(
            "SELECT accession, date, time, patient_id, uid, description FROM studies"
            f" WHERE run_id = ?{where} ORDER BY date, time, uid", (run_id,)
        )


def _run_span(db: sqlite3.Connection, run_id: str) -> tuple[datetime, datetime] | None:
    row = db.execute("SELECT params FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    params = json.loads(row[0]) if row else {}
    if "start" not in params or "end" not in params:
        return None
    return datetime.fromisoformat(params["start"]), datetime.fromisoformat(params["end"])


def _asked_for(study: dict, start: datetime, end: datetime,
               cache: dict[str, tuple[int, int] | None]) -> bool:
    """A study inside the run's range ``[start, end)``: dated on one of its days, at a time
    inside the run's span of that day. A date or time that cannot be read does not exclude it
    (an empty, absent or odd StudyTime is what the day sweep is for). A PACS that answers a
    single-date query with a row of another day (PS3.4 C.2.2.2.5 forbids it) would otherwise
    put a study outside the range into the CSV. ``cache`` holds the run's span of each date
    already seen (one result carries few dates)."""
    raw = (study.get("date") or "").strip()
    if raw not in cache:
        cache[raw] = _span_of(raw, start, end)
    span = cache[raw]
    if span is None or span == _WHOLE_DAY:
        return True  # every time a study can carry lies inside a whole day (parse_tm)
    return span[0] < span[1] and _sweep_keeps(study, span)


def _span_of(raw: str, start: datetime, end: datetime) -> tuple[int, int] | None:
    """The run's seconds of the day ``raw`` (DA), or ``None`` when it is not a readable date."""
    if not (len(raw) == 8 and raw.isascii() and raw.isdigit()):
        return None
    try:
        day = date(int(raw[:4]), int(raw[4:6]), int(raw[6:]))
    except ValueError:
        return None
    return day_span(start, end, day)


def _sweep_keeps(study: dict, day_span: tuple[int, int]) -> bool:
    """A day sweep adds a study whose time cannot be read (empty, absent, odd format), or whose
    time lies in the part of the day the run covers."""
    seconds = parse_tm(study.get("time"), legacy=True)
    return seconds is None or day_span[0] <= seconds < day_span[1]
