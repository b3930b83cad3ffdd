"""``python -m producer``: plan a run, check the broker and the PACS, enqueue, and optionally wait.

Exit codes: 0 every window covered; 1 unexpected error; 2 bad input or settings (including an
unknown run id); 3 the run is incomplete (failed or uncovered windows, the coverage report
names them); 4 the PACS does not return Study Description; 5 the PACS or broker refuses us for
a reason a setting must fix (AE title, C-FIND not allowed), or the run is stopped (by a worker
for such a reason, or ``--cancel``); 6 the broker or the PACS cannot be reached; 7 ``--wait
--timeout`` gave up while the run goes on. ``--status`` exits as ``--wait`` would for the run's
state (0 while it goes on).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import NoReturn

from discovery.errors import PermanentError, TransientError
from discovery.report import derived_kind, probe_folder
from discovery.settings import Settings, SettingsError, load_settings, mask_secrets, mask_url
from discovery.windows import WindowError, parse_bound

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INCOMPLETE = 0, 1, 2, 3
EXIT_NO_DESCRIPTION, EXIT_CONFIG, EXIT_UNREACHABLE, EXIT_RUNNING = 4, 5, 6, 7
#: Options of the "a new run" group besides --start/--end: an existing run keeps its own.
NEW_RUN_ONLY = ("--output", "--all-studies", "--excel-safe", "--skip-preflight")
VERDICT_EXIT = {"complete": EXIT_OK, "incomplete": EXIT_INCOMPLETE,
                "no_description": EXIT_NO_DESCRIPTION}

DESCRIPTION = """\
Find every study a PACS holds in a date range, over DICOM C-FIND in time windows, and write
the studies that lack a Study Description (or all, with --all-studies) to a CSV.
Settings come from DISCOVERY_* environment variables or .env (see .env.example)."""

EPILOG = """\
exit codes: 0 complete; 2 bad input or settings; 3 incomplete (see the coverage report);
4 the PACS does not return Study Description; 5 a setting must change (AE title, C-FIND not
allowed, TLS, the broker's password or version) or the run is stopped (--cancel); 6 broker or
PACS unreachable; 7 --timeout gave up, the run goes on; 1 unexpected error. --status and
--cancel of a finished run exit with its verdict, --status of a stopped run with 5.

examples:
  python -m producer --start 2024-01-01 --end 2024-01-31 --wait
  python -m producer --start 2024-01-01T08:00 --end 2024-01-01T12:00 --all-studies --wait
  python -m producer --status RUN_ID
  python -m producer --resume RUN_ID --wait
  python -m producer --retry-failed RUN_ID --wait
  python -m producer --cancel RUN_ID"""


class Parser(argparse.ArgumentParser):
    """Bad input gives one line that says what to fix (not argparse's usage block), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m producer", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run = p.add_argument_group("a new run")
    run.add_argument("--start", metavar="WHEN",
                     help="first day YYYY-MM-DD (from midnight) or instant YYYY-MM-DDTHH:MM")
    run.add_argument("--end", metavar="WHEN",
                     help="last day YYYY-MM-DD (inclusive, to midnight after it) or instant "
                          "YYYY-MM-DDTHH:MM (exclusive)")
    run.add_argument("--output", metavar="PATH", type=Path,
                     help="CSV to write, for this run (default: DISCOVERY_OUTPUT)")
    run.add_argument("--all-studies", action="store_true",
                     help="write every study, not only those lacking a Study Description")
    run.add_argument("--excel-safe", action="store_true",
                     help="also write <output>.excel.csv for spreadsheets (BOM, formula-like "
                          "cells quoted); the main CSV stays byte-faithful")
    run.add_argument("--skip-preflight", action="store_true",
                     help="do not C-ECHO and test-query the PACS before enqueuing")
    existing = p.add_argument_group("an existing run").add_mutually_exclusive_group()
    existing.add_argument("--resume", metavar="RUN_ID",
                          help="send again every window of RUN_ID that has not reported")
    existing.add_argument("--retry-failed", metavar="RUN_ID",
                          help="try the failed windows of RUN_ID again")
    existing.add_argument("--status", metavar="RUN_ID", help="print where RUN_ID stands")
    existing.add_argument("--cancel", metavar="RUN_ID",
                          help="stop RUN_ID: workers skip its remaining windows (--resume "
                               "continues it later)")
    p.add_argument("--wait", action="store_true",
                   help="show progress until the CSV is written, then a summary; the exit "
                        "code says whether every window was covered")
    p.add_argument("--timeout", type=float, metavar="SECONDS", default=0,
                   help="with --wait: give up waiting after SECONDS, 0 or more (0 = never)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    existing = args.resume or args.retry_failed or args.status or args.cancel
    if existing and (args.start or args.end):
        parser.error("--start/--end start a new run; do not combine them with "
                     "--resume, --retry-failed, --status or --cancel")
    if existing:
        for option in NEW_RUN_ONLY:
            if getattr(args, option.lstrip("-").replace("-", "_")):
                parser.error(f"{option} only applies to a new run (--start/--end); leave it "
                             "out with --resume, --retry-failed, --status or --cancel")
    if not existing and not (args.start and args.end):
        parser.error("--start and --end are required (or --resume/--retry-failed/--status/"
                     "--cancel)")
    if args.wait and (args.status or args.cancel):
        parser.error("--wait follows a new, resumed or retried run; --status and --cancel "
                     "answer at once: leave --wait out")
    if not math.isfinite(args.timeout):
        parser.error(f"--timeout {args.timeout:g} is not a number of seconds: give the seconds "
                     "to wait (0 = never give up)")
    if args.timeout < 0:
        parser.error(f"--timeout {args.timeout:g} is negative: give the seconds to wait "
                     "(0 = never give up)")
    if args.timeout and not args.wait:
        parser.error("--timeout limits --wait: add --wait, or leave --timeout out")
    try:
        settings = load_settings()
    except SettingsError as exc:
        return _fail(EXIT_USAGE, str(exc))
    from producer import run as runner  # imports Celery only once input is known to be good

    try:
        if existing:
            return runner.existing(args, settings)
        start = parse_bound(args.start, is_end=False)
        end = parse_bound(args.end, is_end=True)
        if end <= start:
            parser.error(f"--end ({args.end}) is not after --start ({args.start}): give an end "
                         "later than the start")
        output = (args.output or settings.output).expanduser().absolute()
        _check_name(output, "--output" if args.output else "DISCOVERY_OUTPUT")
        _check_writable(output)
        return runner.new_run(args, settings, start, end, output)
    except WindowError as exc:
        parser.error(str(exc))
    except PermanentError as exc:
        return _fail(EXIT_CONFIG, str(exc))
    except TransientError as exc:
        return _fail(EXIT_UNREACHABLE, str(exc))
    except UsageError as exc:
        return _fail(EXIT_USAGE, str(exc))
    except Interrupted as exc:
        return _fail(EXIT_ERROR, "interrupted; the run goes on in the workers "
                     f"(python -m producer --status {exc.run_id})")
    except KeyboardInterrupt:
        return _fail(EXIT_ERROR, "interrupted")
    return EXIT_ERROR  # pragma: no cover - parser.error exits


class UsageError(Exception):
    """Bad input discovered after parsing (an unwritable path, an unknown run id)."""


class Interrupted(Exception):
    """Ctrl-C while waiting for a run: the run goes on, and its id is known."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self.run_id = run_id


def _fail(code: int, message: str) -> int:
    print(f"pacs-discovery: {mask_secrets(message)}", file=sys.stderr)
    return code


def _check_name(output: Path, source: str) -> None:
    """The CSV must not take a name the tool derives from another output (its report, its
    incomplete CSV, its spreadsheet copy): that run's file would be overwritten."""
    kind = derived_kind(output)
    if kind:
        raise UsageError(f"{source} {output} is named like the {kind} of another run's output: "
                         "choose a name that does not end in .coverage.json, .incomplete.<ext> "
                         "or .excel.csv")


def _check_writable(output: Path) -> None:
    """The CSV's folder must be writable (by the aggregator; here we check what we can see)."""
    if output.exists() and output.is_dir():
        raise UsageError(f"--output {output} is a directory: give a file path")
    folder = output.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"cannot write the CSV: {folder} is a file, not a directory "
                         "(choose another --output or DISCOVERY_OUTPUT)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write the CSV: {folder} is not writable "
                         "(choose another --output or DISCOVERY_OUTPUT)")
    # Permission bits do not tell all (root passes every access check, /proc and read-only
    # mounts refuse files anyway): a file made and removed at once does.
    try:
        probe_folder(folder)
    except OSError as exc:
        raise UsageError(f"cannot write the CSV: no file can be made in {folder} "
                         f"({exc.strerror}): choose another --output or DISCOVERY_OUTPUT"
                         ) from None


def new_run_id() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def describe(settings: Settings) -> str:
    return (f"PACS {settings.pacs_label} as {settings.calling_aet}, broker "
            f"{mask_url(settings.broker_url)}")

