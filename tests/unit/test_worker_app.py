"""The aggregator is recognised from its command line and runs the solo pool."""

from __future__ import annotations

import pytest

from worker.app import consumes_results


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
