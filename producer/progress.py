"""The live progress bar and the summaries the producer prints (no patient data)."""

from __future__ import annotations

import time
from typing import TextIO


def plural(n: int, noun: str) -> str:
    """``1 day sweep``, ``2 day sweeps``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Bar:
    """windows done/total, studies found, rate, ETA; redrawn in place on a terminal, one line
    every 10 s otherwise (log files)."""

    def __init__(self, out: TextIO, width: int = 30) -> None:
        self.out, self.width = out, width
        self.tty = out.isatty()
        self.started = time.monotonic()
        self.first_done: int | None = None
        self.last_line = 0.0
        self.drawn = False

    def line(self, state: dict) -> str:
        total = int(state.get("windows_total", 0) or 0)
        open_ = int(state.get("windows_open", 0) or 0)
        done = total - open_
        if self.first_done is None:
            self.first_done = done
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = (done - self.first_done) / elapsed
        frac = done / total if total else 0.0
        fill = int(frac * self.width)
        eta = _eta(open_ / rate) if rate > 0 else "--:--:--"
        # No window seen done since the first look (a run already finished then): no rate.
        speed = f"{rate:.1f}" if done != self.first_done else "--"
        return (f"windows {done}/{total} [{'#' * fill}{'.' * (self.width - fill)}] "
                f"{frac:4.0%} | {state.get('studies', 0)} studies | {speed} windows/s "
                f"| ETA {eta}")

    def update(self, state: dict) -> None:
        now = time.monotonic()
        if self.tty:
            self.out.write("\r" + self.line(state))
            self.out.flush()
            self.drawn = True
        elif now - self.last_line >= 10:
            self.out.write(self.line(state) + "\n")
            self.out.flush()
            self.last_line = now

    def note(self, message: str) -> None:
        """A line of its own (a notice while waiting), below the bar if one is drawn."""
        if self.tty and self.drawn:
            self.out.write("\n")
            self.drawn = False
        self.out.write(message + "\n")
        self.out.flush()

    def done(self, state: dict) -> None:
        if state:
            if self.tty:
                self.out.write("\r" + self.line(state) + "\n")
            else:
                self.out.write(self.line(state) + "\n")
            self.out.flush()


def resume_advice(run_id: str, message: str) -> str | None:
    """What to do after a run stopped with ``message``, unless the message already says how
    to resume (an operator's cancel, a CSV that could not be written): then None, so the
    advice is printed once."""
    if f"--resume {run_id}" in message:
        return None
    return f"fix the setting, then: python -m producer --resume {run_id} --wait"


def stopped_lines(run_id: str, message: str) -> str:
    """The lines ``--wait`` prints (stderr) for a stopped run: the reason, then the advice."""
    advice = resume_advice(run_id, message)
    return f"pacs-discovery: run {run_id} stopped: {message}" + (f"\n{advice}" if advice else "")


def print_summary(run_id: str, s: dict, out: TextIO) -> None:
    ok = s["windows_done"]
    verdict = s["verdict"].replace("_", " ").upper()
    lines = [
        f"run {run_id}: {verdict}",
        f"  windows ok {ok}, failed {s['windows_failed']}, incomplete "
        f"{s['windows_incomplete']}, split {s['windows_split']}",
        f"  studies found {s['studies']}, lacking a description {s['lacking_description']}",
    ]
    if s.get("days_not_reconciled"):
        lines.append(f"  days not reconciled by the day sweep: {s['days_not_reconciled']}")
    anomalies = {k: v for k, v in (s.get("anomalies") or {}).items() if v}
    if anomalies:
        lines.append("  anomalies: " + ", ".join(f"{k} {v}" for k, v in sorted(anomalies.items())))
    for reason in s.get("reasons", []):
        lines.append(f"  ! {reason}")
    for span in s.get("uncovered", []):
        lines.append(f"  not covered: {span}")
    lines.append(f"  CSV: {s['csv']} ({s['csv_rows']} rows)")
    if s.get("excel"):
        lines.append(f"  spreadsheet copy: {s['excel']}")
    lines.append(f"  coverage report: {s['report']}")
    out.write("\n".join(lines) + "\n")
    out.flush()


def print_status(run_id: str, state: dict, out: TextIO) -> None:
    if state.get("state") == "finished" and state.get("summary"):
        print_summary(run_id, state["summary"], out)
        return
    total = state.get("windows_total", 0)
    open_ = state.get("windows_open", 0)
    out.write(
        f"run {run_id}: {state.get('state')}\n"
        f"  windows {total - open_}/{total} reported (ok {state.get('windows_done', 0)}, failed "
        f"{state.get('windows_failed', 0)}, incomplete {state.get('windows_incomplete', 0)}, "
        f"split {state.get('windows_split', 0)})\n"
        f"  studies found {state.get('studies', 0)}\n"
    )
    if state.get("message"):
        out.write(f"  stopped: {state['message']}\n")
    out.flush()
