"""One error path for every command: a bad input is one `ldawt: error: ...` line and exit status
2, never a traceback, in process and through the real entry point; --help says the exit
statuses; the log format, -q and -v; `report DIR | head` ends quietly."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from manager_support import manager_command, run_manager, running_origin, url_table

from ldawt.manager.cli import build_parser, main
from ldawt.manager.console import ConsoleFormatter
from ldawt.manager.job import Job

RUN = ["--engine", "local", "--workers", "1", "--allow-private", "--retries", "0"]
INSTALL_HINT = "apt install coop-computing-tools"


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real job, done: 6 images and a 404 in 2 shards. Tests copy it before damaging it."""
    folder = tmp_path_factory.mktemp("finished")
    with running_origin() as origin:
        urls = [origin.url("img", i) for i in range(6)] + [origin.url("gone", 0)]
        source = url_table(folder / "in.parquet", urls)
        status = main(["submit", str(source), "--out", str(folder / "out"), *RUN, "-q"])
    assert status == 0
    return folder / "out"


def _copy(job: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(job, tmp_path / "job-copy"))


def _garbage_ledger(job: Path, tmp_path: Path) -> Path:
    out = _copy(job, tmp_path)
    ledger = Job(out).ledger_path
    for suffix in ("-wal", "-shm"):
        Path(f"{ledger}{suffix}").unlink(missing_ok=True)
    ledger.write_bytes(b"\x8f\x00garbage, not SQLite\xff" * 500)
    return out


def _truncated_ledger(job: Path, tmp_path: Path) -> Path:
    """A ledger cut short after its header: SQLite opens it, then finds it malformed."""
    out = _copy(job, tmp_path)
    ledger = Job(out).ledger_path
    ledger.write_bytes(ledger.read_bytes()[:1024])
    return out


def _garbage_parquet(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.parquet"
    path.write_bytes(b"PAR1 this is not a parquet file at all")
    return path


def _good_input(tmp_path: Path) -> Path:
    return url_table(tmp_path / "in.parquet", ["http://127.0.0.1:9/img/0.jpg"])


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder\n")
    return path


def _bad_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.json"
    path.write_text(text)
    return path


def _damaged_manifest(job: Path, tmp_path: Path) -> Path:
    out = _copy(job, tmp_path)
    next(out.glob("*.manifest.parquet")).write_bytes(b"not a manifest")
    return out


def _missing_manifest(job: Path, tmp_path: Path) -> Path:
    out = _copy(job, tmp_path)
    next(out.glob("*.manifest.parquet")).unlink()
    return out


Case = Callable[[Path, Path], list]
LOCAL = ["--engine", "local", "--workers", "1"]

# id -> (argv from (tmp_path, finished job), words the error line holds)
CASES: dict[str, tuple[Case, str]] = {
    # submit
    "submit-missing-input": (
        lambda t, j: ["submit", t / "nope.parquet", "--out", t / "o", *LOCAL],
        "does not exist",
    ),
    "submit-garbage-parquet": (
        lambda t, j: ["submit", _garbage_parquet(t), "--out", t / "o", *LOCAL],
        "cannot read",
    ),
    "submit-folder-without-tables": (
        lambda t, j: ["submit", t, "--out", t / "o", *LOCAL],
        "holds no .parquet/.pq/.csv files",
    ),
    "submit-bad-config-value": (
        lambda t, j: [
            "submit",
            _good_input(t),
            "--out",
            t / "o",
            "--config",
            _bad_config(t, '{"shard_size": "many"}'),
        ],
        "bad value 'many' for 'shard_size'",
    ),
    "submit-unknown-url-column": (
        lambda t, j: ["submit", _good_input(t), "--out", t / "o", "--url-col", "zzz", *LOCAL],
        "URL column 'zzz' not found; the columns present are: photo_url",
    ),
    "submit-unknown-passthrough-column": (
        lambda t, j: ["submit", _good_input(t), "--out", t / "o", "--passthrough", "x", *LOCAL],
        "passthrough column 'x' not found",
    ),
    "submit-output-is-a-file": (
        lambda t, j: ["submit", _good_input(t), "--out", _a_file(t), *LOCAL],
        "exists and is not a folder",
    ),
    "submit-corrupt-ledger": (
        lambda t, j: ["submit", _good_input(t), "--out", _garbage_ledger(j, t), *LOCAL],
        "ledger.sqlite is damaged",
    ),
    "submit-taskvine-missing": (
        lambda t, j: ["submit", _good_input(t), "--out", t / "o", "--engine", "taskvine"],
        INSTALL_HINT,
    ),
    # demo
    "demo-missing-input": (
        lambda t, j: ["demo", "--input", t / "nope.parquet", "--out", t / "o", *LOCAL],
        "does not exist",
    ),
    "demo-garbage-input": (
        lambda t, j: ["demo", "--input", _garbage_parquet(t), "--out", t / "o", *LOCAL],
        "cannot read",
    ),
    "demo-unknown-url-column": (
        lambda t, j: ["demo", "--input", _good_input(t), "--url-col", "zzz", "--out", t / "o"],
        "URL column 'zzz' not found",
    ),
    "demo-output-is-a-file": (
        lambda t, j: ["demo", "--out", _a_file(t), *LOCAL],
        "exists and is not a folder",
    ),
    "demo-corrupt-ledger": (
        lambda t, j: ["demo", "--out", _garbage_ledger(j, t), *LOCAL],
        "ledger.sqlite is damaged",
    ),
    "demo-bad-config-value": (
        lambda t, j: ["demo", "--out", t / "o", "--config", _bad_config(t, '{"rows": "x"}')],
        "bad value 'x' for 'rows'",
    ),
    "demo-taskvine-missing": (
        lambda t, j: ["demo", "--out", t / "o", "--engine", "taskvine"],
        INSTALL_HINT,
    ),
    # retry-failed
    "retry-folder-without-job": (
        lambda t, j: ["retry-failed", t, *LOCAL],
        "holds no ldawt job",
    ),
    "retry-dir-is-a-file": (
        lambda t, j: ["retry-failed", _a_file(t), *LOCAL],
        "holds no ldawt job",
    ),
    "retry-unknown-status": (
        lambda t, j: ["retry-failed", j, "--status", "timeout,http_999", *LOCAL],
        "unknown status 'http_999'",
    ),
    "retry-corrupt-ledger": (
        lambda t, j: ["retry-failed", _garbage_ledger(j, t), *LOCAL],
        "ledger.sqlite is damaged",
    ),
    "retry-truncated-ledger": (
        lambda t, j: ["retry-failed", _truncated_ledger(j, t), *LOCAL],
        "ledger.sqlite is damaged",
    ),
    "retry-bad-config-value": (
        lambda t, j: ["retry-failed", j, "--config", _bad_config(t, '{"timeout": "soon"}')],
        "bad value 'soon' for 'timeout'",
    ),
    "retry-taskvine-missing": (
        lambda t, j: ["retry-failed", j, "--engine", "taskvine"],
        INSTALL_HINT,
    ),
    # status
    "status-folder-without-job": (lambda t, j: ["status", t], "holds no ldawt job"),
    "status-dir-is-a-file": (lambda t, j: ["status", _a_file(t)], "holds no ldawt job"),
    "status-corrupt-ledger": (
        lambda t, j: ["status", _garbage_ledger(j, t)],
        "ledger.sqlite is damaged (file is not a database)",
    ),
    "status-truncated-ledger": (
        lambda t, j: ["status", _truncated_ledger(j, t)],
        "ledger.sqlite is damaged",
    ),
    # report
    "report-folder-without-job": (lambda t, j: ["report", t], "holds no ldawt job"),
    "report-corrupt-ledger": (
        lambda t, j: ["report", _garbage_ledger(j, t), "--json"],
        "ledger.sqlite is damaged",
    ),
    "report-garbage-manifest": (
        lambda t, j: ["report", _damaged_manifest(j, t)],
        "cannot read the shard files of the job",
    ),
    "report-missing-manifest": (
        lambda t, j: ["report", _missing_manifest(j, t), "--json"],
        ".manifest.parquet is missing; rerun its submit command",
    ),
}
# Through the real entry point too: one or more per command.
SUBPROCESS_CASES = [
    "submit-missing-input",
    "submit-corrupt-ledger",
    "submit-taskvine-missing",
    "demo-garbage-input",
    "retry-folder-without-job",
    "retry-taskvine-missing",
    "status-corrupt-ledger",
    "report-garbage-manifest",
]


def without_taskvine(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if ndcctools were not installed, wherever the engines look for it."""
    monkeypatch.setitem(sys.modules, "ndcctools", None)
    monkeypatch.setitem(sys.modules, "ndcctools.taskvine", None)


def assert_one_error(status: int, out: str, err: str, words: str, only_ours: bool = True) -> None:
    """``only_ours``: every line is a log line of ldawt's (in process, where stderr holds only
    what Python wrote; a subprocess's may also hold a native library's warning)."""
    assert status == 2, err
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("ldawt: error: ")]
    assert len(errors) == 1, err
    assert words in errors[0], err
    assert not only_ours or all(line.startswith("ldawt: ") for line in err.splitlines()), err


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_error_line_and_status_2(
    case: str, tmp_path: Path, finished_job: Path, capsys, monkeypatch
):
    without_taskvine(monkeypatch)
    argv, words = CASES[case]
    status = main([str(a) for a in argv(tmp_path, finished_job)])
    captured = capsys.readouterr()
    assert_one_error(status, captured.out, captured.err, words)


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_bad_input_through_the_real_entry_point(case: str, tmp_path: Path, finished_job: Path):
    if "taskvine" in case and importlib.util.find_spec("ndcctools") is not None:
        pytest.skip("TaskVine is installed here")
    argv, words = CASES[case]
    done = run_manager(*argv(tmp_path, finished_job))
    assert_one_error(done.returncode, done.stdout, done.stderr, words, only_ours=False)


def test_the_taskvine_message_says_how_to_install_it(tmp_path: Path, capsys, monkeypatch):
    without_taskvine(monkeypatch)
    assert main(["submit", str(_good_input(tmp_path)), "--out", str(tmp_path / "o"),
                 "--engine", "taskvine"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "ndcctools" in err and INSTALL_HINT in err and "conda install" in err


def test_a_damaged_ledger_is_left_as_it_was(tmp_path: Path, finished_job: Path, capsys):
    out = _garbage_ledger(finished_job, tmp_path)
    before = Job(out).ledger_path.read_bytes()
    assert main(["status", str(out)]) == 2
    assert "restore it from a backup" in capsys.readouterr().err
    assert Job(out).ledger_path.read_bytes() == before


# --- help ---


def _help(capsys, *command: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


@pytest.mark.parametrize("command", [(), ("submit",), ("retry-failed",), ("demo",)])
def test_help_documents_the_exit_statuses(capsys, command: tuple[str, ...]):
    text = _help(capsys, *command)
    assert "exit status: 0 when every shard is done" in text
    assert "1 when the job ended with failed shards or stopped" in text
    assert "2 for a usage, input or engine error" in text
    assert "130 when interrupted" in text


@pytest.mark.parametrize("command", ["status", "report"])
def test_help_of_the_reading_commands_documents_their_exit_statuses(capsys, command: str):
    assert "exit status: 0 when the job was read; 2 when DIR holds no job" in _help(capsys, command)


def test_help_texts_render_percent_signs_and_describe_every_command(capsys):
    demo = _help(capsys, "demo")
    assert "about 3% answer 404 and 1% HTML" in demo
    status = _help(capsys, "status")
    assert "Say where the job in DIR stands" in status
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in commands.choices.items():
        assert parser.description, name
        assert "%%" not in parser.format_help(), name
    assert "%%" not in build_parser().format_help()


# --- messages ---


def _formatted(level: int, message: str) -> str:
    record = logging.LogRecord("ldawt.test", level, __file__, 1, message, None, None)
    return ConsoleFormatter().format(record)


def test_log_lines_say_their_level_and_keep_multi_line_messages_readable():
    assert _formatted(logging.INFO, "planned 5 rows") == "ldawt: planned 5 rows"
    assert _formatted(logging.WARNING, "slow") == "ldawt: warning: slow"
    assert _formatted(logging.ERROR, "bad input") == "ldawt: error: bad input"
    assert _formatted(logging.DEBUG, "detail") == "ldawt: debug: detail"
    text = _formatted(logging.ERROR, "out holds another job:\n  - option a: 1 -> 2\nrerun it")
    assert text.splitlines() == [
        "ldawt: error: out holds another job:",
        "ldawt:   - option a: 1 -> 2",
        "ldawt: rerun it",
    ]


def test_quiet_hides_progress_and_information_but_not_warnings(tmp_path: Path, capsys):
    with running_origin() as origin:
        source = url_table(tmp_path / "in.parquet", [origin.url("img", i) for i in range(4)])
        local = ["--engine", "local", "--workers", "1", "--retries", "0"]
        # loopback without --allow-private: every row blocked, which warns with a hint
        assert main(["submit", str(source), "--out", str(tmp_path / "loud"), *local]) == 0
        loud = capsys.readouterr().err
        assert main(["submit", str(source), "--out", str(tmp_path / "q"), *local, "-q"]) == 0
        quiet = capsys.readouterr().err
    assert "[####################] 4/4 rows" in loud and "ldawt: planning " in loud
    assert "ldawt: warning: 4 of 4 rows failed with blocked_address" in loud
    warnings = [line for line in loud.splitlines() if line.startswith("ldawt: warning: ")]
    assert quiet.replace(str(tmp_path / "q"), str(tmp_path / "loud")).splitlines() == warnings
    assert main(["status", str(tmp_path / "nothing"), "-q"]) == 2
    assert capsys.readouterr().err.startswith("ldawt: error: ")


def test_verbose_shows_debugging_messages_and_the_traceback_of_an_error(
    tmp_path: Path, finished_job: Path, capsys
):
    assert main(["status", str(finished_job), "-v"]) == 0
    err = capsys.readouterr().err
    assert "ldawt: debug: ldawt " in err and "'command': 'status'" in err
    assert main(["status", str(finished_job)]) == 0
    assert "debug" not in capsys.readouterr().err

    out = _garbage_ledger(finished_job, tmp_path)
    assert main(["status", str(out), "-v"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[1].startswith("ldawt: error: ") and "is damaged" in lines[1]
    assert "ldawt: Traceback (most recent call last):" in lines
    assert all(line.startswith("ldawt: ") for line in lines)


def test_a_command_leaves_the_process_as_it_found_it(finished_job: Path, capsys):
    root, ours = logging.getLogger(), logging.getLogger("ldawt")
    handlers, levels = list(root.handlers), (root.level, ours.level)
    sigpipe = signal.getsignal(signal.SIGPIPE)
    assert main(["report", str(finished_job), "-v"]) == 0
    assert main(["status", str(finished_job), "-q"]) == 0
    capsys.readouterr()
    assert root.handlers == handlers and (root.level, ours.level) == levels
    assert signal.getsignal(signal.SIGPIPE) == sigpipe


# --- a reader that goes away ---


@pytest.mark.parametrize("command", [["report"], ["report", "--json"], ["status"]])
def test_a_reader_gone_before_the_output_ends_it_quietly(
    finished_job: Path, tmp_path: Path, command: list[str]
):
    """The reader's end of the pipe is closed before the command writes anything: whatever the
    output's size, its first write meets a pipe nobody reads (what `| head -1` does to a long
    report, and to a short one when head is quick)."""
    err = tmp_path / "stderr"
    with open(err, "w") as handle:
        process = subprocess.Popen(
            manager_command(*command, finished_job), stdout=subprocess.PIPE, stderr=handle
        )
        assert process.stdout is not None
        process.stdout.close()
        try:
            returncode = process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            waiting = Path(f"/proc/{process.pid}/wchan").read_text()
            process.kill()
            pytest.fail(f"{command} still runs (waiting in {waiting}): {err.read_text()}")
    text = err.read_text()
    assert "Traceback" not in text and "BrokenPipeError" not in text, text
    assert "ldawt:" not in text, text
    assert returncode in (0, -signal.SIGPIPE)


def test_report_piped_into_head(finished_job: Path):
    command = " ".join(f"'{a}'" for a in manager_command("report", finished_job))
    done = subprocess.run(
        ["bash", "-c", f"{command} | head -1"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0
    assert done.stdout.startswith("job: ") and done.stdout.count("\n") == 1
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr
    assert "ldawt:" not in done.stderr, done.stderr
    full = run_manager("report", finished_job, "--json")
    assert json.loads(full.stdout)["totals"]["rows"] == 7
