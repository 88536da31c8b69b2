"""`report` and `status` on real jobs: throughput in buckets of a nice width, images per second
that count images, and whether a manager is running the job (a live one, one killed with
SIGKILL, one interrupted before any shard ran)."""

from __future__ import annotations

import json
import os
import signal
import time
from itertools import pairwise
from pathlib import Path

import pytest
from manager_support import run_manager, running_origin, start_manager, url_table, wait_for

from ldawt.manager import submit
from ldawt.manager.cli import main
from ldawt.manager.job import Job
from ldawt.manager.ledger import DONE, RUNNING, Ledger
from ldawt.manager.report import NICE_WIDTHS_S, THROUGHPUT_BUCKETS, bucket_width

RUN = ["--engine", "local", "--workers", "1", "--allow-private", "--retries", "0"]
HINT = "not running; rerun the same submit command to resume"


def _submit(capsys, source: Path, out: Path, *extra: str) -> int:
    status = main(["submit", str(source), "--out", str(out), *RUN, "-q", *extra])
    capsys.readouterr()
    return status


def _command(capsys, *args: str | Path) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _report(capsys, out: Path) -> dict:
    status, text, err = _command(capsys, "report", out, "--json")
    assert status == 0, err
    return json.loads(text)


def _states(out: Path) -> dict[str, int]:
    if not Job(out).ledger_path.exists():
        return {}
    with Ledger(Job(out).ledger_path) as ledger:
        return ledger.state_counts()


def _epoch(local: str) -> float:
    return time.mktime(time.strptime(local, "%Y-%m-%dT%H:%M:%S"))


def test_throughput_is_bucketed_by_a_nice_width_with_the_job_s_totals(tmp_path: Path, capsys):
    with running_origin(delay_s=0.05) as origin:
        urls = [origin.url("gone" if i % 4 == 0 else "img", i) for i in range(160)]
        source = url_table(tmp_path / "in.parquet", urls)
        out = tmp_path / "out"
        assert _submit(capsys, source, out, "--shard-size", "10", "--concurrency", "4") == 0
    figures = _report(capsys, out)
    buckets, totals = figures["throughput"], figures["totals"]

    assert 1 <= len(buckets) <= THROUGHPUT_BUCKETS
    width = buckets[0]["seconds"]
    assert width in NICE_WIDTHS_S and all(b["seconds"] == width for b in buckets)
    starts = [_epoch(b["from"]) for b in buckets]
    assert len(set(starts)) == len(starts)  # no repeated timestamps
    assert all(later - earlier == width for earlier, later in pairwise(starts))
    offset = time.localtime(starts[0]).tm_gmtoff
    assert (starts[0] + offset) % width == 0  # aligned to the width
    # whole numbers, and together the job's work
    assert sum(b["rows"] for b in buckets) == totals["rows"] == 160
    assert sum(b["images"] for b in buckets) == totals["ok"] == 120
    assert sum(b["bytes"] for b in buckets) == totals["bytes"]
    # spread over each shard's run time: every whole second the job ran did some work
    assert all(b["rows"] > 0 for b in buckets[1:-1])

    status, text, _ = _command(capsys, "report", out)
    assert status == 0
    table = text.split("throughput per ", 1)[1].splitlines()
    assert table[0].startswith(f"{width} s ")
    assert len(table) == 1 + len(buckets)
    assert all("rows/s" in line and "images/s" in line for line in table[1:])


def test_bucket_widths_for_short_and_long_jobs():
    start = time.mktime((2026, 3, 14, 9, 26, 53, 0, 0, -1)) + 0.4
    for span, expected in [
        (0.0, 1),
        (3.5, 1),
        (100, 5),
        (3600, 300),
        (20 * 3600, 3600),
        (86400, 7200),
    ]:
        assert bucket_width(start, start + span)[1] == expected, span
    for span in [0.2, 3.5, 23.9, 24.0, 61, 700, 3601, 40_000, 86_400 * 9, 86_400 * 400]:
        first, width = bucket_width(start, start + span)
        assert width >= 1 and first <= start < first + width
        assert (first + time.localtime(start).tm_gmtoff) % width == 0
        assert (start + span - first) / width <= THROUGHPUT_BUCKETS


def test_images_per_second_counts_images_beside_rows_per_second(tmp_path: Path, capsys):
    with running_origin() as origin:
        urls = [origin.url("gone" if i % 2 else "img", i) for i in range(40)]
        source = url_table(tmp_path / "in.parquet", urls)
        out = tmp_path / "out"
        assert _submit(capsys, source, out, "--shard-size", "10") == 0
    totals = _report(capsys, out)["totals"]
    assert (totals["rows"], totals["ok"]) == (40, 20)
    assert totals["busy_s"] > 0
    assert totals["rows_per_s"] * totals["busy_s"] == pytest.approx(40)
    assert totals["images_per_s"] * totals["busy_s"] == pytest.approx(20)

    status, text, _ = _command(capsys, "report", out)
    assert status == 0
    assert f"{totals['rows_per_s']:,.0f} rows/s, {totals['images_per_s']:,.0f} images/s, " in text


def test_manager_pid_probes_the_lock_without_keeping_it(tmp_path: Path):
    job = Job(tmp_path / "out")
    assert job.manager_pid() is None  # no lock file yet
    with job.lock():
        assert Job(tmp_path / "out").manager_pid() == os.getpid()
    assert job.manager_pid() is None
    with job.lock():  # the probe left the lock free
        pass


def test_status_of_a_running_then_killed_submit(tmp_path: Path, capsys):
    out = tmp_path / "out"
    with running_origin(delay_s=0.3) as origin:
        source = url_table(tmp_path / "in.parquet", [origin.url("img", i) for i in range(60)])
        args = ["submit", source, "--out", out, *RUN, "--shard-size", "4", "--concurrency", "2"]
        process = start_manager(*args, log=tmp_path / "manager.log")
        try:
            wait_for(
                lambda: _states(out).get(DONE, 0) >= 1 and _states(out).get(RUNNING, 0) >= 1,
                "a shard done while others run",
                process,
            )
            status, live, err = _command(capsys, "status", out)
            assert status == 0, err
            assert Job(out).manager_pid() == process.pid
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        assert f"manager: running (pid {process.pid})" in live
        assert " running, " in live and "rows/s while running" in live and "ETA " in live

        interrupted = _states(out)[RUNNING]
        assert interrupted >= 1
        status, text, err = _command(capsys, "status", out)
        assert status == 0, err
        assert f"manager: {HINT}" in text
        shards = next(line for line in text.splitlines() if line.startswith("shards: "))
        assert f"{interrupted} interrupted, " in shards and "running" not in shards
        assert "ETA" not in text and "while running" not in text
        figures = _report(capsys, out)["status"]
        assert (figures["manager_pid"], figures["interrupted"]) == (None, interrupted)
        assert figures["eta_s"] is None

        origin.delay_s = 0.0
        rerun = run_manager(*args)  # the interrupted shards run again, as the hint says
        assert rerun.returncode == 0, rerun.stderr
    status, text, _ = _command(capsys, "status", out)
    assert "manager: not running; every shard is done" in text
    assert "0 planned, 0 running, 15 done, 0 failed" in text


def test_report_of_a_job_killed_before_any_shard_committed(tmp_path: Path, capsys):
    out = tmp_path / "out"
    with running_origin(delay_s=5.0) as origin:
        source = url_table(tmp_path / "in.parquet", [origin.url("img", i) for i in range(8)])
        args = ["submit", source, "--out", out, *RUN, "--shard-size", "4"]
        process = start_manager(*args, log=tmp_path / "manager.log")
        try:
            wait_for(lambda: _states(out).get(RUNNING, 0) == 2, "shards running", process)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
    assert not list(out.glob("*_stats.json"))

    status, text, err = _command(capsys, "report", out)
    assert status == 0, err
    assert "Traceback" not in err
    assert f"manager: {HINT}" in text and "2 interrupted" in text
    assert "no shard is committed yet" in text
    figures = _report(capsys, out)
    assert figures["totals"]["rows"] == 0 and figures["throughput"] == []
    assert figures["totals"]["images_per_s"] == 0.0 and figures["status"]["interrupted"] == 2


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_report_and_status_of_a_planned_job_that_never_ran(tmp_path: Path, capsys, monkeypatch):
    out = tmp_path / "out"
    source = url_table(tmp_path / "in.parquet", [f"http://127.0.0.1:9/{i}.jpg" for i in range(3)])
    monkeypatch.setattr(submit, "execute", _interrupt)  # Ctrl-C once the plan is recorded
    assert main(["submit", str(source), "--out", str(out), *RUN, "--shard-size", "2"]) == 130
    capsys.readouterr()

    status, text, err = _command(capsys, "status", out)
    assert status == 0, err
    assert f"manager: {HINT}" in text and "2 planned, 0 running, 0 done" in text
    assert "rate: - (no shard done yet); 3 rows to run" in text
    status, text, err = _command(capsys, "report", out)
    assert status == 0, err
    assert "no shard is committed yet" in text and "Traceback" not in err
    figures = _report(capsys, out)
    assert figures["throughput"] == [] and figures["classes"]["count"] == 0


def test_status_and_report_of_a_job_interrupted_while_planning(tmp_path: Path, capsys, monkeypatch):
    out = tmp_path / "out"
    source = url_table(tmp_path / "in.parquet", ["http://127.0.0.1:9/a.jpg"])
    monkeypatch.setattr(submit, "plan", _interrupt)
    assert main(["submit", str(source), "--out", str(out), *RUN]) == 130
    capsys.readouterr()

    status, text, err = _command(capsys, "status", out)
    assert status == 0, err
    assert "manager: not running; planning did not finish" in text
    status, text, err = _command(capsys, "report", out)
    assert status == 2 and "never fully planned" in err and "Traceback" not in err
