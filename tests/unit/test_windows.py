"""discovery.windows: planning covers the range exactly, and every stored TM form lands in
exactly one window on a string-comparing server and on a parsing server."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discovery.windows import (
    DAY_SECONDS,
    Window,
    WindowError,
    day_span,
    lower_bound,
    merge_spans,
    parse_bound,
    parse_key,
    parse_tm,
    plan,
    sweeps,
    upper_bound,
)

DAY = date(2024, 1, 1)
KEY = re.compile(r"^\d{8}/(\d{6}-\d{6}|day)$")

instants = st.datetimes(min_value=datetime(2023, 12, 30), max_value=datetime(2024, 1, 3)).map(
    lambda d: d.replace(microsecond=0)
)
minutes = st.integers(1, 1440)


def _seconds(d: datetime) -> float:
    return (d - datetime.combine(d.date(), datetime.min.time())).total_seconds()


# --- plan ---------------------------------------------------------------------------------

@settings(deadline=None)
@given(instants, st.integers(1, 3 * DAY_SECONDS), minutes)
def test_plan_covers_range_exactly(start: datetime, length: int, mins: int) -> None:
    end = start + timedelta(seconds=length)
    windows = plan(start, end, mins)
    assert windows == sorted(windows)
    first, last = windows[0], windows[-1]
    assert (first.day, first.lo) == (start.date(), _seconds(start))
    if end.time() == datetime.min.time():
        assert (last.day, last.hi) == (end.date() - timedelta(days=1), DAY_SECONDS)
    else:
        assert (last.day, last.hi) == (end.date(), _seconds(end))
    for w in windows:
        assert 0 <= w.lo < w.hi <= DAY_SECONDS  # never crosses midnight
        assert w.hi - w.lo <= mins * 60
        assert w.hi % (mins * 60) == 0 or w.hi == DAY_SECONDS or w is last  # on the grid
    for a, b in zip(windows, windows[1:], strict=False):
        if a.day == b.day:
            assert b.lo == a.hi  # no gap, no overlap
        else:
            assert (b.day, a.hi, b.lo) == (a.day + timedelta(days=1), DAY_SECONDS, 0)
    assert sum(w.seconds for w in windows) == length


@pytest.mark.parametrize("mins", [0, -1, 1441])
def test_plan_rejects_window_length(mins: int) -> None:
    with pytest.raises(WindowError, match="1 to 1440 minutes"):
        plan(datetime(2024, 1, 1), datetime(2024, 1, 2), mins)


def test_plan_rejects_empty_or_reversed_range() -> None:
    for end in (datetime(2024, 1, 1), datetime(2023, 12, 31)):
        with pytest.raises(WindowError, match="not after the start"):
            plan(datetime(2024, 1, 1), end, 60)


def test_plan_hourly_day_and_partial_ends() -> None:
    keys = [w.key for w in plan(datetime(2024, 1, 1, 22, 30), datetime(2024, 1, 2, 1, 15), 60)]
    assert keys == ["20240101/223000-230000", "20240101/230000-240000",
                    "20240102/000000-010000", "20240102/010000-011500"]
    # 7-minute grid: the last window of the day is cut at midnight (1440 = 205 * 7 + 5).
    day = plan(datetime(2024, 1, 1), datetime(2024, 1, 2), 7)
    assert len(day) == 206 and day[-1] == Window(DAY, 205 * 420, DAY_SECONDS)


def test_sweeps_one_per_day_and_day_span() -> None:
    windows = plan(datetime(2024, 1, 1, 23), datetime(2024, 1, 3, 0, 30), 60)
    assert [s.key for s in sweeps(windows)] == ["20240101/day", "20240102/day", "20240103/day"]
    start, end = datetime(2024, 1, 1, 23), datetime(2024, 1, 3, 0, 30)
    assert day_span(start, end, date(2024, 1, 1)) == (23 * 3600, DAY_SECONDS)
    assert day_span(start, end, date(2024, 1, 2)) == (0, DAY_SECONDS)
    assert day_span(start, end, date(2024, 1, 3)) == (0, 1800)


# --- split and keys -----------------------------------------------------------------------

@given(st.integers(0, DAY_SECONDS - 2).flatmap(
    lambda lo: st.tuples(st.just(lo), st.integers(lo + 2, DAY_SECONDS))))
def test_split_halves_exactly(span: tuple[int, int]) -> None:
    w = Window(DAY, *span)
    a, b = w.split()
    assert (a.lo, a.hi, b.lo, b.hi) == (w.lo, b.lo, a.hi, w.hi)
    assert a.seconds + b.seconds == w.seconds and abs(a.seconds - b.seconds) <= 1
    assert a.seconds >= 1 and b.seconds >= 1


def test_split_floor_and_sweep() -> None:
    for w in (Window(DAY, 10, 11), Window(DAY, -1, -1)):
        assert not w.can_split()
        with pytest.raises(WindowError, match="cannot be split"):
            w.split()


windows_st = st.builds(
    lambda d, lo, n: Window(d, lo, min(DAY_SECONDS, lo + n)),
    st.dates(date(1900, 1, 1), date(2099, 12, 31)), st.integers(0, DAY_SECONDS - 1),
    st.integers(1, DAY_SECONDS),
)


@given(windows_st | st.dates(date(1900, 1, 1), date(2099, 12, 31)).map(
    lambda d: Window(d, -1, -1)))
def test_key_round_trip_and_grammar(w: Window) -> None:
    assert KEY.match(w.key)
    assert parse_key(w.key) == w


@pytest.mark.parametrize("key", [
    "", "20240101", "20240101/", "20240101/day/", "2024-01-01/day", "20240101/DAY",
    "20240101/100000-100000", "20240101/110000-100000", "20240101/100000-240001",
    "20240101/10000-110000", " 20240101/day", "20240101/day\n",
    "20241301/day", "20240230/100000-110000",  # no such date
    "20240101/006000-010100", "20240101/000060-000200",  # non-canonical spellings
])
def test_parse_key_rejects(key: str) -> None:
    with pytest.raises(WindowError, match="not a window key"):
        parse_key(key)


def test_key_label_and_query_strings() -> None:
    w = Window(DAY, 10 * 3600, 11 * 3600)
    assert w.key == "20240101/100000-110000"
    assert w.study_date() == "20240101"
    assert w.study_time() == "10-105959.999999"
    assert w.label() == "2024-01-01 10:00:00-10:59:59.999999"
    assert Window(DAY, 0, DAY_SECONDS).study_time() == "00-235959.999999"
    assert Window(DAY, 37815, 37816).study_time() == "103015-103015.999999"
    assert Window(DAY, 37800, 37830).study_time() == "1030-103029.999999"
    sweep = Window(DAY, -1, -1)
    assert (sweep.key, sweep.study_time(), sweep.seconds) == ("20240101/day", "", DAY_SECONDS)


# --- TM bounds: every stored form in exactly one window -----------------------------------

@st.composite
def tm_values(draw: st.DrawFn, max_second: int = 59) -> tuple[str, float]:
    """A valid stored TM (PS3.5 6.2) in one of its forms, and the time it denotes."""
    hh = draw(st.integers(0, 23))
    form = draw(st.sampled_from(["HH", "HHMM", "HHMMSS", "FRAC"]))
    if form == "HH":
        return f"{hh:02d}", hh * 3600.0
    mm = draw(st.integers(0, 59))
    if form == "HHMM":
        return f"{hh:02d}{mm:02d}", hh * 3600.0 + mm * 60
    ss = draw(st.integers(0, max_second))
    text = f"{hh:02d}{mm:02d}{ss:02d}"
    if form == "HHMMSS":
        return text, hh * 3600.0 + mm * 60 + ss
    frac = draw(st.text("0123456789", min_size=1, max_size=6))
    return f"{text}.{frac}", hh * 3600 + mm * 60 + ss + float("0." + frac)


def string_match(w: Window, value: str) -> bool:
    """Range matching as Orthanc and pynetdicom's qrscp do it: plain string comparison."""
    low, high = w.study_time().split("-")
    return low <= value <= high


def parsed_match(w: Window, value: str) -> bool:
    """Range matching as a server that parses TM values (dcmqrscp) does it."""
    low, high = w.study_time().split("-")
    t = parse_tm(value)
    assert t is not None
    return parse_tm(low) <= t <= parse_tm(high)  # type: ignore[operator]


def split_tree(draw: st.DrawFn, w: Window, depth: int) -> list[Window]:
    """The leaves of a random tree of splits below ``w``."""
    if depth == 0 or not w.can_split() or not draw(st.booleans()):
        return [w]
    a, b = w.split()
    return split_tree(draw, a, depth - 1) + split_tree(draw, b, depth - 1)


@settings(max_examples=150, deadline=None)
@given(tm_values(), st.integers(0, DAY_SECONDS - 1), st.integers(1, DAY_SECONDS), minutes,
       st.data())
def test_every_tm_form_lands_in_exactly_one_window(
    tm: tuple[str, float], lo: int, length: int, mins: int, data: st.DataObject
) -> None:
    value, t = tm
    assert parse_tm(value) == pytest.approx(t)
    hi = min(DAY_SECONDS, lo + length)
    start = datetime.combine(DAY, datetime.min.time())
    windows = plan(start + timedelta(seconds=lo), start + timedelta(seconds=hi), mins)
    # Split trees under the windows around the value (splitting all 1440 would be slow).
    near = {i for i, w in enumerate(windows) if abs(w.lo - t) < 2 * mins * 60 or abs(w.hi - t) < 2}
    leaves = [leaf for i, w in enumerate(windows)
              for leaf in (split_tree(data.draw, w, 8) if i in near else [w])]
    for match in (string_match, parsed_match):
        hits = [w for w in leaves if match(w, value)]
        if lo <= t < hi:
            assert hits == [next(w for w in leaves if w.contains_time(t))], match.__name__
        else:
            assert hits == [], match.__name__


@given(tm_values(), st.integers(0, DAY_SECONDS - 1))
def test_adjacent_windows_at_every_boundary(tm: tuple[str, float], cut: int) -> None:
    """The sharpest case: two windows meeting at an arbitrary second."""
    value, t = tm
    left, right = Window(DAY, 0, cut) if cut else None, Window(DAY, cut, DAY_SECONDS)
    for match in (string_match, parsed_match):
        hits = [w for w in (left, right) if w is not None and match(w, value)]
        assert hits == [left if t < cut else right]


@given(tm_values(max_second=60))
def test_leap_second_is_found_by_the_day_sweep_only(tm: tuple[str, float]) -> None:
    """``HHMM60`` (a leap second, PS3.5 6.2) sorts after ``HHMM59.999999`` and before the next
    minute's lower bound, so a string-comparing server puts it in no window; its parsed time
    stays inside the day (the last instant of second 59), so the sweep keeps it."""
    value, _ = tm
    if value[4:6] != "60":
        return
    t = parse_tm(value)
    assert t is not None and 0 <= t < DAY_SECONDS
    hh, mm = int(value[:2]), int(value[2:4])
    assert int(t) == hh * 3600 + mm * 60 + 59
    day = plan(datetime(2024, 1, 1), datetime(2024, 1, 2), 1)
    assert [w for w in day if string_match(w, value)] == []
    assert [w for w in day if parsed_match(w, value)] == [day[hh * 60 + mm]]


def test_bounds() -> None:
    assert [lower_bound(s) for s in (0, 36000, 37800, 37815, 86399)] == [
        "00", "10", "1030", "103015", "235959"]
    assert [upper_bound(s) for s in (1, 39600, DAY_SECONDS)] == [
        "000000.999999", "105959.999999", "235959.999999"]


@pytest.mark.parametrize("value", [
    None, "", "1", "25", "2400", "10:30:00", "10:30", "1060", "106000", "100061", "103",
    "10300", "103000.", "103000.1234567", "1030a0", "-10", "１０",
])
def test_parse_tm_rejects_odd_forms(value: str | None) -> None:
    assert parse_tm(value) is None


def test_parse_tm_valid_forms() -> None:
    assert parse_tm("10") == 36000
    assert parse_tm("1030") == 37800
    assert parse_tm("103015") == 37815
    assert parse_tm("103015.5") == 37815.5
    assert parse_tm("235959.999999") == pytest.approx(86399.999999)
    assert parse_tm("1030 ") == 37800  # trailing padding


def test_parse_bound() -> None:
    assert parse_bound("2024-01-01", is_end=False) == datetime(2024, 1, 1)
    assert parse_bound("2024-01-01", is_end=True) == datetime(2024, 1, 2)
    assert parse_bound("2024-01-01T10:30", is_end=True) == datetime(2024, 1, 1, 10, 30)
    assert parse_bound(" 2024-01-01 10:30 ", is_end=False) == datetime(2024, 1, 1, 10, 30)
    for bad in ("2024-13-01", "01/02/2024", "", "2024-01-01T25:00", "yesterday"):
        with pytest.raises(WindowError, match="YYYY-MM-DD"):
            parse_bound(bad, is_end=False)


@pytest.mark.parametrize("text", ["0224-01-01", "0224-01-01T10:00", "9999-12-31", "0999-12-31"])
def test_years_outside_1000_to_9998_are_refused(text: str) -> None:
    """A typo such as 0224 gave window keys no worker could read (and an endless run);
    9999-12-31 as an end has no next day (OverflowError)."""
    with pytest.raises(WindowError, match="year must be between 1000 and 9998"):
        parse_bound(text, is_end=True)


def test_a_range_too_large_is_refused_before_planning() -> None:
    """The hint names both ways out: longer windows, or several runs, each with its own
    --output (a run replaces the CSV an earlier one left at its path)."""
    with pytest.raises(WindowError) as info:
        plan(datetime(1000, 1, 1), datetime(9000, 1, 1), 60)
    assert str(info.value) == (
        "the range holds about 70,126,560 windows of 60 minutes, more than the 1,000,000 a "
        "run may have: set a longer DISCOVERY_WINDOW_MINUTES (at most 1440), or split the "
        "range into several runs, each with its own --output")


def test_merge_spans_joins_touching_windows_of_a_day() -> None:
    d1, d2 = date(2024, 1, 1), date(2024, 1, 2)
    five = [Window(d1, m * 60, m * 60 + 300) for m in range(545, 645, 5)]  # 09:05-10:45
    got = merge_spans([*reversed(five), Window(d1, 43200, 46800), Window(d2, 0, 3600),
                       Window(d1, -1, -1), Window(d2, 3600, 7200), five[0]])
    assert got == [Window(d1, -1, -1), Window(d1, 545 * 60, 645 * 60), Window(d1, 43200, 46800),
                   Window(d2, 0, 7200)]
    assert [w.label() for w in got[1:2]] == ["2024-01-01 09:05:00-10:44:59.999999"]
    assert merge_spans([]) == []


def test_the_summary_lists_twenty_spans_then_how_many_more() -> None:
    from discovery.finalize import SUMMARY_SPANS, _uncovered_lines

    apart = [{"key": Window(date(2024, 1, 1), h * 3600, h * 3600 + 60).key}
             for h in range(SUMMARY_SPANS + 3)]
    lines = _uncovered_lines(apart)
    assert len(lines) == SUMMARY_SPANS + 1
    assert lines[-1] == "... and 3 more spans: see the coverage report"
    assert _uncovered_lines(apart[:2]) == [Window(date(2024, 1, 1), 0, 60).label(),
                                           Window(date(2024, 1, 1), 3600, 3660).label()]
