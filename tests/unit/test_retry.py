"""discovery.retry: exponential backoff with jitter, capped."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from discovery.retry import backoff


class Fixed(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_doubles_then_caps() -> None:
    top = [backoff(a, 2.0, 60.0, Fixed(1.0)) for a in range(1, 8)]
    assert top == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert [backoff(a, 2.0, 60.0, Fixed(0.0)) for a in (1, 6)] == [1.0, 30.0]
    assert backoff(0, 2.0, 60.0, Fixed(1.0)) == 2.0  # attempt 0 treated as the first


@given(st.integers(0, 100),  # DISCOVERY_MAX_ATTEMPTS is at most 100
        st.floats(0.001, 100), st.floats(0.001, 1000), st.integers())
def test_bounds(attempt: int, base: float, cap: float, seed: int) -> None:
    delay = backoff(attempt, base, cap, random.Random(seed))
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    assert ceiling / 2 <= delay <= ceiling


def test_default_rng_jitters() -> None:
    assert len({backoff(3, 1.0, 10.0) for _ in range(20)}) > 1
