"""The aggregator's control actions on a real ledger and a real Redis mirror."""

from __future__ import annotations

from pathlib import Path

from demo.cluster import RedisServer
from discovery import status
from discovery.aggregator import Aggregator
from discovery.ledger import Ledger

RUN = "run-1"
PARAMS = {"start": "2024-01-01T00:00:00", "end": "2024-01-01T01:00:00", "window_minutes": 60,
          "day_sweep": False, "all_studies": False}
FAILED = {"state": "failed", "status": None, "rows": 0, "studies": [], "anomalies": {},
          "error": "aborted", "seconds": 0.1}


def test_retry_failed_mirror_says_running_before_any_window_is_sent(
        redis_server: RedisServer, broker_url: str, tmp_path: Path) -> None:
    """Query tasks of a finished run stand down, so a re-opened run must say ``running``
    before a worker can receive one of its windows."""
    client = redis_server.client()
    seen: list[str] = []

    def dispatch(run_id: str, keys: list[str]) -> None:
        seen.append(status.read(client, run_id)["state"])

    agg = Aggregator(Ledger(tmp_path / "ledger.sqlite3"), client, dispatch)
    agg.register(RUN, {**PARAMS, "output": str(tmp_path / "out.csv")})
    agg.record(RUN, "20240101/000000-010000", FAILED, final=True)
    assert status.read(client, RUN)["state"] == "finished"
    agg.control("retry_failed", RUN, "nonce")
    assert seen == ["running"]


def test_a_resume_with_fixed_settings_is_what_the_report_names(
        redis_server: RedisServer, broker_url: str, tmp_path: Path) -> None:
    """A run stopped because the workers query another PACS (a wrong called AE title at the
    producer) and resumed with the right one: the coverage report names the PACS the run
    then queried, not the wrong one."""
    import json

    client = redis_server.client()
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    agg = Aggregator(ledger, client, lambda run_id, keys: None)
    agg.register(RUN, {**PARAMS, "output": str(tmp_path / "out.csv"),
                       "pacs": "WRONGAET@127.0.0.1:104", "calling_aet": "DISCOVERY"})
    status.publish(client, RUN, {"target": "DISCOVERY->ORTHANC@127.0.0.1:104"})
    agg.control("resume", RUN, "nonce")
    assert ledger.run(RUN)["params"]["pacs"] == "ORTHANC@127.0.0.1:104"  # type: ignore[index]
    agg.record(RUN, "20240101/000000-010000", {**FAILED, "state": "complete", "status": 0,
                                               "error": None}, final=True)
    report = json.loads((tmp_path / "out.coverage.json").read_text())
    assert report["parameters"]["pacs"] == "ORTHANC@127.0.0.1:104"


def test_cancel_stops_a_running_run_and_not_a_finished_one(
        redis_server: RedisServer, broker_url: str, tmp_path: Path) -> None:
    """The aggregator decides: a cancel of a finished run changes nothing (its mirror said
    ``stopped`` when the producer stopped it unasked)."""
    client = redis_server.client()
    agg = Aggregator(Ledger(tmp_path / "ledger.sqlite3"), client, lambda run_id, keys: None)
    agg.register(RUN, {**PARAMS, "output": str(tmp_path / "out.csv")})
    agg.record(RUN, "20240101/000000-010000", {**FAILED, "state": "complete", "status": 0,
                                               "error": None}, final=True)
    assert status.read(client, RUN)["state"] == "finished"
    agg.control("cancel", RUN, "nonce-1")
    mirror = status.read(client, RUN)
    assert (mirror["state"], mirror["ack"], mirror["summary"]["verdict"]) == (
        "finished", "nonce-1", "complete")
    assert status.stopped(client, RUN) is None

    agg.register("run-2", {**PARAMS, "output": str(tmp_path / "out2.csv")})
    agg.control("cancel", "run-2", "nonce-2")
    mirror = status.read(client, "run-2")
    assert (mirror["state"], mirror["ack"]) == ("stopped", "nonce-2")
    assert "cancelled by the operator" in mirror["message"]
    assert status.stopped(client, "run-2") == mirror["message"]


def test_a_second_cancel_keeps_the_first_stop(
        redis_server: RedisServer, broker_url: str, tmp_path: Path) -> None:
    """A cancel of a stopped run stops nothing more: the answer says it was already stopped and
    the reason it stopped for (a worker's, or the first cancel's) stays."""
    client = redis_server.client()
    agg = Aggregator(Ledger(tmp_path / "ledger.sqlite3"), client, lambda run_id, keys: None)
    agg.register(RUN, {**PARAMS, "output": str(tmp_path / "out.csv")})
    agg.control("cancel", RUN, "nonce-1")
    assert status.read(client, RUN)["cancel"] == "cancelled"
    agg.control("cancel", RUN, "nonce-2")
    mirror = status.read(client, RUN)
    assert (mirror["state"], mirror["ack"], mirror["cancel"]) == (
        "stopped", "nonce-2", "already_stopped")

    agg.register("run-2", {**PARAMS, "output": str(tmp_path / "out2.csv")})
    status.stop_run(client, "run-2", "the PACS rejected us: fix DISCOVERY_CALLING_AET")
    agg.control("cancel", "run-2", "nonce-3")
    mirror = status.read(client, "run-2")
    assert (mirror["state"], mirror["cancel"]) == ("stopped", "already_stopped")
    assert mirror["message"] == "the PACS rejected us: fix DISCOVERY_CALLING_AET"
