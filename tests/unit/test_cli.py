"""producer.cli: bad input stops with exit 2 and one line, before any broker or PACS is used."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from producer import cli


@pytest.fixture(autouse=True)
def no_services(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing to talk to: if a test ever got past input checking it would fail fast (exit 6)
    on a closed port instead of passing."""
    for name in list(os.environ):
        if name.startswith("DISCOVERY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISCOVERY_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("DISCOVERY_PACS_PORT", "1")


def usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == cli.EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    message = err.strip().splitlines()[-1]
    assert message.startswith("python -m producer: error: "), err
    return message


@pytest.mark.parametrize(("argv", "words"), [
    ([], "--start and --end are required"),
    (["--start", "2024-01-01"], "--start and --end are required"),
    (["--end", "2024-01-01"], "--start and --end are required"),
    (["--start", "2024-01-01", "--end", "2024-01-02", "--status", "R1"], "do not combine"),
    (["--end", "2024-01-02", "--resume", "R1"], "do not combine"),
    (["--resume", "R1", "--status", "R1"], "not allowed with argument"),
    (["--retry-failed", "R1", "--resume", "R1"], "not allowed with argument"),
    (["--start", "2024-13-01", "--end", "2024-12-31"], "is not a date: use YYYY-MM-DD"),
    (["--start", "2024-01-01", "--end", "01/02/2024"], "is not a date"),
    (["--start", "2024-01-01T25:00", "--end", "2024-01-02"], "is not a date"),
    (["--start", "2024-01-05", "--end", "2024-01-01"], "is not after --start"),
    (["--start", "2024-01-01T10:00", "--end", "2024-01-01T10:00"], "is not after --start"),
    (["--start", "2024-01-01", "--end", "2024-01-02", "--timeout", "soon"], "invalid float"),
    (["--start", "2024-01-01", "--end", "2024-01-02", "--frobnicate"], "unrecognized"),
    # Before the broker is asked (it would say "cannot reach the broker", exit 6).
    (["--start", "1000-01-01", "--end", "9000-01-01"],
     "more than the 1,000,000 a run may have: set a longer DISCOVERY_WINDOW_MINUTES"),
    (["--start", "2024-01-01", "--end", "2024-01-02", "--wait", "--timeout", "-5"],
     "--timeout -5 is negative: give the seconds to wait (0 = never give up)"),
    (["--resume", "R1", "--wait", "--timeout=-0.5"], "--timeout -0.5 is negative"),
    (["--start", "2024-01-01", "--end", "2024-01-02", "--timeout", "-5"], "is negative"),
    (["--start", "2024-01-01", "--end", "2024-01-02", "--wait", "--timeout", "nan"],
     "--timeout nan is not a number of seconds"),
    (["--start", "2024-01-01", "--end", "2024-01-02", "--timeout", "60"],
     "--timeout limits --wait: add --wait, or leave --timeout out"),
    (["--status", "R1", "--timeout", "5"], "--timeout limits --wait"),
    (["--cancel", "R1", "--start", "2024-01-01"], "--status or --cancel"),
    (["--start", "2024-01-01"], "(or --resume/--retry-failed/--status/--cancel)"),
    (["--resume", "R1", "--wait", "--output", "/tmp/x.csv"],
     "--output only applies to a new run (--start/--end); leave it out with --resume, "
     "--retry-failed, --status or --cancel"),
    (["--retry-failed", "R1", "--all-studies"], "--all-studies only applies to a new run"),
    (["--status", "R1", "--excel-safe"], "--excel-safe only applies to a new run"),
    (["--cancel", "R1", "--skip-preflight"], "--skip-preflight only applies to a new run"),
    (["--status", "R1", "--wait"], "--status and --cancel answer at once: leave --wait out"),
    (["--cancel", "R1", "--wait"], "leave --wait out"),
])
def test_bad_arguments(capsys: pytest.CaptureFixture[str], argv: list[str], words: str) -> None:
    assert words in usage_error(capsys, argv)


@pytest.mark.parametrize(("name", "value"), [
    ("DISCOVERY_PACS_PORT", "70000"),
    ("DISCOVERY_CALLING_AET", "A" * 17),
    ("DISCOVERY_WINDOW_MINUTES", "0"),
    ("DISCOVERY_BROKER_URL", "amqp://guest:s3cret@localhost//"),
])
def test_bad_settings(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                      name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    assert cli.main(["--start", "2024-01-01", "--end", "2024-01-02"]) == cli.EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"pacs-discovery: {name}: ")
    assert "s3cret" not in err


def test_output_is_a_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["--start", "2024-01-01", "--end", "2024-01-02", "--output", str(tmp_path)]
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err == f"pacs-discovery: --output {tmp_path} is a directory: give a file path\n"


def test_output_folder_not_writable(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a regular file where a folder should be: not writable, even by root
    blocker.chmod(0o644)
    argv = ["--start", "2024-01-01", "--end", "2024-01-02", "--output",
            str(blocker / "sub" / "out.csv")]
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pacs-discovery: cannot write the CSV: ")
    assert "DISCOVERY_OUTPUT" in err


def test_output_where_no_file_can_be_made(capsys: pytest.CaptureFixture[str]) -> None:
    """/proc passes the access check as root, and refuses files: exit 2 before anything is
    enqueued (the run was enqueued, exit 0, and stopped later by the aggregator)."""
    argv = ["--start", "2024-01-01", "--end", "2024-01-02", "--output", "/proc/nope/out.csv"]
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "pacs-discovery: cannot write the CSV: no file can be made in /proc ")
    assert "DISCOVERY_OUTPUT" in err


def test_help_lists_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes: 0 complete; 2 bad input or settings; 3 incomplete" in out


def test_plural() -> None:
    """"1 day sweeps" was printed for a one-day run."""
    from producer.progress import plural

    assert [plural(n, "day sweep") for n in (0, 1, 2)] == ["0 day sweeps", "1 day sweep",
                                                          "2 day sweeps"]


def test_aggregator_hint_names_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """The message when the aggregator does not answer starts it as README does."""
    from discovery.errors import TransientError
    from producer import run

    class App:
        def send_task(self, *args: object, **kwargs: object) -> None:
            pass

    class Client:
        def hgetall(self, key: str) -> dict:
            return {}

    with pytest.raises(TransientError) as info:
        run._ask(App(), Client(), "status", "R1", wait_s=0.01)  # type: ignore[arg-type]
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    command = "celery -A worker worker -Q results -c 1 -n aggregator@%h"
    assert f"`{command}` running?" in str(info.value)
    assert command in readme


@pytest.mark.parametrize(("version", "old"), [
    ("4.0.14", True), ("3.2.12", True), ("5.0.0", False), ("7.0.15", False), ("", False),
    ("255.255.255", False),
])
def test_redis_too_old(version: str, old: bool) -> None:
    from producer.run import too_old

    assert too_old(version) is old


class _Mirror:
    """A Redis client whose run mirror always reads ``state`` (what --wait polls)."""

    def __init__(self, state: dict) -> None:
        import json

        self.raw = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in state.items()}

    def hgetall(self, key: str) -> dict:
        return self.raw


def _wait_stderr(capsys: pytest.CaptureFixture[str], state: dict) -> tuple[int, str]:
    from producer import run

    code = run.wait(None, _Mirror(state), "R1", None, 0)  # type: ignore[arg-type]
    return code, capsys.readouterr().err


def test_wait_on_a_cancelled_run_says_how_to_resume(capsys: pytest.CaptureFixture[str]) -> None:
    """An operator's cancel has no setting to fix: the advice to resume comes once."""
    code, err = _wait_stderr(capsys, {
        "state": "stopped", "message": "cancelled by the operator (python -m producer --cancel "
                                       "R1); resume with: python -m producer --resume R1 --wait"})
    assert code == cli.EXIT_CONFIG
    assert "fix the setting" not in err
    assert err.count("--resume R1") == 1, err
    assert err.endswith("run R1 stopped: cancelled by the operator (python -m producer --cancel "
                        "R1); resume with: python -m producer --resume R1 --wait\n")


def test_wait_on_a_stop_that_names_resume_prints_it_once(
        capsys: pytest.CaptureFixture[str]) -> None:
    message = ("cannot write the CSV or its report at /x/out.csv (Not a directory): fix the "
               "path, its folder or the free space, then python -m producer --resume R1 --wait")
    code, err = _wait_stderr(capsys, {"state": "stopped", "message": message})
    assert code == cli.EXIT_CONFIG
    assert err.count("--resume") == 1, err
    assert err.endswith(f"pacs-discovery: run R1 stopped: {message}\n")


def test_wait_on_a_stop_for_a_setting_says_fix_then_resume(
        capsys: pytest.CaptureFixture[str]) -> None:
    message = "the PACS rejected our AE title: fix DISCOVERY_CALLING_AET"
    code, err = _wait_stderr(capsys, {"state": "stopped", "message": message})
    assert code == cli.EXIT_CONFIG
    assert err.endswith(f"pacs-discovery: run R1 stopped: {message}\n"
                        "fix the setting, then: python -m producer --resume R1 --wait\n")


class _Clock:
    """time for producer.run: sleep advances monotonic at once."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class _Script:
    """A Redis client whose mirror follows a script of (until this many seconds, state or an
    exception to raise); an App that records the tasks sent."""

    def __init__(self, clock: _Clock, script: list[tuple[float, object]]) -> None:
        self.clock, self.script, self.t0 = clock, script, clock.now
        self.sent: list[str] = []

    def hgetall(self, key: str) -> dict:
        import json

        for until, state in self.script:
            if self.clock.now - self.t0 < until:
                if isinstance(state, Exception):
                    raise state
                assert isinstance(state, dict)
                return {k: v if isinstance(v, str) else json.dumps(v) for k, v in state.items()}
        raise AssertionError("script ran out")

    def send_task(self, name: str, *args: object, **kwargs: object) -> None:
        self.sent.append(name)


SUMMARY = {"verdict": "complete", "reasons": [], "windows_done": 1, "windows_failed": 0,
           "windows_incomplete": 0, "windows_split": 0, "studies": 0, "lacking_description": 0,
           "csv": "/x.csv", "csv_rows": 0, "report": "/x.coverage.json"}
FINISHED = {"state": "finished", "windows_total": 1, "windows_open": 0, "summary": SUMMARY}


def _scripted_wait(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                   script: list[tuple[float, object]]) -> tuple[int, str, list[str]]:
    from producer import run

    clock = _Clock()
    monkeypatch.setattr(run, "time", clock)
    fake = _Script(clock, script)
    code = run.wait(fake, fake, "R1", {"start": "x"}, 0)  # type: ignore[arg-type]
    return code, capsys.readouterr().err, fake.sent


def test_wait_without_aggregator_says_so_and_names_its_command(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing registers the run: not an empty bar ("windows 0/0 0%") forever, but one line
    that the aggregator has not registered it, then every 15 s the command that starts it
    (and the registration sent again, as before)."""
    from producer.run import AGGREGATOR_COMMAND

    code, err, sent = _scripted_wait(monkeypatch, capsys, [
        (40.0, {"state": "queued", "target": "A->B@h:1"}), (99.0, FINISHED)])
    assert code == cli.EXIT_OK
    lines = err.splitlines()
    assert "windows 0/0" not in err
    assert lines[0] == "pacs-discovery: waiting for the aggregator to register run R1"
    hint = (f"pacs-discovery: run R1 is still not registered: is `{AGGREGATOR_COMMAND}` "
            "running, with the same DISCOVERY_BROKER_URL?")
    assert lines[1:] == [hint, hint, "windows 1/1 [" + "#" * 30 + "] 100% | 0 studies | "
                         "-- windows/s | ETA --:--:--"]
    assert sent == ["discovery.register_run", "discovery.register_run"]


def test_wait_registered_after_a_flush_keeps_sending_the_registration(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    running = {"state": "running", "windows_total": 4, "windows_open": 2}
    code, err, sent = _scripted_wait(monkeypatch, capsys, [
        (5.0, running), (30.0, {}), (40.0, FINISHED)])
    assert code == cli.EXIT_OK
    assert sent == ["discovery.register_run"]  # 15 s after the mirror went away


def test_wait_says_once_when_the_broker_is_unreachable_and_when_it_is_back(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Redis goes away for a minute: not a bar frozen without a word, but one line after a
    few seconds of failed reads, and one when it answers again."""
    import redis

    running = {"state": "running", "windows_total": 4, "windows_open": 2}
    code, err, _ = _scripted_wait(monkeypatch, capsys, [
        (2.0, running), (62.0, redis.ConnectionError("refused")), (64.0, running),
        (65.0, redis.ConnectionError("refused")), (66.0, FINISHED)])
    assert code == cli.EXIT_OK
    notices = [line for line in err.splitlines() if line.startswith("pacs-discovery:")]
    assert notices == ["pacs-discovery: broker unreachable, retrying",
                       "pacs-discovery: broker reachable again"]  # a 1 s blip says nothing


@pytest.mark.parametrize("name", ["x.coverage.json", "x.incomplete.csv", "x.excel.csv",
                                  "x.incomplete.excel.csv", "x.incomplete.tsv", "X.Excel.CSV"])
def test_output_named_like_a_derived_file(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                          name: str) -> None:
    """`--output x.coverage.json` wrote the CSV where the run of x.csv keeps its report."""
    argv = ["--start", "2024-01-01", "--end", "2024-01-02", "--output", str(tmp_path / name)]
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"pacs-discovery: --output {tmp_path / name} is named like the ")
    assert "choose a name that does not end in .coverage.json, .incomplete.<ext> or " \
           ".excel.csv" in err


def test_discovery_output_named_like_a_derived_file(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    monkeypatch.setenv("DISCOVERY_OUTPUT", str(tmp_path / "x.coverage.json"))
    assert cli.main(["--start", "2024-01-01", "--end", "2024-01-02"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"pacs-discovery: DISCOVERY_OUTPUT {tmp_path / 'x.coverage.json'} is "
                          "named like the coverage report")


@pytest.mark.parametrize("name", ["x.csv", "coverage.json.csv", "incomplete.csv", "excel.csv",
                                  "x.excel.txt", "x"])
def test_derived_name_leaves_ordinary_names(name: str) -> None:
    from discovery.report import derived_kind

    assert derived_kind(Path(name)) is None


def test_the_bar_shows_no_rate_until_a_window_is_seen_done() -> None:
    """A short run was already finished at the first look and ended '0.0 windows/s' (found by
    the fresh-user helper): no rate then; once windows are seen done, their rate."""
    import io

    from producer import progress

    bar = progress.Bar(io.StringIO())
    assert "| -- windows/s |" in bar.line({"windows_total": 4, "windows_open": 4})
    bar.started -= 2.0
    assert "| 1.0 windows/s |" in bar.line({"windows_total": 4, "windows_open": 2})
