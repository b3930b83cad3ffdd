"""Issue 7: bad input. Each mistake gives one line that says what to fix, a non-zero exit code,
and nothing at the output path. The table in docs/bad-input.md lists the same cases."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from demo.servers import free_port
from discovery import status

RANGE = ("--start", "2024-01-01", "--end", "2024-01-02")
OUT = Path("out") / "dicom_query_results.csv"


@pytest.fixture
def nowhere() -> SimpleNamespace:
    """A PACS address where nothing listens."""
    return SimpleNamespace(host="127.0.0.1", port=free_port(), aet="NOWHERE")


def check(done, code: int, phrase: str, output: Path) -> str:  # type: ignore[no-untyped-def]
    assert done.returncode == code, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert phrase in lines[0], lines[0]
    assert "Traceback" not in done.stdout + done.stderr
    assert not output.exists()
    if output.parent.is_dir():
        assert not list(output.parent.glob("*.csv"))
    return lines[0]


# (case, producer arguments, environment, exit code, phrase the one line must contain)
CASES = [
    ("end before start", ["--start", "2024-01-03", "--end", "2024-01-01"], {}, 2,
     "--end (2024-01-01) is not after --start (2024-01-03)"),
    ("empty range", ["--start", "2024-01-01T10:00", "--end", "2024-01-01T10:00"], {}, 2,
     "is not after --start"),
    ("malformed date", ["--start", "2024-13-01", "--end", "2024-01-02"], {}, 2,
     "'2024-13-01' is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM"),
    ("malformed instant", ["--start", "2024-01-01T25:00", "--end", "2024-01-02"], {}, 2,
     "use YYYY-MM-DD or YYYY-MM-DDTHH:MM"),
    ("missing --end", ["--start", "2024-01-01"], {}, 2, "--start and --end are required"),
    ("window length 0", RANGE, {"DISCOVERY_WINDOW_MINUTES": "0"}, 2,
     "DISCOVERY_WINDOW_MINUTES: Input should be greater than or equal to 1"),
    ("window length negative", RANGE, {"DISCOVERY_WINDOW_MINUTES": "-30"}, 2,
     "DISCOVERY_WINDOW_MINUTES: Input should be greater than or equal to 1"),
    ("window length above a day", RANGE, {"DISCOVERY_WINDOW_MINUTES": "1441"}, 2,
     "DISCOVERY_WINDOW_MINUTES: Input should be less than or equal to 1440"),
    ("window length not a number", RANGE, {"DISCOVERY_WINDOW_MINUTES": "1h"}, 2,
     "DISCOVERY_WINDOW_MINUTES: Input should be a valid integer"),
    ("port 0", RANGE, {"DISCOVERY_PACS_PORT": "0"}, 2,
     "DISCOVERY_PACS_PORT: Input should be greater than or equal to 1"),
    ("port above 65535", RANGE, {"DISCOVERY_PACS_PORT": "70000"}, 2,
     "DISCOVERY_PACS_PORT: Input should be less than or equal to 65535"),
    ("AE title of 17 characters", RANGE, {"DISCOVERY_CALLING_AET": "ABCDEFGHIJKLMNOPQ"}, 2,
     "DISCOVERY_CALLING_AET: is 17 characters long; an AE title has at most 16"),
    ("AE title with a backslash", RANGE, {"DISCOVERY_CALLED_AET": "PACS\\1"}, 2,
     "DISCOVERY_CALLED_AET: must not contain a backslash"),
    ("broker URL not Redis", RANGE, {"DISCOVERY_BROKER_URL": "amqp://guest:pw@host//"}, 2,
     "DISCOVERY_BROKER_URL: must be a redis:// or rediss:// URL, not amqp"),
    ("TLS CA file missing", RANGE, {"DISCOVERY_TLS_ENABLED": "true",
                                    "DISCOVERY_TLS_CA_FILE": "/nonexistent/ca.pem"}, 2,
     "DISCOVERY_TLS_CA_FILE: no such file: /nonexistent/ca.pem"),
    ("setting name with a typo", RANGE, {"DISCOVERY_WINDOW_MINUTE": "30"}, 2,
     "DISCOVERY_WINDOW_MINUTE is not a setting: did you mean DISCOVERY_WINDOW_MINUTES?"),
    ("unknown option", [*RANGE, "--all-studys"], {}, 2,
     "unrecognized arguments: --all-studys (see --help)"),
    ("output named like a coverage report", [*RANGE, "--output", "out/x.coverage.json"], {}, 2,
     "is named like the coverage report of another run's output: choose a name that does not "
     "end in .coverage.json, .incomplete.<ext> or .excel.csv"),
    ("--resume with --start", ["--resume", "X", "--start", "2024-01-01"], {}, 2,
     "do not combine them with --resume"),
    ("--resume with --output", ["--resume", "X", "--wait", "--output", "/tmp/x.csv"], {}, 2,
     "--output only applies to a new run (--start/--end); leave it out with --resume"),
]


@pytest.mark.parametrize(("case", "args", "env", "code", "phrase"), CASES,
                         ids=[c[0] for c in CASES])
def test_bad_input(case: str, args: list[str], env: dict[str, str], code: int, phrase: str,
                   make_cluster, nowhere, tmp_path: Path) -> None:
    cluster = make_cluster(nowhere, **env)
    check(cluster.producer(*args, timeout=60), code, phrase, tmp_path / OUT)


def test_output_not_writable(make_cluster, nowhere, tmp_path: Path) -> None:
    """As root every directory is writable; a path under a regular file is not."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    cluster = make_cluster(nowhere, DISCOVERY_OUTPUT=str(blocker / "x" / "out.csv"))
    line = check(cluster.producer(*RANGE, timeout=60), 2, "is a file, not a directory",
                 blocker / "x" / "out.csv")
    assert "--output or DISCOVERY_OUTPUT" in line
    folder = tmp_path / "a-dir.csv"
    folder.mkdir()
    check(cluster.producer(*RANGE, "--output", str(folder), timeout=60), 2,
          "is a directory: give a file path", folder / "x")


def test_broker_unreachable(make_cluster, nowhere, tmp_path: Path) -> None:
    cluster = make_cluster(nowhere, DISCOVERY_BROKER_URL=f"redis://:pw@127.0.0.1:{free_port()}/0")
    line = check(cluster.producer(*RANGE, timeout=60), 6, "cannot reach the broker redis://:***@",
                 tmp_path / OUT)
    assert "start Redis or fix DISCOVERY_BROKER_URL" in line


def test_broker_database_out_of_range(make_cluster, nowhere, redis_server,
                                      tmp_path: Path) -> None:
    """Redis answers (SELECT 99: "DB index is out of range"): a setting to fix, exit 5 with the
    server's words, not "cannot reach the broker" (exit 6, as if it could come back)."""
    url = redis_server.url.rsplit("/", 1)[0] + "/99"
    cluster = make_cluster(nowhere, DISCOVERY_BROKER_URL=url)
    line = check(cluster.producer(*RANGE, timeout=60), 5,
                 f"the broker {url} refused the connection: DB index is out of range",
                 tmp_path / OUT)
    assert "fix DISCOVERY_BROKER_URL" in line and "cannot reach" not in line


def test_pacs_unreachable(make_cluster, nowhere, tmp_path: Path) -> None:
    cluster = make_cluster(nowhere, DISCOVERY_CONNECT_TIMEOUT="3")
    line = check(cluster.producer(*RANGE, timeout=60), 6,
                 f"cannot connect to NOWHERE@127.0.0.1:{nowhere.port}: connection refused",
                 tmp_path / OUT)
    assert "check DISCOVERY_PACS_HOST and DISCOVERY_PACS_PORT" in line


@pytest.mark.parametrize("action", ["--resume", "--retry-failed", "--status"])
def test_unknown_run_id(action: str, make_cluster, nowhere, redis_server,
                       tmp_path: Path) -> None:
    cluster = make_cluster(nowhere)
    cluster.aggregator()
    check(cluster.producer(action, "20240101-000000-abcdef", timeout=90), 2,
          "unknown run id '20240101-000000-abcdef': the aggregator's ledger has no such run",
          tmp_path / OUT)
    # The answer does not outlive the question by a month (a typo's key goes soon).
    ttl = redis_server.client().ttl(status.run_key("20240101-000000-abcdef"))
    assert 0 < ttl <= status.UNKNOWN_TTL


@pytest.mark.parametrize("where", ["under a file", "is a file"])
def test_state_dir_not_writable(where: str, make_cluster, nowhere, tmp_path: Path) -> None:
    """The aggregator stops at start with one line naming DISCOVERY_STATE_DIR (exit 2),
    instead of failing every result later while the producer waits."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    state = blocker / "state" if where == "under a file" else blocker
    cluster = make_cluster(nowhere, DISCOVERY_STATE_DIR=str(state))
    proc = cluster.aggregator()
    assert proc.proc is not None
    assert proc.proc.wait(60) == 2
    ours = [line for line in proc.log().splitlines() if line.startswith("pacs-discovery:")]
    assert ours == [f"pacs-discovery: cannot keep the ledger in DISCOVERY_STATE_DIR={state} "
                    f"({'Not a directory' if where == 'under a file' else 'File exists'}): "
                    "make it a writable directory"]
    assert "Traceback" not in proc.log()
