"""Moving a TaskVine shard's returned files into place (host test: no TaskVine needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ldawt.daemon import contract
from ldawt.daemon.contract import ShardSpec, partial_path
from ldawt.manager.engines.vine_setup import commit_outputs


def _returned(staged: Path) -> dict:
    """Files as a worker sends them back, and its result naming the worker's paths."""
    staged.mkdir()
    (staged / "00007.tar").write_bytes(b"t" * 10240)
    (staged / "00007.manifest.parquet").write_bytes(b"m")
    worker_side = "/var/lib/ldawt-worker/vine/t.1/out"
    result = {
        "shard_id": "00007",
        "ok": True,
        "tar_path": f"{worker_side}/00007.tar",
        "manifest_path": f"{worker_side}/00007.manifest.parquet",
        "stats_path": f"{worker_side}/00007_stats.json",
        "tar_bytes": 10240,
    }
    (staged / "00007_stats.json").write_text(json.dumps(result))
    return result


def test_files_go_into_place_with_this_sides_paths(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    spec = ShardSpec("00007", str(tmp_path / "in.parquet"), str(out))
    final = commit_outputs(tmp_path / "staged", spec, _returned(tmp_path / "staged"))
    files = spec.files
    assert final["stats_path"] == str(files.stats)
    stats = json.loads(files.stats.read_text())
    assert stats["tar_path"] == str(files.tar) and stats["manifest_path"] == str(files.manifest)
    assert files.tar.stat().st_size == 10240 and files.manifest.read_bytes() == b"m"
    assert not (tmp_path / "staged").exists()
    assert not any(p.name.endswith(".partial") for p in out.iterdir())


def test_a_stats_file_that_cannot_be_written_whole_leaves_no_marker(tmp_path: Path, monkeypatch):
    """The stats file says a shard is complete: a failure while writing it (disk full) must not
    leave one with its final name."""
    out = tmp_path / "out"
    out.mkdir()
    spec = ShardSpec("00007", str(tmp_path / "in.parquet"), str(out))
    returned = _returned(tmp_path / "staged")
    real_fsync = contract.os.fsync

    def full_disk(fd: int) -> None:
        real_fsync(fd)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(contract.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        commit_outputs(tmp_path / "staged", spec, returned)
    assert not spec.files.stats.exists()
    assert not partial_path(spec.files.stats).exists()
