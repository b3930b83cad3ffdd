"""worker/broker.py on a real Redis: one redis-py client per channel (kombu's own channel
builds one per publish and per acknowledgement), the messages all arrive, a new connection
pool gets a new client, and broker URLs keep their scheme."""

from __future__ import annotations

from typing import Any

import kombu
import pytest
import redis
from kombu.transport import redis as kombu_redis

from worker import broker

N = 100


def _round_trip(url: str, transport: type, queue: str) -> tuple[list[int], int]:
    """Publish N messages and consume (ack) them; the messages and the clients created."""
    created = 0
    real_init = redis.Redis.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal created
        created += 1
        real_init(self, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(redis.Redis, "__init__", counting)
    try:
        with kombu.Connection(url, transport=transport) as conn:
            q = kombu.Queue(queue, routing_key=queue)
            with conn.Producer() as producer:
                for i in range(N):
                    producer.publish({"i": i}, routing_key=queue, declare=[q])
            received: list[int] = []

            def on_message(body: dict, message: Any) -> None:
                received.append(body["i"])
                message.ack()

            with conn.Consumer(q, callbacks=[on_message]):
                while len(received) < N:
                    conn.drain_events(timeout=10)
    finally:
        mp.undo()
    return sorted(received), created


def test_one_client_per_channel_and_every_message_arrives(broker_url: str) -> None:
    stock, stock_created = _round_trip(broker_url, kombu_redis.Transport, "t-broker-stock")
    ours, ours_created = _round_trip(broker_url, broker.Transport, "t-broker-ours")
    assert stock == ours == list(range(N))
    assert stock_created > 2 * N  # kombu's channel: one per publish and one per ack
    assert ours_created <= 5  # ours: the channel's, the consumer's, a few for setup


def test_a_new_connection_pool_gets_a_new_client(broker_url: str) -> None:
    with kombu.Connection(broker_url, transport=broker.Transport) as conn:
        channel = conn.default_channel
        with channel.conn_or_acquire() as first:
            pass
        with channel.conn_or_acquire() as again:
            assert again is first
        channel._disconnect_pools()  # what kombu does after a fork and on reconnecting
        with channel.conn_or_acquire() as fresh:
            assert fresh is not first
            assert fresh.connection_pool is channel.pool
            assert fresh.ping()


def test_install_keeps_the_url_scheme(broker_url: str) -> None:
    broker.install()
    with kombu.Connection(broker_url) as conn:
        assert isinstance(conn.transport, broker.Transport)
        assert conn.as_uri().startswith("redis://")
    with kombu.Connection(broker_url.replace("redis://", "rediss://", 1)) as conn:
        assert isinstance(conn.transport, broker.Transport)
