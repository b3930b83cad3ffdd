"""The aggregator is recognised from its command line and runs the solo pool unless the
command line names a pool."""

from __future__ import annotations

import pytest

from worker.app import consumes_results, pool_given


@pytest.mark.parametrize(("argv", "expected"), [
    (["celery", "-A", "worker", "worker", "-Q", "results", "-c", "1"], True),
    (["celery", "-A", "worker", "worker", "--queues=results"], True),
    (["celery", "-A", "worker", "worker", "-Qresults"], True),
    (["celery", "-A", "worker", "worker", "-Q", "queries,results"], True),
    (["celery", "-A", "worker", "worker", "-Q", "queries"], False),
    (["celery", "-A", "worker", "flower"], False),
    (["celery", "-A", "worker", "worker", "-Q"], False),
])
def test_consumes_results(argv: list[str], expected: bool) -> None:
    assert consumes_results(argv) is expected


@pytest.mark.parametrize(("argv", "expected"), [
    (["celery", "-A", "worker", "worker", "-Q", "results", "-P", "prefork"], True),
    (["celery", "-A", "worker", "worker", "-Q", "results", "-Pthreads"], True),
    (["celery", "-A", "worker", "worker", "-Q", "results", "--pool", "prefork"], True),
    (["celery", "-A", "worker", "worker", "-Q", "results", "--pool=prefork"], True),
    (["celery", "-A", "worker", "worker", "-Q", "results", "-c", "1"], False),
    (["celery", "-A", "worker", "worker", "-Q", "results", "--pool-start-method", "fork"], False),
])
def test_pool_given(argv: list[str], expected: bool) -> None:
    assert pool_given(argv) is expected
