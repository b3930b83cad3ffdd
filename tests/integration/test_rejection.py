"""A PACS that rejects our calling AE title is told apart from an unreachable one, every time.

Orthanc (DCMTK) resets the connection right after its A-ASSOCIATE-RJ; now and then the reset
discards the RJ before pynetdicom reads it (about 1 association in 15 here), which looked like
"no DICOM answer" (exit 6) instead of "calling AE title not recognized" (exit 5).
"""

from __future__ import annotations

import pytest

from demo.servers import OrthancServer
from discovery.dimse import PacsConnection
from discovery.errors import PermanentError
from discovery.settings import load_settings

STRICT = {"DicomAlwaysAllowEcho": False, "DicomAlwaysAllowFind": False,
          "DicomAlwaysAllowStore": False, "DicomCheckCalledAet": True,
          "DicomModalities": {"discovery": ["DISCOVERY", "127.0.0.1", 104]}}


def test_rejection_is_seen_on_every_association(tmp_path) -> None:
    with OrthancServer(tmp_path / "orthanc", extra_config=STRICT) as orthanc:
        settings = load_settings(pacs_port=orthanc.port, called_aet=orthanc.aet,
                                 calling_aet="WRONG", acse_timeout=5)
        for _ in range(40):
            with pytest.raises(PermanentError, match="DISCOVERY_CALLING_AET"):
                PacsConnection(settings).open()
