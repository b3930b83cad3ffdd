"""Starting the real ``celery worker`` processes: the aggregator's pool as its banner reports
it (solo by default, worker/app.py; the pool the command line names otherwise: Celery on its own
would prefer the configured solo to an explicit ``-P prefork``), and demo/cluster.py's wait for
"ready." reading only the current start's log."""

from __future__ import annotations

from pathlib import Path

import pytest

from demo.cluster import Cluster


@pytest.mark.parametrize(("pool", "banner"), [(None, "(solo)"), ("prefork", "(prefork)"),
                                              ("threads", "(thread)")])
def test_aggregator_pool(tmp_path: Path, broker_url: str, pool: str | None,
                         banner: str) -> None:
    env = {"DISCOVERY_BROKER_URL": broker_url, "DISCOVERY_STATE_DIR": str(tmp_path / "state")}
    with Cluster(tmp_path, env) as cluster:
        agg = cluster.aggregator(pool=pool)
        cluster.wait_ready()
        line = next(x for x in agg.log().splitlines() if "concurrency:" in x)
        assert line.rstrip().endswith(banner), line


def test_wait_ready_ignores_an_earlier_runs_log(tmp_path: Path, broker_url: str) -> None:
    """The demo starts its processes with the same log files every time: the "ready." of the
    previous run must not count (the producer then started before any worker was up)."""
    (tmp_path / "aggregator-1.log").write_text("celery@old ready.\n")
    env = {"DISCOVERY_BROKER_URL": broker_url, "DISCOVERY_STATE_DIR": str(tmp_path / "state")}
    with Cluster(tmp_path, env) as cluster:
        agg = cluster.aggregator()
        cluster.wait_ready()
        assert agg.log().count(" ready.") == 2
