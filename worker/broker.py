"""kombu's Redis transport with one redis-py client per channel instead of one per command.

kombu 5.7's Redis channel builds a new ``redis.Redis`` object for every publish and every
acknowledgement (``Channel.conn_or_acquire``), over the channel's shared connection pool. The
object holds no connection, but its constructor fills a table of about 170 response callbacks:
measured here, a fifth of the CPU of ``apply_async`` (docs/benchmarks.md, "What changed").
This channel builds one and keeps it while its connection pool lives; commands still take their
connection from that pool, so nothing else changes.

:func:`install` makes it the transport of ``redis://`` and ``rediss://`` URLs for this
process (before the Celery app opens a connection), so broker URLs, Flower's broker view and
the worker's banner stay as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu import transport as _transports
from kombu.transport import redis as _redis

SCHEMES = ("redis", "rediss")


class Channel(_redis.Channel):
    _discovery_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool  # a new pool after a fork or a reconnect: a new client with it
        cached = self._discovery_client
        if cached is None or cached.connection_pool is not pool:
            cached = self._discovery_client = self._create_client()
        yield cached


class Transport(_redis.Transport):
    Channel = Channel


def install() -> None:
    """``redis://`` and ``rediss://`` use :class:`Transport` in this process."""
    for scheme in SCHEMES:
        _transports.TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
        _transports._transport_cache.pop(scheme, None)
