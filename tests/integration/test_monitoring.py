"""The aggregator, started with the documented command, sends no task events of its own (they
cost it a sixth of its time per result) until a monitor asks for them the way Flower does
(the ``enable_events`` broadcast); then its tasks show up as events."""

from __future__ import annotations

import threading
import time
import uuid
from types import SimpleNamespace

from celery import Celery

from demo.cluster import CELERY
from discovery import status

PACS = SimpleNamespace(host="127.0.0.1", port=1, aet="NONE")  # no query is ever sent


def test_aggregator_task_events_follow_enable_events(make_cluster, redis_server) -> None:
    cluster = make_cluster(PACS)
    # The documented command line: heartbeat, gossip and mingle on, as operators run it.
    cluster._start("aggregator", CELERY + ["-A", "worker", "worker", "-Q", "results", "-c", "1",
                                           "-n", "aggregator@%h"])
    cluster.wait_ready(120)
    monitor = Celery(broker=redis_server.url)
    client = redis_server.client()
    seen: list[dict] = []
    with monitor.connection_for_read() as conn:
        receiver = monitor.events.Receiver(conn, handlers={"*": seen.append})
        thread = threading.Thread(target=receiver.capture,
                                  kwargs={"limit": None, "timeout": None, "wakeup": False},
                                  daemon=True)
        thread.start()
        try:
            time.sleep(1)  # the receiver subscribes (Redis PUBLISH reaches subscribers only)

            def control_done() -> None:
                nonce = uuid.uuid4().hex
                monitor.send_task("discovery.control", ("status", "no-such-run", nonce),
                                  queue="results")
                deadline = time.monotonic() + 60
                while status.read(client, "no-such-run").get("ack") != nonce:
                    assert time.monotonic() < deadline, cluster.logs()[-3000:]
                    time.sleep(0.1)
                time.sleep(1)  # events are flushed by the worker's event loop, not the task

            def task_events() -> list[str]:
                return [e["type"] for e in seen if e["type"].startswith("task-")
                        and e.get("hostname", "").startswith("aggregator@")]

            control_done()
            assert any(e["type"] == "worker-heartbeat" for e in seen)  # events do flow
            assert task_events() == []
            monitor.control.enable_events()  # what Flower sends at start and every few seconds
            control_done()
            assert "task-succeeded" in task_events()
        finally:
            receiver.should_stop = True
            thread.join(10)
