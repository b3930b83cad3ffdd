"""The end of a run: verdict, CSV, coverage report and the summary the producer prints."""

from __future__ import annotations

from pathlib import Path

from discovery import report
from discovery.ledger import Ledger
from discovery.outcome import status_text
from discovery.windows import merge_spans, parse_key


def _iso(day: str) -> str:
    """A ledger date (DA, ``YYYYMMDD``) as ``YYYY-MM-DD``; anything else as it is."""
    return f"{day[:4]}-{day[4:6]}-{day[6:]}" if len(day) == 8 else day


def coverage(ledger: Ledger, run_id: str, verdict: str, reasons: list[str], progress: dict,
             caps: list[tuple[str, int, int, int]]) -> dict:
    """The JSON coverage report: parameters, every window, per-day totals, anomalies.
    ``progress`` and ``caps`` are the ledger's :meth:`~Ledger.progress` and
    :meth:`~Ledger.silent_caps`, which the verdict was drawn from."""
    run = ledger.run(run_id)
    assert run is not None
    windows = []
    sweeps: dict[str, dict] = {}
    uncovered = []
    for key, parent, sweep, state, rows, studies, attempts, status, error, seconds in \
            ledger.windows(run_id):
        w = parse_key(key)
        entry = {
            "key": key, "range": w.label(), "date": w.day.isoformat(), "parent": parent,
            "status": state, "rows": rows, "studies": studies, "attempts": attempts,
            "final_status": status_text(status), "error": error, "seconds": seconds,
        }
        if sweep:
            sweeps[w.day.isoformat()] = entry
        else:
            windows.append(entry)
        if state in ("incomplete", "failed", "dispatched"):
            uncovered.append({"key": key, "range": w.label(), "status": state, "error": error})
    days = []
    for day, count, sweep_only in ledger.per_day(run_id):
        iso = _iso(day)
        sw = sweeps.get(iso)
        days.append({
            "date": iso, "studies": count, "found_only_by_day_sweep": sweep_only or 0,
            "reconciliation": _reconciliation(sw, run["params"].get("day_sweep", True)),
        })
    for iso, sw in sorted(sweeps.items()):
        if not any(d["date"] == iso for d in days):
            days.append({"date": iso, "studies": 0, "found_only_by_day_sweep": 0,
                         "reconciliation": _reconciliation(sw, True)})
    days.sort(key=lambda d: str(d["date"]))
    capped = {_iso(d): (s, f) for d, s, f, _ in caps}
    for d in days:
        if d["date"] in capped:
            s, f = capped[str(d["date"])]
            d["reconciliation"] = (f"not reconciled (silent cap: the day sweep found {s} "
                                   f"studies, the windows {f})")
    return {
        "run_id": run_id,
        "parameters": run["params"],
        "verdict": verdict,
        "reasons": reasons,
        "totals": {**progress, "day_sweeps": len(sweeps),
                   "days_not_reconciled": sum(1 for s in sweeps.values()
                                              if s["status"] != "done") + len(capped)},
        "anomalies": ledger.anomalies(run_id),
        "patient_id_conflicts": ledger.conflict_uids(run_id),
        "uncovered": uncovered,
        "days": days,
        "day_sweeps": list(sweeps.values()),
        "windows": windows,
    }


def _reconciliation(sweep: dict | None, enabled: bool) -> str:
    if not enabled:
        return "off"
    if sweep is None:
        return "none"
    return {"done": "reconciled", "dispatched": "pending"}.get(
        sweep["status"], f"not reconciled ({sweep['status']}, status {sweep['final_status']})"
    )


def finish_run(ledger: Ledger, run_id: str) -> dict:
    """Write the CSV (or the ``.incomplete`` one), the coverage report; return the summary."""
    run = ledger.run(run_id)
    assert run is not None
    params = run["params"]
    progress = ledger.progress(run_id)
    verdict, reasons = report.verdict(progress, params.get("day_sweep", True),
                                     bool(params.get("all_studies")))
    caps = ledger.silent_caps(run_id)
    if caps:
        largest = max(answers for _, _, _, answers in caps)
        days = ", ".join(f"{_iso(d)} ({s} < {f})" for d, s, f, _ in caps[:5])
        reasons.append(
            f"{len(caps)} day(s) where the date-only day sweep found fewer studies than the "
            f"windows ({days}): the PACS stops answering at a fixed count and says Success, so "
            f"windows may be cut short too; set DISCOVERY_PACS_MAX_RESULTS={largest} (its "
            "largest answer) and run again"
        )
        verdict = report.INCOMPLETE
    reasons = [r.replace("RUN_ID", run_id) for r in reasons]
    paths = report.output_paths(Path(params["output"]), verdict)
    written = report.write_csv(paths["csv"], ledger.studies(run_id, params["all_studies"]))
    if params.get("excel_safe"):
        report.write_excel_csv(paths["excel"], ledger.studies(run_id, params["all_studies"]))
    cov = coverage(ledger, run_id, verdict, reasons, progress, caps)
    report.write_json(paths["report"], cov)
    # The files at the output path are one run's, the one that finished last: what an earlier
    # finish (this run's or another's) left under the other names is removed, so that no CSV
    # sits beside a report that describes another run (README: give each run its own
    # --output to keep both).
    ours = {paths["csv"], paths["report"]} | ({paths["excel"]} if params.get("excel_safe")
                                              else set())
    for other in (report.COMPLETE, report.INCOMPLETE):
        for kind in ("csv", "excel"):
            path = report.output_paths(Path(params["output"]), other)[kind]
            if path not in ours:
                path.unlink(missing_ok=True)
    summary = {
        "verdict": verdict, "reasons": reasons, "csv": str(paths["csv"]),
        "csv_rows": written, "report": str(paths["report"]),
        "excel": str(paths["excel"]) if params.get("excel_safe") else None,
        "anomalies": cov["anomalies"],
        "days_not_reconciled": cov["totals"]["days_not_reconciled"],
        "uncovered": _uncovered_lines(cov["uncovered"]),
        **progress,
    }
    ledger.finish(run_id, summary)
    return summary


#: Spans the summary (the producer's output, --status) lists; the coverage report has them all.
SUMMARY_SPANS = 20


def _uncovered_lines(uncovered: list[dict]) -> list[str]:
    """The uncovered spans for the summary: adjacent windows joined, at most SUMMARY_SPANS,
    then how many more the coverage report lists."""
    spans = merge_spans([parse_key(u["key"]) for u in uncovered])
    lines = [w.label() for w in spans[:SUMMARY_SPANS]]
    if len(spans) > SUMMARY_SPANS:
        lines.append(f"... and {len(spans) - SUMMARY_SPANS} more spans: see the coverage report")
    return lines
