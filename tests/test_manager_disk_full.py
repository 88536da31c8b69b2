"""A disk that fills mid-shard: the shard fails cleanly, committed shards stay, a later run
finishes the job. The disk is a small tmpfs mounted (as root) for the test."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from manager_support import mounted_filesystem, partial_files, running_origin, url_table

from ldawt.manager.cli import main
from ldawt.manager.job import Job
from ldawt.manager.ledger import DONE, FAILED, Ledger

IMAGE_BYTES = 50_000
ROWS = 40
SHARD_SIZE = 8  # five shards of about 400 kB
FREE_BYTES = 1_000_000  # room for two shards and the job folder, not for five


@pytest.fixture
def small_disk(tmp_path: Path):
    with mounted_filesystem(tmp_path / "disk", "tmpfs", "size=8m") as folder:
        yield folder


def _fill(disk: Path, leave: int) -> Path:
    filler = disk / "filler"
    info = os.statvfs(disk)
    filler.write_bytes(b"\0" * (info.f_bavail * info.f_frsize - leave))
    return filler


def _committed(out: Path) -> dict[str, tuple[int, int]]:
    return {
        p.name: (p.stat().st_mtime_ns, p.stat().st_size)
        for p in [*out.glob("*.tar"), *out.glob("*_stats.json")]
    }


def test_a_full_disk_fails_the_shard_cleanly_and_a_rerun_finishes(
    tmp_path: Path, small_disk: Path, capsys
):
    out = small_disk / "out"
    with running_origin(image_bytes=IMAGE_BYTES) as origin:
        source = url_table(tmp_path / "in.parquet", [origin.url("img", i) for i in range(ROWS)])
        command = [
            "submit",
            str(source),
            "--out",
            str(out),
            "--allow-private",
            "--engine",
            "local",
            "--workers",
            "1",
            "--shard-size",
            str(SHARD_SIZE),
            "--shard-retries",
            "1",
        ]
        filler = _fill(small_disk, FREE_BYTES)
        assert main(command) == 1
        err = capsys.readouterr().err
        assert "No space left on device" in err or " is full; stopping" in err

        with Ledger(Job(out).ledger_path) as ledger:
            states = ledger.state_counts()
            failed = ledger.shards([FAILED])
        assert 1 <= states[DONE] < 5
        assert all("No space left on device" in s.error for s in failed)
        assert not partial_files(out)
        for shard in failed:  # nothing of a failed shard is left behind
            assert not list(out.glob(f"{shard.shard_id}[._]*"))
        committed = _committed(out)
        assert len(committed) == 2 * states[DONE]

        filler.unlink()
        assert main(command) == 0
        err = capsys.readouterr().err
        assert f"{states[DONE]} already done" in err

    after = _committed(out)
    assert {name: after[name] for name in committed} == committed
    statuses = [
        s for p in out.glob("*.manifest.parquet") for s in pq.read_table(p)["status"].to_pylist()
    ]
    assert statuses == ["ok"] * ROWS
    assert not partial_files(out)
