"""Synthetic studies for demos and integration tests (pure: no network, no files).

A *study* here is a plain dict, one per DICOM Study (one StudyInstanceUID):

``study_uid``     Study Instance UID (0020,000D), unique under :data:`UID_ROOT`.
``patient_id``    Patient ID (0010,0020).
``patient_name``  Patient's Name (0010,0010), PN with ``^`` between components.
``accession``     Accession Number (0008,0050), SH; one generated value starts with ``-`` so
                  that CLI and CSV code that mistakes it for an option or formula is caught.
``study_date``    Study Date (0008,0020), DA ``YYYYMMDD``.
``study_time``    Study Time (0008,0030), TM ``HH[MM[SS[.F{1,6}]]]`` (PS3.5 Table 6.2-1);
                  ``""`` stores the attribute with an empty value, ``None`` leaves it out.
``description``   Study Description (0008,1030), LO; ``None`` leaves it out. A backslash is
                  the DICOM value separator, so ``"CT HEAD\\CONTRAST"`` is stored with VM 2.
``charset``       Specific Character Set (0008,0005): ``"ISO_IR 192"`` (UTF-8, default) or
                  ``"ISO_IR 100"`` (Latin-1).
``instances``     how many SOP Instances (one series) to create for the study.
"""

from __future__ import annotations

import random
from datetime import date, timedelta
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

Study = dict[str, Any]

#: Fixed UID root for every generated UID (a test root; never used for real data).
UID_ROOT = "1.2.826.0.1.3680043.10.543."
#: Secondary Capture Image Storage (PS3.4 Annex B.5).
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
UTF8 = "ISO_IR 192"
LATIN1 = "ISO_IR 100"

#: StudyTime forms stored by :func:`edge_time_studies`; "" = empty value, None = absent.
EDGE_TIMES: list[str | None] = [
    "000000",
    "005930",
    "005959",
    "005959.5",
    "005959.999999",
    "010000",
    "0059",
    "0100",
    "01",
    "120000",
    "235959",
    "235959.999999",
    "",
    None,
]

_NAMES = [
    "Doe^John",
    "Müller^Jürgen",
    "Åsa^Ødegård",
    "Smith^Anne^M",
    "Lefèvre^Zoë",
    "Nakamura^Ken",
    "García^José",
    "O'Brien^Siobhan",
]
_DESCRIPTIONS = [
    "CT HEAD\\CONTRAST",  # LO with VM 2: the CSV must show it joined with a backslash
    "Thorax, PA und lateral",  # contains a comma
    "Schädel nativ",
    "MR KNEE LEFT",
    "US Abdomen",
    "Röntgen Hand",
    "CT CHEST",
]
# Study Description missing in three ways: attribute absent, empty value, only spaces.
_NO_DESCRIPTION: list[str | None] = [None, "", "   "]


def _uid(*parts: int) -> str:
    return UID_ROOT + ".".join(str(p) for p in parts)


def _tm(seconds: int, form: str, rng: random.Random) -> str:
    hh, rem = divmod(seconds, 3600)
    mm, ss = divmod(rem, 60)
    if form == "HHMM":
        return f"{hh:02d}{mm:02d}"
    if form == "HHMMSS.FFF":
        return f"{hh:02d}{mm:02d}{ss:02d}.{rng.randrange(1000):03d}"
    return f"{hh:02d}{mm:02d}{ss:02d}"


def _latin1_ok(*texts: str | None) -> bool:
    try:
        for text in texts:
            (text or "").encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def generate_studies(start_date: date, days: int, per_day: int, seed: int = 0) -> list[Study]:
    """Return ``days * per_day`` deterministic studies starting at ``start_date``.

    StudyTime values are spread over each day (one slot of ``86400 / per_day`` seconds per
    study) in the TM forms ``HHMMSS`` (mostly), ``HHMM`` and ``HHMMSS.FFF``. Every third study
    lacks a description (absent, empty or spaces, in turn). The first studies of the list
    always include the multi-valued description, the one with a comma, and the accession
    number ``-12345``. Latin-1 encodable studies are sometimes stored as ``ISO_IR 100``.
    """
    rng = random.Random(seed)
    studies: list[Study] = []
    n = 0
    for d in range(days):
        day = start_date + timedelta(days=d)
        for i in range(per_day):
            slot = 86400 / per_day
            seconds = min(86399, int(i * slot + rng.random() * slot))
            form = rng.choices(["HHMMSS", "HHMM", "HHMMSS.FFF"], weights=[8, 1, 1])[0]
            if n % 3 == 2:
                description = _NO_DESCRIPTION[(n // 3) % len(_NO_DESCRIPTION)]
            elif n < 3:
                description = _DESCRIPTIONS[n]
            else:
                description = rng.choice(_DESCRIPTIONS)
            name = _NAMES[n % len(_NAMES)] if n < len(_NAMES) else rng.choice(_NAMES)
            charset = UTF8
            if _latin1_ok(name, description) and rng.random() < 0.3:
                charset = LATIN1
            studies.append(
                {
                    "study_uid": _uid(1, seed, day.toordinal(), i + 1),
                    "patient_id": f"P{seed}-{rng.randrange(10_000, 99_999)}",
                    "patient_name": name,
                    "accession": "-12345" if n == 1 else f"A{seed}{day:%y%m%d}{i + 1:04d}",
                    "study_date": day.strftime("%Y%m%d"),
                    "study_time": _tm(seconds, form, rng),
                    "description": description,
                    "charset": charset,
                    "instances": 1 + (n % 4 == 3),
                }
            )
            n += 1
    return studies


def edge_time_studies(day: str) -> list[Study]:
    """Return one study on ``day`` (DA) for each StudyTime form in :data:`EDGE_TIMES`.

    These are the values that decide whether hourly TM range queries lose or duplicate
    studies: reduced precision (``HH``, ``HHMM``), fractional seconds up to six digits, the
    last second of an hour and of the day, an empty value and an absent attribute. Three
    ordinary mid-day studies follow. The description names the stored form (``tm=…``).
    """
    ordinal = date(int(day[:4]), int(day[4:6]), int(day[6:])).toordinal()
    times: list[str | None] = [*EDGE_TIMES, "083015", "1430", "171717.25"]
    studies: list[Study] = []
    for i, tm in enumerate(times, start=1):
        label = "absent" if tm is None else (tm or "empty")
        studies.append(
            {
                "study_uid": _uid(9, ordinal, i),
                "patient_id": f"EDGE{i:02d}",
                "patient_name": "Edge^Time",
                "accession": f"E{day}{i:02d}",
                "study_date": day,
                "study_time": tm,
                "description": f"tm={label}",
                "charset": UTF8,
                "instances": 1,
            }
        )
    return studies


def to_datasets(study: Study) -> list[Dataset]:
    """Return ``study["instances"]`` Secondary Capture SOP Instances for ``study``.

    Each is a minimal 8x8 MONOCHROME2 image in one series, with File Meta Information for
    Explicit VR Little Endian, so that Orthanc, dcmqrscp and qrscp all accept it. Text
    attributes are encoded with ``study["charset"]`` when the dataset is written.
    """
    uid_tail = study["study_uid"][len(UID_ROOT) :]
    series_uid = f"{UID_ROOT}2.{uid_tail}"
    datasets = []
    for k in range(1, int(study.get("instances", 1)) + 1):
        ds = Dataset()
        ds.SpecificCharacterSet = study.get("charset") or UTF8
        ds.SOPClassUID = SECONDARY_CAPTURE
        ds.SOPInstanceUID = f"{UID_ROOT}3.{uid_tail}.{k}"
        ds.StudyDate = study["study_date"]
        if study.get("study_time") is not None:
            ds.StudyTime = study["study_time"]
        ds.AccessionNumber = study["accession"]
        ds.Modality = "OT"
        ds.ConversionType = "WSD"
        if study.get("description") is not None:
            ds.StudyDescription = study["description"]
        ds.PatientName = study["patient_name"]
        ds.PatientID = study["patient_id"]
        ds.StudyInstanceUID = study["study_uid"]
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = 8
        ds.Columns = 8
        ds.BitsAllocated = 8
        ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = bytes((i * 4) % 256 for i in range(64))

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        datasets.append(ds)
    return datasets


def to_bytes(ds: Dataset) -> bytes:
    """Return ``ds`` as a DICOM Part 10 file (preamble, ``DICM``, File Meta, dataset)."""
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
