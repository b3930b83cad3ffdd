"""Seed a PACS with generated studies: ``python -m demo.seed``.

Either upload to Orthanc over its REST API (``--orthanc-url``, fast) or send by C-STORE to
any Storage SCP (``--dicom host:port:AET``). Prints counts only, never patient data.

Examples::

    python -m demo.seed --orthanc-url http://127.0.0.1:8042 --start 2024-01-01 --days 3
    python -m demo.seed --dicom 127.0.0.1:11112:DCMQR --start 2024-01-01 --per-day 50
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
from datetime import date

from demo.servers import ServerError, c_store, upload_rest
from demo.studies import generate_studies

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_FAILED = 3


def _parse_dicom(value: str) -> tuple[str, int, str]:
    host, sep, rest = value.rpartition(":")
    host, sep2, port = host.rpartition(":")
    if not (sep and sep2 and host and port.isdigit() and rest):
        raise argparse.ArgumentTypeError(f"expected host:port:AET, got {value!r}")
    return host, int(port), rest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m demo.seed", description="Store generated demo studies in a PACS."
    )
    target = parser.add_argument_group("target (exactly one)")
    target.add_argument("--orthanc-url", help="Orthanc base URL, e.g. http://127.0.0.1:8042")
    target.add_argument("--user", help="Orthanc HTTP user (with --orthanc-url)")
    target.add_argument("--password", help="Orthanc HTTP password (with --orthanc-url)")
    target.add_argument(
        "--dicom",
        type=_parse_dicom,
        metavar="HOST:PORT:AET",
        help="C-STORE to this Storage SCP instead of REST",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--start", type=date.fromisoformat, required=True, help="first StudyDate")
    data.add_argument("--days", type=int, default=1, help="number of days (default 1)")
    data.add_argument("--per-day", type=int, default=20, help="studies per day (default 20)")
    data.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.orthanc_url is None) == (args.dicom is None):
        parser.error("give exactly one of --orthanc-url or --dicom")
    if args.dicom is not None and (args.user or args.password):
        parser.error("--user/--password only apply to --orthanc-url")
    if args.days < 1 or args.per_day < 1:
        parser.error("--days and --per-day must be at least 1")

    studies = generate_studies(args.start, args.days, args.per_day, seed=args.seed)
    try:
        if args.orthanc_url is not None:
            count = upload_rest(args.orthanc_url, studies, args.user, args.password)
        else:
            host, port, aet = args.dicom
            count = c_store(host, port, aet, studies)
    except (ServerError, urllib.error.URLError, OSError) as exc:
        print(f"seeding failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"stored {len(studies)} studies ({count} instances) over {args.days} day(s)")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
