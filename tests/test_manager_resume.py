"""Kill -9 of the manager at several moments, then rerun: same outcome as a run never killed.

Real pieces only: the manager is a subprocess with two worker processes, the origin is aiohttp
on 127.0.0.1, the kills are SIGKILL. The kill moments are found by watching the job folder.
"""

from __future__ import annotations

import json
import signal
import tarfile
from pathlib import Path

import psutil
import pyarrow.parquet as pq
from manager_support import (
    partial_files,
    run_manager,
    running_origin,
    start_manager,
    url_table,
    wait_for,
)

from ldawt.manager.job import JOB_ENV, Job
from ldawt.manager.ledger import DONE, Ledger

UNIQUE = 600
ROWS = 400_000  # large enough that planning takes long enough to be caught in the act
SHARD_SIZE = 50
COMPARED = ["row", "status", "http_status", "sha256", "member", "duplicate_of"]


def _args(table: Path, out: Path) -> list[str | Path]:
    return [
        "submit",
        table,
        "--out",
        out,
        "--allow-private",
        "--shard-size",
        SHARD_SIZE,
        "--workers",
        "2",
        "--concurrency",
        "8",
    ]


def _stats_files(out: Path) -> list[Path]:
    return sorted(out.glob("*_stats.json"))


def _planning(out: Path) -> bool:
    job = Job(out)
    if not job.spill_dir.exists():
        return False
    with Ledger(job.ledger_path) as ledger:
        return ledger.meta("identity") is None


def _kill(process) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def _outcomes(out: Path) -> dict[str, list]:
    return {
        path.name: pq.read_table(path, columns=COMPARED).sort_by("row").to_pylist()
        for path in sorted(out.glob("*.manifest.parquet"))
    }


def _job_processes(out: Path) -> list[int]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(JOB_ENV) == str(out.resolve()):
                found.append(process.pid)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def test_kill_9_at_several_moments_then_rerun_matches_an_uninterrupted_run(tmp_path: Path):
    with running_origin(delay_s=0.02) as origin:
        urls = [origin.url("gone" if i % 10 == 0 else "img", i) for i in range(UNIQUE)]
        table = url_table(tmp_path / "urls.parquet", [urls[i % UNIQUE] for i in range(ROWS)])

        reference = tmp_path / "reference"
        done = run_manager(*_args(table, reference))
        assert done.returncode == 0, done.stderr

        out = tmp_path / "killed"
        log = tmp_path / "killed.log"
        # 1: during planning
        process = start_manager(*_args(table, out), log=log)
        wait_for(lambda: _planning(out), "planning", process)
        _kill(process)

        # 2: while shards are being written, some already committed
        process = start_manager(*_args(table, out), log=log)
        wait_for(
            lambda: len(_stats_files(out)) >= 2 and bool(partial_files(out)),
            "a shard half written after two committed",
            process,
        )
        _kill(process)
        committed = {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in _stats_files(out)}
        hits_before = dict(origin.hits)

        # 3: later, once more shards are done
        process = start_manager(*_args(table, out), log=log)
        wait_for(
            lambda: len(_stats_files(out)) >= len(committed) + 3,
            "three more shards committed",
            process,
        )
        _kill(process)

        # 4: run to the end
        final = run_manager(*_args(table, out))
        assert final.returncode == 0, final.stderr + log.read_text()

    # the same outcomes, row by row, as the run never killed
    assert _outcomes(out) == _outcomes(reference)
    # nothing committed was fetched again: committed shards untouched, their URLs fetched once
    for name, (mtime, text) in committed.items():
        path = out / name
        assert (path.stat().st_mtime_ns, path.read_text()) == (mtime, text)
    for name in committed:
        manifest = pq.read_table(out / name.replace("_stats.json", ".manifest.parquet"))
        for url in set(manifest.column("url").to_pylist()):
            path = url.split(str(origin.port), 1)[1]
            assert origin.hits[path] == hits_before[path]
    assert not partial_files(out)
    assert not Job(out).spill_dir.exists()

    # no duplicate members, one per fetched image
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            names = tar.getnames()
        assert len(names) == len(set(names))
        stats = json.loads((out / tar_path.name.replace(".tar", "_stats.json")).read_text())
        assert len(names) == stats["counts"].get("ok", 0)

    # the ledger agrees with the files
    with Ledger(Job(out).ledger_path) as ledger:
        shards = ledger.shards()
        assert shards and all(s.state == DONE for s in shards)
        for shard in shards:
            stats = json.loads((out / f"{shard.shard_id}_stats.json").read_text())
            assert shard.counts == stats["counts"]
            assert shard.tar_bytes == (out / f"{shard.shard_id}.tar").stat().st_size
        assert sum(ledger.status_counts().values()) == ROWS

    wait_for(lambda: not _job_processes(out), "the job's worker processes to exit")


def test_a_damaged_committed_tar_is_fetched_again_on_rerun(tmp_path: Path):
    with running_origin() as origin:
        table = url_table(tmp_path / "urls.parquet", [origin.url("img", i) for i in range(30)])
        out = tmp_path / "out"
        args = ["submit", table, "--out", out, "--allow-private", "--shard-size", 10]
        assert run_manager(*args).returncode == 0
        damaged = out / "00001.tar"
        damaged.write_bytes(damaged.read_bytes()[:-2048])
        hits_before = sum(origin.hits.values())

        rerun = run_manager(*args)
        assert rerun.returncode == 0, rerun.stderr
        assert sum(origin.hits.values()) == hits_before + 10  # that shard alone, again
        with tarfile.open(damaged) as tar:
            assert len(tar.getnames()) == 10
