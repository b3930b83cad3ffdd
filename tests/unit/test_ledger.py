"""discovery.ledger on a real sqlite3 file: idempotent results, splits, finishing, sweeps."""

from __future__ import annotations

import stat
from datetime import date, datetime
from pathlib import Path

import pytest

from discovery.ledger import Ledger
from discovery.windows import DAY_SECONDS, Window, plan, sweeps

RUN = "run-1"
DAY = date(2024, 1, 1)


def rec(uid: str, time: str = "103000", desc: str = "", patient_id: str = "P1",
        day: str = "20240101") -> dict:
    state = "absent" if desc == "<absent>" else "present" if desc.strip() else "blank"
    return {"uid": uid, "date": day, "time": time, "accession": "A" + uid,
            "patient_id": patient_id, "description": "" if desc == "<absent>" else desc,
            "desc": state}


def outcome(state: str = "complete", studies: list[dict] | None = None, **kw: object) -> dict:
    return {"state": state, "status": kw.pop("status", 0), "rows": len(studies or []),
            "studies": studies or [], "anomalies": kw.pop("anomalies", {}), "error": None,
            "seconds": 0.1, **kw}


@pytest.fixture
def ledger(tmp_path: Path):  # type: ignore[no-untyped-def]
    led = Ledger(tmp_path / "state" / "ledger.sqlite3")
    yield led
    led.close()


def register(ledger: Ledger, windows: list[Window]) -> list[str]:
    assert ledger.create_run(RUN, {"all_studies": False}, windows)
    return [w.key for w in windows]


def test_register_run(ledger: Ledger, tmp_path: Path) -> None:
    windows = plan(datetime(2024, 1, 1, 10), datetime(2024, 1, 1, 12), 60)
    keys = register(ledger, windows + sweeps(windows))
    assert not ledger.create_run(RUN, {"other": 1}, [])  # registering again changes nothing
    run = ledger.run(RUN)
    assert run is not None and (run["params"], run["state"]) == ({"all_studies": False},
                                                                 "running")
    assert ledger.run("nope") is None
    assert ledger.open_windows(RUN) == sorted(keys)
    assert ledger.unfinished_runs() == [RUN] and ledger.runs_with_open_windows() == [RUN]
    assert [(k, sweep) for k, _, sweep, *_ in ledger.windows(RUN)] == [
        ("20240101/100000-110000", 0), ("20240101/110000-120000", 0), ("20240101/day", 1)]
    mode = (tmp_path / "state" / "ledger.sqlite3").stat().st_mode
    assert stat.S_IMODE(mode) == 0o640


def test_record_twice_is_idempotent(ledger: Ledger) -> None:
    (a, b) = register(ledger, plan(datetime(2024, 1, 1, 10), datetime(2024, 1, 1, 12), 60))
    result = outcome(studies=[rec("1.1"), rec("1.2", desc="CT")], anomalies={"repeated": 2})
    first = ledger.record(RUN, a, result, final=False)
    assert (first.accepted, first.dispatch, first.finished) == (True, [], False)
    before = (ledger.progress(RUN), ledger.anomalies(RUN), list(ledger.studies(RUN, True)))
    again = ledger.record(RUN, a, result, final=True)
    assert (again.accepted, again.finished) == (False, False)
    assert (ledger.progress(RUN), ledger.anomalies(RUN), list(ledger.studies(RUN, True))) == (
        before)
    assert before[1] == {"repeated": 2}
    assert ledger.record(RUN, b, outcome(), final=False).finished
    assert not ledger.record("other-run", a, result, final=True).accepted  # unknown run


def test_split_until_all_leaves_report(ledger: Ledger) -> None:
    (key,) = register(ledger, [Window(DAY, 36000, 39600)])
    r = ledger.record(RUN, key, outcome("truncated", [rec("1.1")], status=0xFE00), final=False)
    assert (r.accepted, r.finished) == (True, False)
    assert r.dispatch == ["20240101/100000-103000", "20240101/103000-110000"]
    assert ledger.open_windows(RUN) == r.dispatch
    left, right = r.dispatch
    r2 = ledger.record(RUN, left, outcome("refused", status=0xA700), final=False)
    assert r2.dispatch == ["20240101/100000-101500", "20240101/101500-103000"]
    assert not ledger.record(RUN, right, outcome(studies=[rec("1.1")]), final=False).finished
    assert not ledger.record(RUN, r2.dispatch[0], outcome(), final=False).finished
    assert ledger.record(RUN, r2.dispatch[1], outcome(studies=[rec("1.2")]), final=False).finished
    parents = {k: p for k, p, *_ in ledger.windows(RUN)}
    assert parents == {key: None, left: key, right: key, r2.dispatch[0]: left,
                       r2.dispatch[1]: left}
    p = ledger.progress(RUN)
    assert (p["windows_total"], p["windows_done"], p["windows_split"], p["windows_open"],
            p["studies"]) == (3, 3, 2, 0, 2)


def test_incomplete_at_one_second_floor(ledger: Ledger) -> None:
    keys = register(ledger, [Window(DAY, 36000, 36001), Window(DAY, -1, -1)])
    r = ledger.record(RUN, keys[0], outcome("truncated", status=0xFE00), final=False)
    assert (r.dispatch, r.finished) == ([], False)
    r = ledger.record(RUN, keys[1], outcome("truncated", status=0xFE00), final=False)
    assert (r.dispatch, r.finished) == ([], True)  # a day sweep is never split
    assert ledger.progress(RUN)["windows_incomplete"] == 2


def test_failed_attempts_then_final(ledger: Ledger) -> None:
    (key,) = register(ledger, [Window(DAY, 0, 3600)])
    for attempt in (1, 2):
        r = ledger.record(RUN, key, outcome("failed", status=None, error="timeout"),
                          final=False)
        assert (r.accepted, r.finished, r.dispatch) == (True, False, [])
        (row,) = ledger.windows(RUN)
        assert (row[3], row[6], row[8]) == ("dispatched", attempt, "timeout")
    r = ledger.record(RUN, key, outcome("failed", status=None, error="timeout"), final=True)
    assert r.finished
    (row,) = ledger.windows(RUN)
    assert (row[3], row[6]) == ("failed", 3)
    assert ledger.progress(RUN)["windows_failed"] == 1
    ledger.finish(RUN, {"verdict": "incomplete"})
    assert ledger.run(RUN)["state"] == "finished"  # type: ignore[index]

    assert ledger.reset_failed(RUN) == [key]
    (row,) = ledger.windows(RUN)
    assert (row[3], row[6], row[8]) == ("dispatched", 0, None)
    assert ledger.run(RUN)["state"] == "running"  # type: ignore[index]
    assert ledger.reset_failed(RUN) == []
    assert ledger.record(RUN, key, outcome(), final=False).finished


def test_sweep_adds_only_within_day_span(ledger: Ledger) -> None:
    sweep = Window(DAY, -1, -1)
    window = Window(DAY, 36000, 39600)
    register(ledger, [window, sweep])
    ledger.record(RUN, window.key, outcome(studies=[rec("1.1", "1030")]), final=False)
    found = [
        rec("1.1", "1030"),  # also found by its window
        rec("1.2", ""),  # no time: only the sweep can find it
        rec("1.3", "10:45:00"),  # ACR-NEMA form: unreadable, kept
        rec("1.4", "0959"),  # before the run's span: not asked for
        rec("1.5", "11"),  # at the span's end (exclusive): not asked for
        rec("1.6", "105960"),  # leap second: inside 10:59, kept
        rec("1.7", "105959.999999"),
    ]
    r = ledger.record(RUN, sweep.key, outcome(studies=found), final=False, day_span=(36000, 39600))
    assert r.finished
    rows = {row[4]: row for row in ledger.studies(RUN, all_studies=True)}
    assert sorted(rows) == ["1.1", "1.2", "1.3", "1.6", "1.7"]
    assert ledger.anomalies(RUN) == {"found_only_by_day_sweep": 4}
    assert list(ledger.per_day(RUN)) == [("20240101", 5, 4)]
    (_, _, _, state, rows_, studies, *_), = [w for w in ledger.windows(RUN) if w[2]]
    assert (state, rows_, studies) == ("done", 7, 5)


def test_leap_second_at_midnight_kept_by_full_day_sweep(ledger: Ledger) -> None:
    (key,) = register(ledger, [Window(DAY, -1, -1)])
    ledger.record(RUN, key, outcome(studies=[rec("1.9", "235960")]), final=False,
                  day_span=(0, DAY_SECONDS))
    assert [row[4] for row in ledger.studies(RUN, True)] == ["1.9"]


def test_by_window_flag_and_patient_conflict(ledger: Ledger) -> None:
    sweep, w1, w2 = Window(DAY, -1, -1), Window(DAY, 0, 3600), Window(DAY, 3600, 7200)
    register(ledger, [sweep, w1, w2])
    # The sweep reports first; the window finds the same study later: not "sweep only".
    ledger.record(RUN, sweep.key, outcome(studies=[rec("1.1", "0030"), rec("1.2", "0130")]),
                  final=False, day_span=(0, DAY_SECONDS))
    assert ledger.anomalies(RUN) == {"found_only_by_day_sweep": 2}
    ledger.record(RUN, w1.key, outcome(studies=[rec("1.1", "0030")]), final=False)
    assert ledger.anomalies(RUN) == {"found_only_by_day_sweep": 1}
    # The same UID with another Patient ID (a real PACS inconsistency): flagged, first kept.
    ledger.record(RUN, w2.key, outcome(studies=[rec("1.2", "0130", patient_id="OTHER")]),
                  final=False)
    assert ledger.conflict_uids(RUN) == ["1.2"]
    assert ledger.anomalies(RUN) == {"patient_id_conflict": 1}
    rows = {r[4]: r for r in ledger.studies(RUN, True)}
    assert rows["1.2"][3] == "P1"


def test_studies_sorted_and_filtered(ledger: Ledger) -> None:
    windows = [Window(DAY, 0, DAY_SECONDS), Window(date(2024, 1, 2), 0, DAY_SECONDS)]
    register(ledger, windows)
    ledger.record(RUN, windows[1].key, outcome(studies=[
        rec("2.1", "0800", day="20240102"), rec("2.0", "0800", desc="CT", day="20240102"),
    ]), final=False)
    ledger.record(RUN, windows[0].key, outcome(studies=[
        rec("1.3", "1200", desc="   "), rec("1.2", "0900", desc="MR"), rec("1.1", "1200"),
        rec("1.0", "", desc="<absent>"),
    ]), final=False)
    every = [(r[1], r[2], r[4]) for r in ledger.studies(RUN, all_studies=True)]
    assert every == [("20240101", "", "1.0"), ("20240101", "0900", "1.2"),
                     ("20240101", "1200", "1.1"), ("20240101", "1200", "1.3"),
                     ("20240102", "0800", "2.0"), ("20240102", "0800", "2.1")]
    lacking = [r[4] for r in ledger.studies(RUN, all_studies=False)]
    assert lacking == ["1.0", "1.1", "1.3", "2.1"]
    row = next(r for r in ledger.studies(RUN, True) if r[4] == "1.2")
    assert row == ("A1.2", "20240101", "0900", "P1", "1.2", "MR")  # CSV column order
    p = ledger.progress(RUN)
    assert (p["studies"], p["lacking_description"], p["description_returned"]) == (6, 4, 5)


def test_open_windows_older_than_and_mark(ledger: Ledger) -> None:
    keys = register(ledger, plan(datetime(2024, 1, 1), datetime(2024, 1, 1, 3), 60))
    assert ledger.open_windows(RUN, older_than=0) == []
    assert ledger.open_windows(RUN, older_than=float("inf")) == keys
    ledger.mark_dispatched(RUN, keys[:1])
    assert ledger.open_windows(RUN) == keys


def test_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    led = Ledger(path)
    (key,) = [w.key for w in [Window(DAY, 0, 60)]]
    led.create_run(RUN, {}, [Window(DAY, 0, 60)])
    led.record(RUN, key, outcome(studies=[rec("1.1")]), final=False)
    led.close()
    led = Ledger(path)
    try:
        assert [r[4] for r in led.studies(RUN, True)] == ["1.1"]
        assert led.progress(RUN)["windows_done"] == 1
    finally:
        led.close()


def test_only_studies_inside_the_run_are_listed(ledger: Ledger) -> None:
    """A PACS answering a single-date query with a row of another day, or a time outside the
    run: counted by the worker (outside_window), never listed in the CSV."""
    start, end = datetime(2024, 1, 1, 10), datetime(2024, 1, 2)
    windows = plan(start, end, 60)
    assert ledger.create_run(RUN, {"start": start.isoformat(), "end": end.isoformat()},
                             windows + sweeps(windows))
    found = [rec("1.1"), rec("1.2", day="20240102"), rec("1.3", day="20231231"),
             rec("1.4", "0930"), rec("1.5", ""), rec("1.6", day=""), rec("1.7", day="2024-01-01")]
    ledger.record(RUN, windows[0].key, outcome(studies=found), final=False)
    ledger.record(RUN, "20240101/day", outcome(studies=[rec("1.8", day="20240102")]),
                  final=False)
    assert [r[4] for r in ledger.studies(RUN, True)] == ["1.6", "1.7", "1.5", "1.1"]


def test_clean_copy_replaces_undecodable_and_is_no_conflict(ledger: Ledger) -> None:
    sweep, w1 = Window(DAY, -1, -1), Window(DAY, 36000, 39600)
    register(ledger, [sweep, w1])
    garbled = rec("1.1", patient_id="\ufffdBAD", desc="Sch\ufffddel")
    ledger.record(RUN, w1.key, outcome(studies=[garbled, rec("1.2", patient_id="P2")]),
                  final=False)
    ledger.record(RUN, sweep.key, outcome(studies=[rec("1.1", desc="Schädel"),
                                                   rec("1.2", patient_id="\ufffdP2")]),
                  final=False, day_span=(0, DAY_SECONDS))
    rows = {r[4]: r for r in ledger.studies(RUN, True)}
    assert (rows["1.1"][3], rows["1.1"][5]) == ("P1", "Schädel")  # the clean copy
    assert rows["1.2"][3] == "P2"  # a garbled copy never replaces a clean one
    assert ledger.conflict_uids(RUN) == [] and ledger.anomalies(RUN) == {}


def test_partial_day_excludes_legacy_colon_times_outside_it(tmp_path) -> None:
    """`23:30:00` (ACR-NEMA form) on a run of 08:00-12:00 is outside it; `10:15:00` inside."""
    from datetime import date as _date

    from discovery.ledger import Ledger as _Ledger
    from discovery.windows import Window as _Window

    ledger = _Ledger(tmp_path / "l.sqlite3")
    params = {"start": "2024-02-01T08:00:00", "end": "2024-02-01T12:00:00",
              "window_minutes": 60, "day_sweep": True, "all_studies": True, "output": "x.csv"}
    sweep = _Window(_date(2024, 2, 1), -1, -1)
    ledger.create_run("r", params, [sweep])
    rows = [{"uid": f"1.{i}", "date": "20240201", "time": t, "accession": "", "patient_id": "",
             "description": "", "desc": "blank"} for i, t in enumerate(
                 ["23:30:00", "07:59:59", "10:15:00", ""])]
    ledger.record("r", sweep.key, {"state": "complete", "status": 0, "rows": 4,
                                   "studies": rows, "anomalies": {}}, final=True)
    assert sorted(r[2] for r in ledger.studies("r", True)) == ["", "10:15:00"]


def test_whole_day_inside_the_run_keeps_every_time(ledger: Ledger) -> None:
    """A day the run covers whole keeps a study at any time it can carry (the leap second
    before midnight, the ACR-NEMA form, none); the run's partial first day still filters."""
    start, end = datetime(2024, 1, 1, 10), datetime(2024, 1, 3)
    windows = plan(start, end, 60)
    assert ledger.create_run(RUN, {"start": start.isoformat(), "end": end.isoformat()},
                             windows)
    whole = [w for w in windows if w.day == date(2024, 1, 2)][0]
    found = [rec("2.1", "000000", day="20240102"), rec("2.2", "235960", day="20240102"),
             rec("2.3", "23:59:59", day="20240102"), rec("2.4", "", day="20240102"),
             rec("2.5", "0930"), rec("2.6", "1000")]
    ledger.record(RUN, whole.key, outcome(studies=found), final=False)
    assert sorted(r[4] for r in ledger.studies(RUN, True)) == ["2.1", "2.2", "2.3", "2.4", "2.6"]
