"""Measure how Orthanc, dcmqrscp and pynetdicom qrscp match StudyTime (TM) ranges in C-FIND.

Run from the repository root:

    .venv/bin/python docs/measure_tm.py > /tmp/measure.md

Each server gets ``edge_time_studies("20240105")``; then Study Root STUDY level C-FINDs with
StudyDate=20240105 and various StudyTime values tell which stored TM forms each query returns.
Prints Markdown tables (pasted into docs/pacs-behaviour.md).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as STUDY_ROOT_FIND

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo.servers import DcmqrscpServer, OrthancServer, QrscpServer  # noqa: E402
from demo.studies import edge_time_studies, generate_studies  # noqa: E402

DAY = "20240105"
QUERIES = [
    "000000-005959.999999",
    "00-005959.999999",
    "0059-0059",
    "01-015959.999999",
    "010000-015959.999999",
    "0100-0159",
    "23-235959.999999",
    "235959-",
    "-005959.999999",
    "",
]


def label(tm: str | None) -> str:
    return "absent" if tm is None else (tm or "empty")


def find(server, study_time: str | None, date: str = DAY) -> tuple[list[Dataset], int | None]:
    """Return (distinct-by-UID identifiers, final status) of one STUDY level C-FIND."""
    ae = AE(ae_title="MEASURE")
    ae.add_requested_context(STUDY_ROOT_FIND)
    assoc = ae.associate(server.host, server.port, ae_title=server.aet)
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyDate = date
    if study_time is not None:
        query.StudyTime = study_time
    query.StudyInstanceUID = ""
    rows: dict[str, Dataset] = {}
    final = None
    try:
        for status, ident in assoc.send_c_find(query, STUDY_ROOT_FIND):
            code = getattr(status, "Status", None)
            if code in (0xFF00, 0xFF01):
                rows.setdefault(ident.StudyInstanceUID, ident)
            else:
                final = code
    finally:
        assoc.release()
    return list(rows.values()), final


def windows(step_minutes: int) -> list[str]:
    """Planned range strings: lower = start with trailing zero components dropped,
    upper = last second of the window + ".999999"."""
    out = []
    for start in range(0, 24 * 60, step_minutes):
        end = start + step_minutes - 1
        hh, mm = divmod(start, 60)
        lower = f"{hh:02d}" if mm == 0 else f"{hh:02d}{mm:02d}"
        out.append(f"{lower}-{end // 60:02d}{end % 60:02d}59.999999")
    return out


def measure(server, uid_form: dict[str, str]) -> dict[str, object]:
    result: dict[str, object] = {}
    for q in QUERIES:
        rows, _ = find(server, q)
        result[q] = sorted({uid_form[r.StudyInstanceUID] for r in rows}, key=order)
    rows, _ = find(server, "")
    result["returned"] = {uid_form[r.StudyInstanceUID]: r.get("StudyTime") for r in rows}
    rows, _ = find(server, None)
    result["date-only"] = sorted({uid_form[r.StudyInstanceUID] for r in rows}, key=order)
    for step in (60, 15):
        hits: dict[str, int] = dict.fromkeys(uid_form.values(), 0)
        for w in windows(step):
            for r in find(server, w)[0]:
                hits[uid_form[r.StudyInstanceUID]] += 1
        result[f"windows{step}"] = hits
    return result


ORDER: list[str] = []


def order(form: str) -> int:
    return ORDER.index(form)


def main() -> int:
    edge = edge_time_studies(DAY)
    uid_form = {s["study_uid"]: label(s["study_time"]) for s in edge}
    ORDER.extend(uid_form.values())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cls in (
            ("Orthanc", OrthancServer),
            ("dcmqrscp", DcmqrscpServer),
            ("qrscp", QrscpServer),
        ):
            with cls(Path(tmp) / name) as server:
                server.store(edge)
                results[name] = measure(server, uid_form)
        # Orthanc LimitFindResults=5 with 8 matching studies.
        eight = generate_studies(__import__("datetime").date(2024, 1, 5), 1, 8)
        with OrthancServer(Path(tmp) / "limited", limit_find_results=5) as server:
            server.store(eight)
            rows, final = find(server, None)
            limit = (len(rows), final)

    names = list(results)
    print("### Stored forms returned per StudyTime query (StudyDate=20240105)\n")
    print("| StudyTime query | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for q in [*QUERIES, "date-only"]:
        shown = "(absent: date-only)" if q == "date-only" else f'`"{q}"`'
        cells = [", ".join(results[n][q]) or "none" for n in names]  # type: ignore[arg-type]
        print(f"| {shown} | " + " | ".join(cells) + " |")
    for step in (60, 15):
        print(
            f"\n### Windows containing each stored form ({24 * 60 // step} windows of {step} min)\n"
        )
        print("| stored StudyTime | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for form in ORDER:
            print(
                f"| {form} | "
                + " | ".join(str(results[n][f"windows{step}"][form]) for n in names)
                + " |"
            )  # type: ignore[index]
    print("\n### StudyTime value returned for each stored form\n")
    print("| stored | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for form in ORDER:
        print(
            f"| {form} | "
            + " | ".join(repr(results[n]["returned"].get(form)) for n in names)
            + " |"
        )  # type: ignore[attr-defined]
    print(
        f"\n### Orthanc LimitFindResults=5, 8 matching studies\n\n"
        f"pending answers: {limit[0]}, final status: 0x{limit[1]:04X}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
