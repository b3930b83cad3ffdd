"""``make demo`` / ``python -m demo.run``: the main job, end to end, on this machine.

Reuses the Redis on 127.0.0.1:6379 (database 15, emptied first) or starts a private one,
starts a local Orthanc on free ports seeded with generated studies, a query worker and the
aggregator (the documented commands), runs ``python -m producer ... --wait``, and stops what
it started.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import redis

from demo.cluster import ROOT, Cluster, RedisServer
from demo.servers import OrthancServer
from demo.studies import generate_studies


def _local_redis() -> str | None:
    url = "redis://127.0.0.1:6379/15"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError:
        return None
    return url


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.run", description=__doc__)
    p.add_argument("--start", type=date.fromisoformat, default=date(2024, 1, 1))
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--per-day", type=int, default=40)
    p.add_argument("--workdir", type=Path, default=ROOT / ".run" / "demo")
    p.add_argument("--output", type=Path, default=ROOT / "output" / "demo" /
                   "dicom_query_results.csv")
    args = p.parse_args(argv)

    args.workdir.mkdir(parents=True, exist_ok=True)
    private = None
    broker = _local_redis()
    if broker is None:
        private = RedisServer(args.workdir / "redis").start()
        broker = private.url
        print(f"demo: started a private Redis on port {private.port}")
    else:
        print("demo: using the Redis on 127.0.0.1:6379 (database 15)")
    redis.Redis.from_url(broker).flushdb()
    orthanc = OrthancServer(args.workdir / "orthanc", encoding="Utf8")
    try:
        orthanc.start()
        studies = generate_studies(args.start, args.days, args.per_day)
        orthanc.store(studies)
        print(f"demo: Orthanc on DICOM port {orthanc.port} (AE {orthanc.aet}), "
              f"{len(studies)} studies over {args.days} days")
        env = {
            "DISCOVERY_PACS_HOST": orthanc.host, "DISCOVERY_PACS_PORT": str(orthanc.port),
            "DISCOVERY_CALLED_AET": orthanc.aet, "DISCOVERY_BROKER_URL": broker,
            "DISCOVERY_STATE_DIR": str(args.workdir / "state"),
        }
        with Cluster(args.workdir / "logs", env) as cluster:
            cluster.worker(concurrency=2)
            cluster.aggregator()
            cluster.wait_ready()
            end = args.start + timedelta(days=args.days - 1)
            cmd = [sys.executable, "-m", "producer", "--start", args.start.isoformat(),
                   "--end", end.isoformat(), "--output", str(args.output), "--wait"]
            print("demo: " + " ".join(["python", *cmd[1:]]), flush=True)
            code = subprocess.call(cmd, env=cluster.env, cwd=ROOT, timeout=600)
            print(f"demo: worker and aggregator logs in {args.workdir / 'logs'}")
        return code
    finally:
        orthanc.stop()
        if private is not None:
            private.stop()


if __name__ == "__main__":
    sys.exit(main())
