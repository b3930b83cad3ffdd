"""Issue 7: DICOM TLS against a real Orthanc, broker credentials (password, ``rediss://``), and
patient data that stays in the CSV (logs, task arguments, file modes, ``--excel-safe``).

Certificates are made here with ``openssl``: a CA, the PACS's server certificate (for
IP:127.0.0.1 and DNS:localhost), our client certificate, and a second CA nobody trusts.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest
import redis

from demo.cluster import ROOT, Process, RedisServer
from demo.servers import OrthancServer, free_port, wait_for_port
from demo.studies import generate_studies
from tests.expect import expected_rows, read_csv

STUDIES = generate_studies(date(2024, 1, 1), days=2, per_day=12, seed=11)
RANGE = ("--start", "2024-01-01", "--end", "2024-01-02")
OUT = Path("out") / "dicom_query_results.csv"
PASSWORD = "Pw-7s3cr3t-9qz"
# Short timeouts: a failure must be one line within seconds, never a hang.
FAST = {"DISCOVERY_ACSE_TIMEOUT": "5", "DISCOVERY_DIMSE_TIMEOUT": "10",
        "DISCOVERY_NETWORK_TIMEOUT": "10", "DISCOVERY_CONNECT_TIMEOUT": "5"}


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(folder: Path) -> Path:
    """ca, otherca (self-signed CAs); server (IP:127.0.0.1, DNS:localhost) and client, by ca."""
    folder.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "otherca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-subj", f"/CN=test {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    for leaf, san in (("server", "IP:127.0.0.1,DNS:localhost"), ("client", "DNS:discovery")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={leaf}",
                 "-keyout", f"{leaf}.key", "-out", f"{leaf}.csr", cwd=folder)
        (folder / f"{leaf}.ext").write_text(
            f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
            "extendedKeyUsage=serverAuth,clientAuth\n")
        _openssl("x509", "-req", "-in", f"{leaf}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-out", f"{leaf}.crt",
                 "-extfile", f"{leaf}.ext", cwd=folder)
    return folder


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_orthanc(tmp_path_factory: pytest.TempPathFactory, pki: Path):
    """Orthanc speaking DICOM TLS only, requiring a client certificate signed by our CA."""
    cfg = {"DicomTlsEnabled": True, "DicomTlsCertificate": str(pki / "server.crt"),
           "DicomTlsPrivateKey": str(pki / "server.key"),
           "DicomTlsTrustedCertificates": str(pki / "ca.crt"),
           "DicomTlsRemoteCertificateRequired": True}
    with OrthancServer(tmp_path_factory.mktemp("orthanc-tls"), extra_config=cfg) as server:
        server.store(STUDIES)
        yield server


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    with OrthancServer(tmp_path_factory.mktemp("orthanc")) as server:
        server.store(STUDIES)
        yield server


def tls_env(pki: Path, **extra: str) -> dict[str, str]:
    return {**FAST, "DISCOVERY_TLS_ENABLED": "true", "DISCOVERY_TLS_CA_FILE": str(pki / "ca.crt"),
            "DISCOVERY_TLS_CERT_FILE": str(pki / "client.crt"),
            "DISCOVERY_TLS_KEY_FILE": str(pki / "client.key"), **extra}


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


# DICOM TLS -----------------------------------------------------------------------------------
def test_discovery_over_tls(tls_orthanc, pki: Path, make_cluster, tmp_path: Path) -> None:
    cluster = make_cluster(tls_orthanc, **tls_env(pki))
    cluster.worker(concurrency=2)
    cluster.aggregator()
    done = cluster.producer(*RANGE, "--all-studies", "--wait", timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert read_csv(tmp_path / OUT) == expected_rows(STUDIES, all_studies=True)


@pytest.mark.parametrize(("case", "expected"), [
    ("plain client", "the port speaks DICOM TLS: set DISCOVERY_TLS_ENABLED=true"),
    ("untrusted CA", "the PACS's TLS certificate is not trusted"),
    ("host name mismatch", "the PACS's TLS certificate does not name 127.0.0.2"),
    ("no client certificate", "the PACS ended the TLS handshake"),
    ("client certificate by another CA", "the PACS ended the TLS handshake"),
])
def test_tls_mistakes_are_one_line_exit_5(tls_orthanc, pki: Path, make_cluster, tmp_path: Path,
                                          case: str, expected: str) -> None:
    """Exit 5 (a setting must change), not 6 (unreachable): the PACS answered, and retrying
    with the same certificates, host name or TLS switch cannot succeed."""
    env = {
        "plain client": FAST,
        "untrusted CA": tls_env(pki, DISCOVERY_TLS_CA_FILE=str(pki / "otherca.crt")),
        # Orthanc listens on every loopback address; the certificate names only 127.0.0.1.
        "host name mismatch": tls_env(pki, DISCOVERY_PACS_HOST="127.0.0.2"),
        "no client certificate": tls_env(pki, DISCOVERY_TLS_CERT_FILE="",
                                         DISCOVERY_TLS_KEY_FILE=""),
        "client certificate by another CA": tls_env(
            pki, DISCOVERY_TLS_CERT_FILE=str(pki / "otherca.crt"),
            DISCOVERY_TLS_KEY_FILE=str(pki / "otherca.key")),
    }[case]
    cluster = make_cluster(tls_orthanc, **env)
    started = time.monotonic()
    done = cluster.producer(*RANGE, timeout=60)
    assert done.returncode == 5, done.stdout + done.stderr
    assert expected in one_line(done.stderr)
    assert done.stdout == ""
    assert time.monotonic() - started < 30
    assert not (tmp_path / OUT).exists()


def test_hostname_check_can_be_turned_off(tls_orthanc, pki: Path, make_cluster) -> None:
    cluster = make_cluster(tls_orthanc, **tls_env(pki, DISCOVERY_PACS_HOST="127.0.0.2",
                                                  DISCOVERY_TLS_CHECK_HOSTNAME="false"))
    done = cluster.producer(*RANGE, timeout=60)  # preflight over TLS, then enqueue
    assert done.returncode == 0, done.stdout + done.stderr
    assert "windows and 2 day sweeps enqueued" in done.stdout


def test_tls_client_against_plain_port(orthanc, pki: Path, make_cluster, tmp_path: Path) -> None:
    cluster = make_cluster(orthanc, **tls_env(pki))
    done = cluster.producer(*RANGE, timeout=60)
    assert done.returncode == 5, done.stdout + done.stderr
    assert "the port does not speak TLS" in one_line(done.stderr)
    assert "DISCOVERY_TLS_ENABLED=false" in done.stderr
    assert not (tmp_path / OUT).exists()


# Broker credentials and patient data -------------------------------------------------------
@pytest.fixture(scope="module")
def redis_pw(tmp_path_factory: pytest.TempPathFactory):
    with RedisServer(tmp_path_factory.mktemp("redis-pw"), password=PASSWORD) as server:
        yield server


def _messages(client: redis.Redis, queue: str) -> list[dict]:
    return [json.loads(raw) for raw in client.lrange(queue, 0, -1)]


def _wait(predicate, timeout: float = 120, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _patient_values() -> list[str]:
    values = set()
    for s in STUDIES:
        values |= {s["patient_id"], s["patient_name"], s["accession"]}
        values |= {part for part in s["patient_name"].split("^") if len(part) >= 5}
    return sorted(values)


def _found(values: list[str], text: str) -> list[str]:
    """Values that occur in ``text`` as a whole token (``-12345`` inside a run id like
    ``20240101-123456-...`` is not the accession number)."""
    return [v for v in values
            if re.search(rf"(?<![\w-]){re.escape(v)}(?![\w])", text)]


def test_password_broker_and_no_patient_data_outside_the_csv(
        orthanc, redis_pw: RedisServer, make_cluster, tmp_path: Path) -> None:
    """A whole discovery at INFO with a password-protected broker: the exact CSV; task
    arguments (what monitors show) without patient data; logs without patient data or the
    password; files readable by owner and group only; --excel-safe's second file."""
    cluster = make_cluster(orthanc, DISCOVERY_BROKER_URL=redis_pw.url,
                           DISCOVERY_LOG_LEVEL="INFO")
    client = redis_pw.client()
    client.flushall()
    # 1. Enqueue with nobody consuming: the query tasks carry run id and window key only.
    sent = cluster.producer(*RANGE, "--all-studies", "--excel-safe", timeout=60)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    run_id = re.search(r"^run (\S+):", sent.stdout, re.M).group(1)  # type: ignore[union-attr]
    queries = _messages(client, "queries")
    assert len(queries) == 48 + 2
    for msg in queries:
        args, kwargs, _ = json.loads(base64.b64decode(msg["body"]))
        assert msg["headers"]["task"] == "discovery.query_window"
        assert len(args) == 2 and args[0] == run_id and kwargs == {}
        assert msg["headers"]["argsrepr"] == repr(tuple(args))
    # 2. Query workers only: the results wait in Redis; their argsrepr is a count.
    cluster.worker(concurrency=2)
    _wait(lambda: client.llen("results") == 1 + 50, what="50 results")
    counts = 0
    for msg in _messages(client, "results"):
        headers = msg["headers"]
        if headers["task"] != "discovery.record_result":
            assert headers["task"] == "discovery.register_run"
            continue
        m = re.fullmatch(rf"\('{run_id}', '[0-9/a-z-]+', <complete: (\d+) studies>, "
                         r"final=True\)", headers["argsrepr"])
        assert m, headers["argsrepr"]
        assert headers["kwargsrepr"] == "{}"
        counts += int(m.group(1))
    assert counts == 2 * len(STUDIES)  # every study once by its window, once by its day sweep
    # 3. The aggregator writes the CSV.
    cluster.aggregator()
    out = tmp_path / OUT
    _wait(out.exists, what="the CSV")
    waited = cluster.producer("--status", run_id, timeout=60)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert read_csv(out) == expected_rows(STUDIES, all_studies=True)

    # Byte-faithful CSV; the spreadsheet twin has a BOM and quoted formula-like cells.
    raw = out.read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf")
    assert b"\r\n-12345," in raw
    excel = out.with_name("dicom_query_results.excel.csv")
    text = excel.read_bytes()
    assert text.startswith(b"\xef\xbb\xbf")
    assert b"\r\n'-12345," in text and b"\r\n-12345," not in text

    # Owner and group only: the CSVs, the coverage report and the ledger (with WAL files).
    state = tmp_path / "state"
    private = [out, excel, out.with_name("dicom_query_results.coverage.json"),
               *state.glob("ledger.sqlite3*")]
    assert len(private) >= 4
    for path in private:
        assert path.stat().st_mode & 0o037 == 0, f"{path}: {oct(path.stat().st_mode)}"

    # No patient data and no password in any log, nor in what the producer printed.
    help_text = cluster.producer("--help").stdout
    logs = "\n".join([cluster.logs(), sent.stdout, sent.stderr, waited.stdout,
                      waited.stderr, help_text])
    assert "Task discovery.record_result" in logs  # the logs are really there, at INFO
    assert _found(_patient_values(), logs) == []
    report = out.with_name("dicom_query_results.coverage.json").read_text()
    for text in (logs, report, repr(client.hgetall(f"discovery:run:{run_id}"))):
        assert PASSWORD not in text
    assert PASSWORD not in "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*.log"))


def test_result_retry_keeps_count_only_argsrepr(orthanc, redis_pw: RedisServer, make_cluster,
                                                tmp_path: Path) -> None:
    """A result for a run the aggregator does not know (yet) is retried; the retried message
    must still show a count, not Celery's default repr of the studies."""
    cluster = make_cluster(orthanc, DISCOVERY_BROKER_URL=redis_pw.url)
    client = redis_pw.client()
    client.flushall()
    cluster.aggregator()
    marker = "P-RETRY-LEAK-4711"
    code = (
        "from worker.tasks import send_result\n"
        "study = {'uid': '1.2.3', 'accession': 'ACC-RETRY-4711', 'date': '20240101',"
        " 'time': '100000', 'patient_id': 'P-RETRY-LEAK-4711', 'description': '',"
        " 'desc': 'blank'}\n"
        "send_result('no-such-run', '20240101/100000-110000', {'state': 'complete',"
        " 'status': 0, 'rows': 1, 'studies': [study], 'anomalies': {}, 'error': None,"
        " 'seconds': 0.1}, True)\n"
    )
    subprocess.run([sys.executable, "-c", code], env=cluster.env, cwd=ROOT, check=True,
                   timeout=60)

    def retried() -> list[dict]:
        held = [json.loads(v)[0] for v in client.hvals("unacked")]
        return [m for m in held if m["headers"].get("retries", 0) >= 1]

    _wait(lambda: bool(retried()), timeout=60, what="the retried result")
    headers = retried()[0]["headers"]
    assert headers["argsrepr"] == ("('no-such-run', '20240101/100000-110000', "
                                   "<complete: 1 studies>, final=True)")
    assert marker not in json.dumps(headers)
    assert marker not in cluster.logs()


def test_wrong_broker_password(orthanc, redis_pw: RedisServer, make_cluster,
                               tmp_path: Path) -> None:
    wrong = "Wr0ng-pw-5531"
    url = f"redis://:{wrong}@127.0.0.1:{redis_pw.port}/0"
    cluster = make_cluster(orthanc, DISCOVERY_BROKER_URL=url)
    done = cluster.producer(*RANGE, timeout=60)
    assert done.returncode == 5, done.stdout + done.stderr
    line = one_line(done.stderr)
    assert f"redis://:***@127.0.0.1:{redis_pw.port}/0 refused our password" in line
    assert wrong not in done.stdout + done.stderr
    nopw = make_cluster(orthanc, DISCOVERY_BROKER_URL=f"redis://127.0.0.1:{redis_pw.port}/0")
    done = nopw.producer(*RANGE, timeout=60)
    assert done.returncode == 5, done.stdout + done.stderr
    assert "requires a password" in one_line(done.stderr)
    # A worker with the wrong password retries, saying so, without printing the password.
    cluster.worker(concurrency=1)
    _wait(lambda: "invalid username-password pair" in cluster.logs(), timeout=60,
          what="the worker's connection error")
    assert wrong not in cluster.logs()
    assert not (tmp_path / OUT).exists()


# rediss:// -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def redis_tls(tmp_path_factory: pytest.TempPathFactory, pki: Path):
    """redis-server with TLS only (Debian's build has it), a password, no client certificate."""
    work = tmp_path_factory.mktemp("redis-tls")
    port = free_port()
    argv = [shutil.which("redis-server") or "redis-server", "--port", "0", "--tls-port",
            str(port), "--bind", "127.0.0.1", "--dir", str(work), "--save", "",
            "--appendonly", "no", "--maxmemory-policy", "noeviction", "--requirepass", PASSWORD,
            "--tls-cert-file", str(pki / "server.crt"), "--tls-key-file", str(pki / "server.key"),
            "--tls-ca-cert-file", str(pki / "ca.crt"), "--tls-auth-clients", "no"]
    proc = Process("redis-tls", argv, os.environ, work / "redis.log").start()
    try:
        wait_for_port("127.0.0.1", port, 15, proc.proc)
    except Exception:
        proc.stop()
        pytest.skip(f"redis-server without TLS support: {proc.log()[-300:]}")
    yield f"rediss://:{PASSWORD}@127.0.0.1:{port}/0"
    proc.stop()


def test_rediss_broker(orthanc, redis_tls: str, pki: Path, make_cluster, tmp_path: Path) -> None:
    cluster = make_cluster(orthanc, DISCOVERY_BROKER_URL=redis_tls,
                           DISCOVERY_BROKER_CA_FILE=str(pki / "ca.crt"))
    cluster.worker(concurrency=2)
    cluster.aggregator()
    done = cluster.producer(*RANGE, "--wait", timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert read_csv(tmp_path / OUT) == expected_rows(STUDIES)
    assert PASSWORD not in cluster.logs() + done.stdout + done.stderr
    assert "rediss://:***@127.0.0.1" in done.stdout


def test_rediss_broker_with_untrusted_certificate(orthanc, redis_tls: str, pki: Path,
                                                  make_cluster, tmp_path: Path) -> None:
    """kombu alone would accept any certificate; we always verify it."""
    for ca in ("otherca.crt", ""):
        cluster = make_cluster(orthanc, DISCOVERY_BROKER_URL=redis_tls,
                               DISCOVERY_BROKER_CA_FILE=str(pki / ca) if ca else "")
        done = cluster.producer(*RANGE, timeout=60)
        assert done.returncode == 5, done.stdout + done.stderr
        assert "TLS certificate we do not trust: set DISCOVERY_BROKER_CA_FILE" in one_line(
            done.stderr)
        assert PASSWORD not in done.stderr
    # The workers (kombu) verify it too, and say so.
    cluster.worker(concurrency=1)
    _wait(lambda: "CERTIFICATE_VERIFY_FAILED" in cluster.logs(), timeout=60,
          what="the worker's certificate error")
    assert "Connected to rediss://" not in cluster.logs()
    assert PASSWORD not in cluster.logs()
    assert not (tmp_path / OUT).exists()
