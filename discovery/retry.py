"""The retry policy, written once. Only the query task retries; nothing below it does.

A window whose query fails transiently (see :class:`~discovery.errors.TransientError`: refused
connection, transient rejection, abort, timeout, a response without a status) is tried again
after :func:`backoff` seconds, up to ``DISCOVERY_MAX_ATTEMPTS`` attempts in all; then it is
``failed`` in the ledger and in the coverage report, and ``--retry-failed RUN_ID`` tries it
again later. Permanent errors are never retried: they stop the run.
"""

from __future__ import annotations

import random


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: ``base * 2**(attempt-1)``, at most ``cap``, scaled by a
    random factor in [0.5, 1] so that workers that failed together do not return together."""
    rng = rng or random.Random()
    delay = min(cap, base * 2 ** max(0, attempt - 1))
    return delay * (0.5 + rng.random() / 2)
