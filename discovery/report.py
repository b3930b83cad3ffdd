"""CSV and coverage report writers, and the run's verdict.

The CSV holds patient data: it is written to a temporary file beside the target, made readable
by owner and group only, then renamed, so no reader ever sees half a file. A run whose verdict
is not ``complete`` never writes to the output path itself, only to ``<stem>.incomplete.csv``,
so nothing at the output path looks complete when it is not.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

HEADER = ["Accession Number", "Study Date", "Study Time", "Patient ID", "Study UID",
          "Study Description"]
COMPLETE = "complete"
INCOMPLETE = "incomplete"
NO_DESCRIPTION = "no_description"
_EXCEL_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


#: A temporary file older than this was left by a writer that was killed (SIGKILL, power).
STALE_TMP_SECONDS = 3600


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new temporary file in ``path``'s folder (made if missing), named so that
    :func:`_remove_stale_tmp` finds it if its writer is killed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


def _atomic_write(path: Path, write, *, encoding: str = "utf-8") -> None:  # type: ignore[no-untyped-def]
    _remove_stale_tmp(path)
    fd, tmp = _temp_beside(path)
    try:
        os.fchmod(fd, 0o640)
        with os.fdopen(fd, "w", encoding=encoding, newline="") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_writable(output: Path) -> None:
    """Create the output's folder if it is missing, and a temporary file in it, removed at once:
    what writing the CSV at the end will need (an ``OSError`` says why not). Permission bits
    alone do not tell (root passes every access check, and /proc or a read-only mount refuse
    files anyway)."""
    output = Path(output)
    if output.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(output))
    output.parent.mkdir(parents=True, exist_ok=True)
    probe_folder(output.parent)


def probe_folder(folder: Path) -> None:
    """Make a file in ``folder`` and remove it at once (an ``OSError`` says why not)."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".pacs-discovery-check-", suffix=".tmp")
    os.close(fd)
    os.unlink(tmp)


def _remove_stale_tmp(path: Path) -> None:
    """Temporary files of a killed writer hold patient data: remove them at the next write."""
    cutoff = time.time() - STALE_TMP_SECONDS
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
        except OSError:
            pass


def write_csv(path: Path, rows: Iterable[Iterable[str]], encoding: str = "utf-8") -> int:
    """RFC 4180 CSV (``newline=''``, CRLF, minimal quoting), byte-faithful values."""
    count = 0

    def write(fh) -> None:  # type: ignore[no-untyped-def]
        nonlocal count
        out = csv.writer(fh, lineterminator="\r\n")
        out.writerow(HEADER)
        for row in rows:
            out.writerow(list(row))
            count += 1

    _atomic_write(Path(path), write, encoding=encoding)
    return count


def excel_cell(value: str) -> str:
    """Neutralise spreadsheet formulas (CSV injection): prefix a single quote."""
    return "'" + value if value.startswith(_EXCEL_TRIGGERS) else value


def write_excel_csv(path: Path, rows: Iterable[tuple[str, ...]]) -> int:
    """A second file for spreadsheets: UTF-8 with BOM, formula-looking cells quoted."""
    return write_csv(path, ((excel_cell(v) for v in row) for row in rows), "utf-8-sig")


def write_json(path: Path, data: dict) -> None:
    _atomic_write(Path(path), lambda fh: json.dump(data, fh, indent=2, sort_keys=True))


def output_paths(output: Path, verdict: str) -> dict[str, Path]:
    """Where the CSV, its spreadsheet twin and the coverage report go for this verdict."""
    output = Path(output)
    stem = output.with_suffix("") if output.suffix else output
    suffix = output.suffix or ".csv"
    csv_path = output if verdict == COMPLETE else Path(f"{stem}.incomplete{suffix}")
    return {
        "csv": csv_path,
        "excel": Path(f"{csv_path.with_suffix('')}.excel.csv"),
        "report": Path(f"{stem}.coverage.json"),
    }


def derived_kind(output: Path) -> str | None:
    """Which file :func:`output_paths` derives for another output has this name (``x.csv``
    gives ``x.coverage.json``, ``x.incomplete.csv``, ``x.excel.csv``,
    ``x.incomplete.excel.csv``), or None. Such a name as the output would overwrite another
    run's report, incomplete CSV or spreadsheet copy."""
    name = Path(output).name.lower()
    if name.endswith(".coverage.json"):
        return "coverage report"
    if name.endswith(".excel.csv"):
        return "spreadsheet copy"
    if Path(name).suffix and Path(name).stem.endswith(".incomplete"):
        return "incomplete CSV"
    return None


def verdict(progress: dict, day_sweep: bool, all_studies: bool = False) -> tuple[str, list[str]]:
    """``complete``, ``incomplete`` or ``no_description``, with the reasons in plain words.

    ``no_description`` only when the CSV is to list the studies lacking a description: an
    inventory (``--all-studies``) does not depend on the description, so it stays complete
    and says so in a note."""
    reasons = []
    sweeps_failed = progress.get("sweeps_failed", 0)
    sweeps_incomplete = progress.get("sweeps_incomplete", 0)
    failed = progress["windows_failed"] - sweeps_failed
    incomplete = progress["windows_incomplete"] - sweeps_incomplete
    if failed or sweeps_failed:
        what = [f"{failed} window(s)"] if failed else []
        what += [f"{sweeps_failed} day sweep(s)"] if sweeps_failed else []
        reasons.append(f"{' and '.join(what)} failed after every attempt (the PACS did not "
                       "answer); once it does: python -m producer --retry-failed RUN_ID --wait")
    if incomplete:
        reasons.append(
            f"{incomplete} window(s) still truncated or refused at one second: their exact "
            "ranges are listed as uncovered in the coverage report"
        )
    if sweeps_incomplete:
        reasons.append(
            f"{sweeps_incomplete} day(s) not reconciled (the PACS truncated or refused the "
            "date-only day sweep): studies without a StudyTime on those days may be missing; "
            "raise the PACS's result limit, or set DISCOVERY_DAY_SWEEP=false to accept that "
            "risk"
        )
    if progress["windows_open"]:
        reasons.append(f"{progress['windows_open']} window(s) never reported")
    if reasons:
        return INCOMPLETE, reasons
    notes = []
    if progress["studies"] and not progress["description_returned"]:
        if not all_studies:
            return NO_DESCRIPTION, [
                "the PACS never returned the Study Description attribute, so no study can be "
                "judged as lacking one; ask the PACS vendor, or use --all-studies for the "
                "inventory"
            ]
        notes.append("the PACS does not return Study Description: the Study Description "
                     "column is empty for every study")
    if not day_sweep:
        notes.append("day sweep off (DISCOVERY_DAY_SWEEP=false): studies without a readable "
                     "StudyTime were not searched for")
    return COMPLETE, notes
