"""Pure: classify how a C-FIND for one window ended, and what the ledger does about it.

Final statuses (PS3.4 C.4.1.1.4): 0x0000 Success; 0xFE00 Cancel; 0xA700 Refused, out of
resources; 0xA900 identifier does not match SOP class; 0xC000-0xCFFF unable to process.

* ``complete``  - Success, and fewer rows than the declared cap (``DISCOVERY_PACS_MAX_RESULTS``).
* ``truncated`` - the PACS stopped early: 0xFE00 although we sent no C-CANCEL (Orthanc's
  ``LimitFindResults``), Success with as many rows as the declared cap (a silent cap), or
  our own C-CANCEL of a day sweep past its limit. Rows received are real and kept.
* ``refused``   - 0xA700 or a 0xCxxx status: archives that refuse a query matching too much.
* ``failed``    - no final status (timeout, abort) or any other failure status.

Truncated and refused windows are split in halves down to one second; a window that is still
truncated or refused at that floor, and a day sweep that is, is ``incomplete``.
"""

from __future__ import annotations

from discovery.dimse import CANCEL, SUCCESS

COMPLETE, TRUNCATED, REFUSED, FAILED = "complete", "truncated", "refused", "failed"


def classify(status: int | None, rows: int, cap: int, cancelled: bool) -> str:
    """``rows`` counts raw Pending responses (not unique studies): a cap counts answers.
    ``cancelled``: we sent C-CANCEL, so even a Success after it may lack rows."""
    if status is None:
        return FAILED
    if status == SUCCESS:
        return TRUNCATED if cancelled or (cap and rows >= cap) else COMPLETE
    if status == CANCEL:
        return TRUNCATED
    if status == 0xA700 or 0xC000 <= status <= 0xCFFF:
        return REFUSED
    return FAILED


def status_text(status: int | None) -> str:
    """``0xFE00`` style, or ``none`` when no final response came."""
    return "none" if status is None else f"0x{status:04X}"
