"""Pure time arithmetic: a date range -> windows; splitting a window; DICOM range strings.

A window is one StudyDate and a half-open span of seconds ``[lo, hi)`` of that day. Windows never
cross midnight, so every query names a single StudyDate (PS3.4 C.2.2.2.5: range matching on
StudyDate and StudyTime is independent, so a query over midnight would match the wrong hours).

Range strings have to survive servers that compare TM values as strings (Orthanc, pynetdicom's
qrscp) as well as servers that parse them (dcmqrscp). A stored TM may be ``HH``, ``HHMM``,
``HHMMSS`` or ``HHMMSS.F`` to ``HHMMSS.FFFFFF`` (PS3.5 6.2). We send:

* a lower bound with trailing zero components dropped (``10`` for 10:00:00, ``1030`` for
  10:30:00, ``103015`` otherwise): a string-comparing server then finds every form of a time
  at or after the bound (``10`` <= ``10``, ``1000``, ``100000.5``), and none before it;
* an upper bound of the window's last second with six fraction digits (``105959.999999``):
  every form of every time before the next window's start compares lower or equal, and every
  form of the next window's start (``11``...) compares higher.

Each valid stored form therefore lands in exactly one window, on both kinds of server (a leap
second, ``HHMM60``, in none on a string-comparing one: see :func:`parse_tm`).
Studies with an empty or absent StudyTime match no closed range on any server we know; the
per-day sweep (a date-only query) finds them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

DAY_SECONDS = 86_400
#: Windows in one run at the most (hourly: about 114 years); the ledger holds them all.
MAX_WINDOWS = 1_000_000
SWEEP = "day"

_KEY = re.compile(r"(\d{8})/(?:(\d{6})-(\d{6})|(day))", re.ASCII)
_LEGACY_TM = re.compile(r"\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?", re.ASCII)
_TM = re.compile(r"(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?", re.ASCII)


class WindowError(ValueError):
    """A bad date range or window specification (the message says what to fix)."""


@dataclass(frozen=True, order=True)
class Window:
    """One StudyDate and the seconds ``[lo, hi)`` of it; ``lo == hi == -1`` means the whole day
    as a date-only query (the day sweep)."""

    day: date
    lo: int
    hi: int

    @property
    def is_sweep(self) -> bool:
        return self.lo < 0

    @property
    def key(self) -> str:
        """Stable, small, patient-free id: ``20240101/100000-110000`` or ``20240101/day``."""
        d = self.day.strftime("%Y%m%d")
        if self.is_sweep:
            return f"{d}/{SWEEP}"
        return f"{d}/{_hms(self.lo)}-{_hms(self.hi)}"

    @property
    def seconds(self) -> int:
        return DAY_SECONDS if self.is_sweep else self.hi - self.lo

    def study_date(self) -> str:
        """The DA value to query (single date, PS3.5 6.2)."""
        return self.day.strftime("%Y%m%d")

    def study_time(self) -> str:
        """The TM range to query; empty (universal matching) for the day sweep."""
        if self.is_sweep:
            return ""
        return f"{lower_bound(self.lo)}-{upper_bound(self.hi)}"

    def label(self) -> str:
        """Human-readable exact span, inclusive, for reports: ``2024-01-01 10:00:00-10:59:59``."""
        if self.is_sweep:
            return f"{self.day.isoformat()} (whole day, date-only)"
        return f"{self.day.isoformat()} {_clock(self.lo)}-{_clock(self.hi - 1)}.999999"

    def split(self) -> tuple[Window, Window]:
        """Two halves, for a window the PACS truncated or refused; floor at one second."""
        if not self.can_split():
            raise WindowError(f"window {self.key} cannot be split further")
        mid = self.lo + (self.hi - self.lo) // 2
        return Window(self.day, self.lo, mid), Window(self.day, mid, self.hi)

    def can_split(self) -> bool:
        return not self.is_sweep and self.hi - self.lo >= 2

    def contains_time(self, seconds: float) -> bool:
        return self.is_sweep or self.lo <= seconds < self.hi


def _hms(seconds: int) -> str:
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def _clock(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def lower_bound(lo: int) -> str:
    """Shortest TM for ``lo``: trailing zero components dropped (see the module docstring)."""
    hh, mm, ss = lo // 3600, lo // 60 % 60, lo % 60
    if mm == 0 and ss == 0:
        return f"{hh:02d}"
    if ss == 0:
        return f"{hh:02d}{mm:02d}"
    return f"{hh:02d}{mm:02d}{ss:02d}"


def upper_bound(hi: int) -> str:
    """The last second before ``hi`` with full fraction precision: ``105959.999999``."""
    return f"{_hms(hi - 1)}.999999"


def parse_key(key: str) -> Window:
    """Inverse of :attr:`Window.key`; raises :class:`WindowError` on anything else."""
    m = _KEY.fullmatch(key)
    if not m:
        raise WindowError(f"not a window key: {key!r}")
    try:
        day = datetime.strptime(m.group(1), "%Y%m%d").date()
    except ValueError:
        raise WindowError(f"not a window key: {key!r}") from None
    if m.group(4):
        return Window(day, -1, -1)
    lo, hi = _seconds(m.group(2)), _seconds(m.group(3))
    # Exactly one spelling per window (``006000`` is not 01:00:00): keys are ledger keys.
    if not 0 <= lo < hi <= DAY_SECONDS or Window(day, lo, hi).key != key:
        raise WindowError(f"not a window key: {key!r}")
    return Window(day, lo, hi)


def _seconds(hms: str) -> int:
    return int(hms[:2]) * 3600 + int(hms[2:4]) * 60 + int(hms[4:6])


def parse_tm(value: str | None, *, legacy: bool = False) -> float | None:
    """Seconds since midnight for a valid TM value (``HH``...``HHMMSS.FFFFFF``), else ``None``.

    ``None`` also for empty values and for the ACR-NEMA ``HH:MM:SS`` form, which PS3.5 no
    longer allows: such studies are found by the day sweep only. With ``legacy`` that form is
    read too: to tell whether such a study lies in the part of a day a run covers.

    A leap second (``SS`` = 60) counts as the last instant of second 59, so it stays inside its
    minute and its day. A string-comparing server puts ``HHMM60`` in no window (it sorts after
    ``HHMM59.999999``); the day sweep finds it, and keeps it because it is inside the day.
    """
    if not value:
        return None
    value = value.strip()
    if legacy and _LEGACY_TM.fullmatch(value):
        value = value.replace(":", "")
    m = _TM.fullmatch(value)
    if not m:
        return None
    hh, mm, ss, frac = m.groups()
    total = int(hh) * 3600 + int(mm or 0) * 60 + int(ss or 0)
    if int(hh) > 23 or int(mm or 0) > 59 or int(ss or 0) > 60:
        return None
    if int(ss or 0) == 60:
        total -= 1
    return total + (float("0." + frac) if frac else 0.0)


def parse_bound(text: str, *, is_end: bool) -> datetime:
    """``YYYY-MM-DD`` (an end date includes the whole day) or ``YYYY-MM-DDTHH:MM``.

    Returns the instant where the range starts, or, for an end, where it stops (exclusive).
    """
    text = text.strip()
    instant = "T" in text or " " in text
    try:
        day = datetime.strptime(text.replace(" ", "T"), "%Y-%m-%dT%H:%M" if instant
                                else "%Y-%m-%d")
    except ValueError:
        raise WindowError(
            f"{text!r} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM"
        ) from None
    if not 1000 <= day.year <= 9998:
        # A typo such as 0224 for 2024: DA needs four digits, and 9999-12-31 has no day after.
        raise WindowError(f"{text!r}: the year must be between 1000 and 9998")
    return day + timedelta(days=1) if is_end and not instant else day


def plan(start: datetime, end: datetime, minutes: int) -> list[Window]:
    """Windows covering ``[start, end)`` exactly, in order, aligned to a grid of ``minutes``
    from each midnight, cut at midnight; the last window of a day may be shorter."""
    if not 1 <= minutes <= 1440:
        raise WindowError(f"window length must be 1 to 1440 minutes, not {minutes}")
    if end <= start:
        raise WindowError(f"the end ({end:%Y-%m-%d %H:%M}) is not after the start "
                          f"({start:%Y-%m-%d %H:%M})")
    step = minutes * 60
    estimate = (end - start).total_seconds() / step
    if estimate > MAX_WINDOWS:
        raise WindowError(f"the range holds about {int(estimate):,} windows of {minutes} "
                          f"minutes, more than the {MAX_WINDOWS:,} a run may have: set a longer "
                          "DISCOVERY_WINDOW_MINUTES (at most 1440), or split the range into "
                          "several runs, each with its own --output")
    out: list[Window] = []
    day = start.date()
    while datetime.combine(day, time()) < end:
        midnight = datetime.combine(day, time())
        first = max(0, int((start - midnight).total_seconds()))
        last = min(DAY_SECONDS, int((end - midnight).total_seconds()))
        lo = first
        while lo < last:
            hi = min(last, (lo // step + 1) * step, DAY_SECONDS)
            out.append(Window(day, lo, hi))
            lo = hi
        day += timedelta(days=1)
    return out


def sweeps(windows: list[Window]) -> list[Window]:
    """One date-only sweep per day that the windows touch."""
    days = sorted({w.day for w in windows if not w.is_sweep})
    return [Window(d, -1, -1) for d in days]


def day_span(start: datetime, end: datetime, day: date) -> tuple[int, int]:
    """The seconds ``[lo, hi)`` of ``day`` that the run covers."""
    midnight = datetime.combine(day, time())
    lo = max(0, int((start - midnight).total_seconds()))
    hi = min(DAY_SECONDS, int((end - midnight).total_seconds()))
    return lo, hi


def merge_spans(windows: list[Window]) -> list[Window]:
    """The same time as ``windows``, in order, with windows that touch on the same day joined
    (for reports: 20 adjacent five-minute windows are one span). Day sweeps stay as they are."""
    merged: list[Window] = []
    for w in sorted(set(windows)):
        last = merged[-1] if merged else None
        if (last is not None and not w.is_sweep and not last.is_sweep and last.day == w.day
                and w.lo <= last.hi):
            merged[-1] = Window(w.day, last.lo, max(last.hi, w.hi))
        else:
            merged.append(w)
    return merged
