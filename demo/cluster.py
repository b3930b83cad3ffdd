"""Run the real system as subprocesses: a private Redis, query workers, the aggregator, Flower
and the producer, exactly with the commands an operator uses. For the demo and the tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Self

import redis

from demo.servers import ServerError, free_port, stop_group, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
CELERY = [sys.executable, "-m", "celery"]


class Process:
    """One subprocess in its own session, logging to a file; stop() kills its whole group."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log: Path,
                 cwd: Path = ROOT) -> None:
        self.name, self.argv, self.env, self.log_path, self.cwd = name, list(argv), env, log, cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._offset = 0

    def start(self) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._offset = self._log.tell()  # the log file may hold earlier runs' output
        self.proc = subprocess.Popen(self.argv, env=dict(self.env), cwd=self.cwd,
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_group(proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_since_start(self) -> str:
        """What this start wrote: an earlier run's "ready." in the same file is not this one's."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(self._offset)
            return f.read().decode(errors="replace")


class RedisServer:
    """A private ``redis-server`` on a free loopback port (no persistence unless asked)."""

    def __init__(self, workdir: Path, password: str | None = None, appendonly: bool = False,
                 port: int | None = None, policy: str = "noeviction") -> None:
        self.workdir, self.password, self.appendonly = Path(workdir), password, appendonly
        self.policy = policy
        self.port = port or free_port()
        self.proc: Process | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> Self:
        exe = shutil.which("redis-server")
        if exe is None:
            raise ServerError("redis-server is not installed (apt-get install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [exe, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.workdir),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                "--maxmemory-policy", self.policy, "--daemonize", "no"]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = Process("redis", argv, os.environ, self.workdir / "redis.log").start()
        wait_for_port("127.0.0.1", self.port, 15, self.proc.proc)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client().ping()
                return self
            except redis.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Cluster:
    """Query workers and the aggregator, started with the documented commands."""

    def __init__(self, workdir: Path, env: Mapping[str, str]) -> None:
        self.workdir = Path(workdir)
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        self.processes: list[Process] = []
        self._n = 0

    def _start(self, name: str, argv: list[str],
               extra_env: Mapping[str, str] | None = None) -> Process:
        self._n += 1
        env = {**self.env, **(extra_env or {})}
        proc = Process(name, argv, env, self.workdir / f"{name}-{self._n}.log").start()
        self.processes.append(proc)
        return proc

    def worker(self, concurrency: int = 2, pool: str | None = None,
               extra: Sequence[str] = (), extra_env: Mapping[str, str] | None = None) -> Process:
        """``celery -A worker worker -Q queries``; ``extra_env`` overrides settings for it."""
        argv = CELERY + ["-A", "worker", "worker", "-Q", "queries", "-c", str(concurrency),
                         "-n", f"queries{self._n + 1}@%h", "--without-heartbeat",
                         "--without-mingle", "--without-gossip"]
        if pool:
            argv += ["-P", pool]
        return self._start("worker", argv + list(extra), extra_env)

    def aggregator(self, pool: str | None = None) -> Process:
        """``celery -A worker worker -Q results -c 1 [-P pool]``"""
        argv = CELERY + ["-A", "worker", "worker", "-Q", "results", "-c", "1",
                         "-n", f"aggregator{self._n + 1}@%h", "--without-heartbeat",
                         "--without-mingle", "--without-gossip"]
        return self._start("aggregator", argv + (["-P", pool] if pool else []))

    def producer(self, *args: str, timeout: float = 300,
                 env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``python -m producer ARGS`` to completion."""
        return subprocess.run([sys.executable, "-m", "producer", *args],
                              env={**self.env, **(env or {})}, cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout)

    def producer_async(self, *args: str) -> Process:
        return self._start("producer", [sys.executable, "-m", "producer", *args])

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until every started worker logged ``ready.`` (Celery's own line)."""
        deadline = time.monotonic() + timeout
        for proc in self.processes:
            if proc.name not in ("worker", "aggregator"):
                continue
            while " ready." not in proc.log_since_start():
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited:\n{proc.log()[-3000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{proc.name} not ready after {timeout:g} s")
                time.sleep(0.2)

    def logs(self) -> str:
        return "\n".join(f"== {p.log_path.name}\n{p.log()}" for p in self.processes)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
