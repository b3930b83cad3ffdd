"""The aggregator's pool, as the real ``celery worker`` reports it in its banner: solo by
default (worker/app.py), the pool the command line names otherwise (Celery on its own would
prefer the configured solo pool to an explicit ``-P prefork``)."""

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
