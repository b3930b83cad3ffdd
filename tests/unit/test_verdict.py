"""The run's verdict (discovery.report.verdict): pure."""

from __future__ import annotations

from discovery.report import verdict

DONE = {"windows_failed": 0, "windows_incomplete": 0, "windows_open": 0, "studies": 3}


def test_no_description_only_matters_for_the_lacking_list() -> None:
    progress = {**DONE, "description_returned": 0}
    assert verdict(progress, True)[0] == "no_description"
    state, notes = verdict(progress, True, all_studies=True)
    assert state == "complete"
    assert notes == ["the PACS does not return Study Description: the Study Description "
                     "column is empty for every study"]


def test_incomplete_wins_over_everything() -> None:
    progress = {**DONE, "windows_incomplete": 1, "description_returned": 0}
    assert verdict(progress, True, all_studies=True)[0] == "incomplete"
    assert verdict(progress, False)[0] == "incomplete"
