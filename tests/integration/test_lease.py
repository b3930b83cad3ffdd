"""discovery.throttle.AssociationLease on a real Redis."""

from __future__ import annotations

import time

import pytest

from demo.cluster import RedisServer
from discovery.errors import TransientError
from discovery.throttle import AssociationLease

KEY = "discovery:assoc:TEST@127.0.0.1:104"


def test_a_released_slot_is_free_after_the_grace(redis_server: RedisServer,
                                                 broker_url: str) -> None:
    """The PACS still counts an association for a moment after our A-RELEASE: the slot is
    taken for RELEASE_GRACE more, then free; nothing stays behind in Redis."""
    client = redis_server.client()
    with AssociationLease(client, KEY, 1, ttl=30):
        with pytest.raises(TransientError, match="DISCOVERY_PACS_MAX_ASSOCIATIONS"):
            AssociationLease(client, KEY, 1, ttl=30, wait=0).__enter__()
    with pytest.raises(TransientError):
        AssociationLease(client, KEY, 1, ttl=30, wait=0).__enter__()
    time.sleep(AssociationLease.RELEASE_GRACE + 0.05)
    with AssociationLease(client, KEY, 1, ttl=30, wait=0):
        assert client.zcard(KEY) == 1
