"""Fixtures shared by the integration and fault tiers: a private Redis, real PACS servers on
free ports, and the real workers started with the documented commands."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.cluster import Cluster, RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def broker_url(redis_server: RedisServer) -> str:
    redis_server.client().flushall()
    return redis_server.url


@pytest.fixture
def make_cluster(tmp_path: Path, broker_url: str, request: pytest.FixtureRequest):
    """``make_cluster(pacs, **env)`` -> a :class:`Cluster` whose env points at ``pacs`` (any
    object with host, port, aet) and a fresh state dir and output under ``tmp_path``."""
    clusters: list[Cluster] = []

    def make(pacs, **env: str) -> Cluster:
        base = {
            "DISCOVERY_PACS_HOST": pacs.host,
            "DISCOVERY_PACS_PORT": str(pacs.port),
            "DISCOVERY_CALLED_AET": pacs.aet,
            "DISCOVERY_CALLING_AET": "DISCOVERY",
            "DISCOVERY_BROKER_URL": broker_url,
            "DISCOVERY_STATE_DIR": str(tmp_path / "state"),
            "DISCOVERY_OUTPUT": str(tmp_path / "out" / "dicom_query_results.csv"),
            "DISCOVERY_WATCHDOG_INTERVAL": "2",
            "DISCOVERY_RETRY_BACKOFF": "0.5",
            "DISCOVERY_RETRY_BACKOFF_MAX": "2",
        }
        cluster = Cluster(tmp_path / f"cluster{len(clusters)}", {**base, **env})
        clusters.append(cluster)
        return cluster

    yield make
    failed = getattr(request.node, "rep_call", None)
    for cluster in clusters:
        if failed is not None and failed.failed:
            print(cluster.logs()[-20000:])
        cluster.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
