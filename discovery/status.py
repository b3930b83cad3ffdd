"""What a run looks like from outside the aggregator: a Redis hash the aggregator mirrors from
its ledger, read by ``python -m producer --wait/--status``, and the stop flag a worker raises
on a permanent error. The ledger stays the truth; after a Redis flush the aggregator's
watchdog writes the mirror again.
"""

from __future__ import annotations

import json

import redis

from discovery.settings import Settings

TTL = 30 * 86400
#: How long the answer about a run id the ledger does not know stays (a typo must not leave a
#: key for a month); the asking producer reads it within seconds.
UNKNOWN_TTL = 300


def target(settings: Settings) -> str:
    """What a run queries, as every worker must be configured: ``CALLING->CALLED@host:port``.
    The producer publishes it with the run; a worker configured otherwise stops the run rather
    than query another PACS (or as another AE title) than the one the report names."""
    return f"{settings.calling_aet}->{settings.pacs_label}"


def run_key(run_id: str) -> str:
    return f"discovery:run:{run_id}"


def published_target(client: redis.Redis, run_id: str) -> tuple[str, str] | None:
    """The (calling AE title, PACS label) the run's mirror says it queries, if published."""
    value = client.hget(run_key(run_id), "target")
    if not value:
        return None
    text = value.decode() if isinstance(value, bytes) else str(value)
    calling, sep, pacs = text.partition("->")
    return (calling, pacs) if sep else None


def stop_key(run_id: str) -> str:
    return f"discovery:stop:{run_id}"


def publish(client: redis.Redis, run_id: str, fields: dict, ttl: int = TTL) -> None:
    """Mirror progress fields (flat; nested values as JSON)."""
    flat = {k: json.dumps(v) if isinstance(v, dict | list | bool) or v is None else v
            for k, v in fields.items()}
    pipe = client.pipeline()
    pipe.hset(run_key(run_id), mapping=flat)
    pipe.expire(run_key(run_id), ttl)
    pipe.execute()


def read(client: redis.Redis, run_id: str) -> dict:
    raw = client.hgetall(run_key(run_id))
    out: dict = {}
    for k, v in raw.items():
        key = k.decode() if isinstance(k, bytes) else k
        text = v.decode() if isinstance(v, bytes) else v
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def stop_run(client: redis.Redis, run_id: str, message: str) -> None:
    """A permanent error: every remaining query task of the run stands down, and the mirror
    says so at once (the producer's --wait exits with the message)."""
    client.set(stop_key(run_id), message, ex=TTL)
    publish(client, run_id, {"state": "stopped", "message": message})


def stopped(client: redis.Redis, run_id: str) -> str | None:
    value = client.get(stop_key(run_id))
    return value.decode() if isinstance(value, bytes) else value


def gate(client: redis.Redis, run_id: str) -> tuple[str | None, str | None, str | None]:
    """What a query task checks first, in one round trip: the stop message (or None), the
    run's state and its target (None when not published)."""
    pipe = client.pipeline(transaction=False)
    pipe.get(stop_key(run_id))
    pipe.hmget(run_key(run_id), "state", "target")
    stop, (state, wanted) = pipe.execute()
    return tuple(v.decode() if isinstance(v, bytes) else v  # type: ignore[return-value]
                 for v in (stop, state, wanted))


def clear_stop(client: redis.Redis, run_id: str) -> None:
    client.delete(stop_key(run_id))
