"""Issue 5: the services of docker-compose.yml run for real, outside Docker.

Each service's command is read from the compose file and run exactly as written: the venv's
``bin`` comes first on PATH (so ``celery`` and ``python`` are the project's), and compose's own
``${VAR}`` interpolation is applied with the variables an operator would put in ``.env``. What
names the compose network and volumes (redis, orthanc, /data/state, /output) is translated to
local equivalents through the environment only, never by editing arguments. Real parts
throughout: a private redis-server, a local Orthanc, real ``celery worker`` and Flower processes.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping
from datetime import date
from pathlib import Path

import pytest
import yaml

from demo.cluster import Process
from demo.servers import OrthancServer, free_port, wait_for_port
from demo.studies import generate_studies
from discovery.settings import ENV_PREFIX, Settings
from discovery.windows import parse_bound, plan, sweeps
from tests.expect import expected_rows, read_csv

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
VENV_BIN = Path(sys.executable).parent
HOST = socket.gethostname()

# The demo seeding job's size, passed through compose variables like an operator would.
DEMO = {"DEMO_START": "2024-01-01", "DEMO_DAYS": "2", "DEMO_PER_DAY": "8"}
STUDIES = generate_studies(date(2024, 1, 1), days=2, per_day=8, seed=0)  # demo.seed's default
RUN_ARGS = ["--start", "2024-01-01", "--end", "2024-01-02"]
_PLAN = plan(parse_bound("2024-01-01", is_end=False), parse_bound("2024-01-02", is_end=True), 60)
WINDOWS = {w.key for w in _PLAN + sweeps(_PLAN)}  # 48 hourly windows and 2 day sweeps


# --- compose semantics -------------------------------------------------------------------

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_VAR = re.compile(rf"\$(?:\$|\{{({_NAME})(?:(:?[-?])([^}}]*))?\}}|({_NAME}))")


def interpolate(value: object, env: Mapping[str, str]) -> object:
    """Compose's variable substitution: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``,
    ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3) or ""
        have = name in env and (env[name] != "" or not (op or "").startswith(":"))
        if have:
            return env[name]
        if op in (":?", "?"):
            raise ValueError(f"compose refuses: {name}: {arg}")
        return arg if op in (":-", "-") else ""

    return _VAR.sub(sub, value)


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def service(name: str, variables: Mapping[str, str]) -> dict:
    """The service as compose resolves it with ``variables`` (the shell plus ``.env``)."""
    svc = interpolate(load_compose()["services"][name], variables)
    env: dict[str, str] = {}
    for key, val in (svc.get("environment") or {}).items():
        if val is None:  # `KEY:` alone: passed through from the shell/.env when set there
            if key in variables:
                env[key] = variables[key]
        else:
            env[key] = str(val)
    svc["environment"] = env
    return svc


def argv(svc: dict, *args: str) -> list[str]:
    """entrypoint + command, as ``docker compose run SERVICE ARGS`` would run them."""
    entry = list(svc.get("entrypoint") or [])
    command = list(args) if args else list(svc.get("command") or [])
    return entry + command


def process_env(svc: dict, **local: str) -> dict[str, str]:
    """A clean environment: PATH with the venv first, the image's PYTHONPATH (the source
    tree), the service's environment, then the local translations."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith((ENV_PREFIX, "FLOWER_"))}
    base["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    base["PYTHONPATH"] = str(ROOT)
    base["HOSTNAME"] = HOST  # what %h and $HOSTNAME are in a container
    if os.geteuid() == 0:  # the image runs as uid 10001; here Celery would warn about root
        base["PYTHONWARNINGS"] = "ignore:You're running the worker with superuser privileges"
    return {**base, **svc["environment"], **local}


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory):
    """An empty local Orthanc filled by the demo profile's seeding job, run as written."""
    with OrthancServer(tmp_path_factory.mktemp("orthanc")) as orthanc:
        svc = service("demo-seed", {**DEMO, "DEMO_ORTHANC_URL": orthanc.url})
        done = subprocess.run(argv(svc), env=process_env(svc), cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        yield orthanc, done


@pytest.fixture
def stack(seeded, broker_url: str, tmp_path: Path):
    """Start services from the compose file against the seeded Orthanc and the test Redis."""
    orthanc, _ = seeded
    variables = {
        "REDIS_URL": broker_url,
        "DISCOVERY_PACS_HOST": orthanc.host,
        "DISCOVERY_PACS_PORT": str(orthanc.port),
        "DISCOVERY_CALLED_AET": orthanc.aet,
        "DISCOVERY_WATCHDOG_INTERVAL": "2",
        "DISCOVERY_RETRY_BACKOFF": "0.5",
        "DISCOVERY_RETRY_BACKOFF_MAX": "2",
        "WORKER_CONCURRENCY": "2",
    }
    volumes = {  # the compose volumes, as local directories
        "DISCOVERY_STATE_DIR": str(tmp_path / "state"),
        "DISCOVERY_OUTPUT": str(tmp_path / "output" / "dicom_query_results.csv"),
    }
    (tmp_path / "output").mkdir()

    class Stack:
        procs: list[Process] = []
        output = tmp_path / "output" / "dicom_query_results.csv"

        def start(self, name: str, extra: Mapping[str, str] = {}, **local: str) -> Process:
            svc = service(name, {**variables, **extra})
            proc = Process(name, argv(svc), process_env(svc, **volumes, **local),
                           tmp_path / f"{name}-{len(self.procs)}.log").start()
            self.procs.append(proc)
            return proc

        def run(self, name: str, *args: str, extra: Mapping[str, str] = {},
                timeout: float = 180, **local: str) -> subprocess.CompletedProcess[str]:
            svc = service(name, {**variables, **extra})
            return subprocess.run(argv(svc, *args), env=process_env(svc, **volumes, **local),
                                  cwd=ROOT, capture_output=True, text=True, timeout=timeout)

        def popen(self, name: str, *args: str, extra: Mapping[str, str] = {},
                  **local: str) -> subprocess.Popen[str]:
            svc = service(name, {**variables, **extra})
            return subprocess.Popen(argv(svc, *args), env=process_env(svc, **volumes, **local),
                                    cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)

        def healthcheck(self, name: str, **local: str) -> subprocess.CompletedProcess[str]:
            svc = service(name, variables)
            test = svc["healthcheck"]["test"]
            cmd = ["sh", "-c", test[1]] if test[0] == "CMD-SHELL" else test[1:]
            return subprocess.run(cmd, env=process_env(svc, **volumes, **local), cwd=ROOT,
                                  capture_output=True, text=True, timeout=60)

        def logs(self) -> str:
            return "\n".join(f"== {p.log_path.name}\n{p.log()}" for p in self.procs)

    s = Stack()
    s.procs = []
    yield s
    for proc in reversed(s.procs):
        proc.stop()


# --- the file itself ---------------------------------------------------------------------


def test_compose_file_as_an_operator_reads_it() -> None:
    compose = load_compose()
    services = compose["services"]
    assert set(services) == {"redis", "worker", "aggregator", "flower", "producer", "orthanc",
                             "demo-seed"}
    redis_cmd = services["redis"]["command"]
    assert " ".join(redis_cmd).count("--appendonly yes") == 1
    assert "--maxmemory-policy noeviction" in " ".join(redis_cmd)
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    for name in ("worker", "aggregator", "flower", "producer"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
    assert "-Q queries" in " ".join(services["worker"]["command"])
    agg = " ".join(services["aggregator"]["command"])
    assert "-Q results" in agg and "-c 1" in agg
    assert {v.split(":")[-1] for v in services["aggregator"]["volumes"]} == {"/data/state",
                                                                           "/output"}
    assert "./output" in " ".join(services["aggregator"]["volumes"])
    assert all(p.startswith("127.0.0.1:") for p in services["flower"]["ports"])
    assert all(p.startswith("127.0.0.1:") for p in services["orthanc"]["ports"])
    assert services["producer"]["profiles"] == ["producer"]
    assert services["orthanc"]["profiles"] == services["demo-seed"]["profiles"] == ["demo"]
    for name in ("redis", "orthanc"):
        image = services[name]["image"]
        assert re.search(r":\d+\.\d+\.\d+", image), f"{name}: pin the image tag ({image})"
    for name in ("redis", "worker", "aggregator", "flower", "orthanc"):
        assert "healthcheck" in services[name], name


def test_every_setting_is_passed_through() -> None:
    env = load_compose()["x-discovery-env"]
    fields = {ENV_PREFIX + n.upper() for n in Settings.model_fields}
    assert set(env) == fields
    for name in ("worker", "aggregator", "flower", "producer", "demo-seed"):
        resolved = service(name, {"DISCOVERY_LOG_FORMAT": "json"})["environment"]
        assert resolved["DISCOVERY_LOG_FORMAT"] == "json", name
        assert resolved["DISCOVERY_BROKER_URL"] == "redis://redis:6379/0", name
        assert "DISCOVERY_DIMSE_TIMEOUT" not in resolved  # unset stays unset: the default


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    env_file = ROOT / ".env.example"
    if not env_file.exists():
        env_file = tmp_path / "empty.env"
        env_file.write_text("")
    done = subprocess.run(["docker-compose", "-f", str(COMPOSE_FILE), "--env-file",
                           str(env_file), "config", "-q"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr


def test_dockerfile_lint_and_lock() -> None:
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    if hadolint is not None:
        lint = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True,
                              text=True, timeout=60)
        assert lint.returncode == 0, lint.stdout + lint.stderr
    # the lock pins exactly the runtime closure installed here
    check = subprocess.run([sys.executable, str(ROOT / "docker" / "lock.py"), "--check"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr


def test_redis_command_persists_and_never_evicts(tmp_path: Path) -> None:
    """The redis service's command, with a config file naming a free port and a local dir
    first (redis-server reads it, then the command's options override it)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not installed")
    command = load_compose()["services"]["redis"]["command"]
    port = free_port()
    conf = tmp_path / "redis.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n")
    proc = Process("redis", [exe, str(conf), *command[1:]], os.environ,
                   tmp_path / "redis.log").start()
    try:
        wait_for_port("127.0.0.1", port, 15, proc.proc)
        import redis

        client = redis.Redis(port=port)
        for _ in range(50):
            try:
                client.ping()
                break
            except redis.BusyLoadingError:
                time.sleep(0.1)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    finally:
        proc.stop()


# --- the services, run for real ----------------------------------------------------------


def test_seed_job_fills_orthanc(seeded) -> None:
    orthanc, done = seeded
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"stored {len(STUDIES)} studies" in done.stdout
    with urllib.request.urlopen(f"{orthanc.url}/studies?expand", timeout=10) as resp:
        stored = json.loads(resp.read())
    uids = {s["MainDicomTags"]["StudyInstanceUID"] for s in stored}
    assert uids == {s["study_uid"] for s in STUDIES}


def test_run_with_json_logs(stack) -> None:
    """worker + aggregator + `producer --start .. --end .. --wait`, DISCOVERY_LOG_FORMAT=json
    passed through from .env: the exact CSV, one JSON line per window, no patient data."""
    json_logs = {"DISCOVERY_LOG_FORMAT": "json"}
    stack.start("worker", json_logs)
    stack.start("aggregator", json_logs)
    done = stack.run("producer", *RUN_ARGS, "--wait", extra=json_logs)
    assert done.returncode == 0, done.stdout + done.stderr + stack.logs()
    assert read_csv(stack.output) == expected_rows(STUDIES)

    worker_log = stack.procs[0].log()
    lines = [json.loads(line) for line in worker_log.splitlines() if line.startswith("{")]
    per_window = [r for r in lines if "window" in r]
    assert Counter(r["window"] for r in per_window) == Counter(WINDOWS)
    for record in per_window:
        assert {"run_id", "window", "state", "rows", "seconds"} <= set(record), record
        assert record["state"] == "complete" and record["level"] == "INFO"
    assert sum(r["rows"] for r in per_window if not r["window"].endswith("/day")) == len(STUDIES)
    # Every log line is JSON, for log shippers (no banner, no text lines).
    for log in (p.log() for p in stack.procs):
        for line in log.splitlines():
            if line.strip():
                json.loads(line)
    everything = stack.logs() + done.stdout + done.stderr
    for study in STUDIES:
        for key in ("patient_id", "patient_name", "accession"):
            assert study[key] not in everything, key

    for name in ("worker", "aggregator"):
        health = stack.healthcheck(name)
        assert health.returncode == 0, health.stdout + health.stderr


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def test_threads_pool_with_shared_associations(stack) -> None:
    """WORKER_POOL=threads with DISCOVERY_WORKER_ASSOCIATIONS (README, "Fast runs") as the
    compose file runs the worker: one process, no pool children, the exact CSV."""
    fast = {"WORKER_POOL": "threads", "WORKER_CONCURRENCY": "4",
            "DISCOVERY_WORKER_ASSOCIATIONS": "2"}
    worker = stack.start("worker", fast)
    stack.start("aggregator")
    done = stack.run("producer", *RUN_ARGS, "--wait", extra=fast)
    assert done.returncode == 0, done.stdout + done.stderr + stack.logs()
    assert read_csv(stack.output) == expected_rows(STUDIES)
    assert _children(worker.pid) == [], "not the threads pool: the worker has pool processes"
    health = stack.healthcheck("worker")
    assert health.returncode == 0, health.stdout + health.stderr


def test_sigterm_worker_loses_nothing(stack) -> None:
    """A worker stopped with SIGTERM mid-run (what `docker compose stop` sends) finishes or
    returns its windows; another worker completes the run with the exact CSV."""
    slow = {"DISCOVERY_PACS_MAX_QUERIES_PER_SECOND": "4"}
    first = stack.start("worker", slow)
    stack.start("aggregator", slow)
    run = stack.popen("producer", *RUN_ARGS, "--wait", extra=slow)
    try:
        deadline = time.monotonic() + 60
        while first.log().count(" window ") < 5:
            assert time.monotonic() < deadline, stack.logs()
            time.sleep(0.2)
        os.kill(first.pid, signal.SIGTERM)  # the main process only, as tini forwards it
        assert first.proc is not None
        assert first.proc.wait(60) == 0, first.log()
        done_by_first = first.log().count(" window ")
        assert done_by_first < len(WINDOWS), "the run ended before the SIGTERM"
        second = stack.start("worker", slow)
        out, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, out + stack.logs()
    assert second.log().count(" window ") >= 1
    assert read_csv(stack.output) == expected_rows(STUDIES)


def _get(url: str, auth: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if auth is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_flower_lists_the_worker_with_credentials_only(stack) -> None:
    """Workers send no task events of their own (they cost three messages per task); Flower
    turns them on while it runs, so it lists the run's tasks, arguments as counts only."""
    stack.start("worker")
    stack.start("aggregator")
    port = free_port()
    creds = {"FLOWER_BASIC_AUTH": "ops:s3cret-pass"}
    flower = stack.start("flower", creds, FLOWER_ADDRESS="127.0.0.1", FLOWER_PORT=str(port))
    wait_for_port("127.0.0.1", port, 60, flower.proc)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        status, body = _get(f"{url}/api/workers?refresh=1", "ops:s3cret-pass")
        if status == 200 and f"queries@{HOST}" in json.loads(body):
            break
        assert time.monotonic() < deadline, (status, body, stack.logs())
        time.sleep(1)
    # Flower's enable_events broadcast (every 5 s) reached both workers: they say so.
    deadline = time.monotonic() + 60
    while not all("enabled by remote" in p.log() for p in stack.procs[:2]):
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.5)
    done = stack.run("producer", *RUN_ARGS, "--wait")
    assert done.returncode == 0, done.stdout + done.stderr + stack.logs()
    deadline = time.monotonic() + 30
    while True:
        status, body = _get(f"{url}/api/tasks", "ops:s3cret-pass")
        tasks = json.loads(body) if status == 200 else {}
        names = Counter(t.get("name") for t in tasks.values())
        if names["discovery.query_window"] >= len(WINDOWS):
            break
        assert time.monotonic() < deadline, (status, names, stack.logs())
        time.sleep(1)
    for study in STUDIES:
        for key in ("patient_id", "patient_name", "accession"):
            assert study[key] not in body.decode(), key
    assert _get(f"{url}/api/workers")[0] == 401
    assert _get(f"{url}/api/tasks")[0] == 401
    assert _get(f"{url}/api/workers", "ops:wrong")[0] == 401
    assert _get(f"{url}/", "ops:wrong")[0] == 401
    health = stack.healthcheck("flower", FLOWER_PORT=str(port))
    assert health.returncode == 0, health.stdout + health.stderr


@pytest.mark.parametrize("credentials", [None, "", "admin"])
def test_flower_refuses_to_start_without_credentials(stack, credentials: str | None) -> None:
    extra = {} if credentials is None else {"FLOWER_BASIC_AUTH": credentials}
    port = free_port()
    done = stack.run("flower", extra=extra, timeout=30, FLOWER_ADDRESS="127.0.0.1",
                     FLOWER_PORT=str(port))
    assert done.returncode == 78
    assert "set FLOWER_BASIC_AUTH=user:password" in done.stderr
