"""TaskVine workers uploading shard files straight to object storage (a real S3-protocol server,
moto's, on 127.0.0.1): nothing but the result comes back to the manager. Run inside the Debian 13
root: ``bash tests/debian13/root.sh run python -m pytest -q -m taskvine -k object_storage``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from manager_support import WAIT_LIMIT_S, manager_command, running_origin, url_table
from metrics_support import free_port
from s3_support import KEY, PART_BYTES, SECRET, S3Server, running_s3
from shard_input import write_shard_input
from test_object_storage import IMAGE_BYTES, SHARD_SIZE, _check_shards
from test_taskvine_engine import descendants, stop_tree
from vine_helpers import start_vine_worker, stop_process

from ldawt.daemon.contract import FetchOptions, ShardSpec
from ldawt.manager.engines.taskvine import TaskVineEngine
from ldawt.manager.engines.vine_options import VineOptions

pytestmark = [pytest.mark.taskvine, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with running_s3() as server:
        yield server


def test_object_storage_submit_with_local_taskvine_workers(tmp_path: Path, s3: S3Server):
    """``submit --engine taskvine --local-workers 2 --out s3://...``: credentials and endpoint
    from the AWS_* variables, which the local workers inherit."""
    bucket = s3.create_bucket("vine-local")
    rows, shards = 3 * SHARD_SIZE, 3
    with running_origin(image_bytes=IMAGE_BYTES) as origin:
        table = url_table(tmp_path / "urls.parquet", [origin.url("img", i) for i in range(rows)])
        job_dir = tmp_path / "job"
        args = [
            "submit",
            table,
            "--out",
            f"s3://{bucket}/out",
            "--job-dir",
            job_dir,
            "--storage-options",
            json.dumps({"default_block_size": PART_BYTES}),
            "--allow-private",
            "--shard-size",
            str(SHARD_SIZE),
            "--concurrency",
            "8",
            "--engine",
            "taskvine",
            "--local-workers",
            "2",
            "--library-memory-mb",
            "300",
            "--library-disk-mb",
            "300",
        ]
        done = subprocess.run(
            manager_command(*args),
            capture_output=True,
            text=True,
            timeout=WAIT_LIMIT_S,
            env=s3.env(),
        )
        assert done.returncode == 0, done.stderr
    _check_shards(s3, bucket, "out", shards, rows)
    assert s3.objects(bucket)["out/00000.tar"]["Size"] > PART_BYTES
    assert not s3.uploads_in_progress(bucket)
    assert not list(job_dir.glob("*.tar"))
    incoming = job_dir / "job" / "taskvine" / "incoming"
    assert not incoming.exists() or not any(incoming.iterdir())


def test_object_storage_remote_worker_gets_the_input_and_uploads_itself(
    tmp_path: Path, s3: S3Server
):
    """A vine_worker that does not share the manager's files (the engine has a port, no
    --shared-output): its shard input goes to it as a declared input, its files go straight
    to the bucket, with the endpoint and credentials from the spec's storage options."""
    bucket = s3.create_bucket("vine-remote")
    rows, shards = 2 * SHARD_SIZE, 2
    with running_origin(image_bytes=IMAGE_BYTES) as origin:
        specs = _specs(tmp_path, origin, bucket, s3, shards)
        port = free_port()
        engine = TaskVineEngine(VineOptions(port=port, library_memory_mb=300, library_disk_mb=300))
        worker = start_vine_worker(port, tmp_path / "w0")
        try:
            results = list(engine.run(specs, lambda delta: None))
        finally:
            stop_process(worker)
    assert all(r["ok"] for r in results), [r.get("error") for r in results]
    assert {r["tar_path"] for r in results} == {
        f"s3://{bucket}/out/{s:05d}.tar" for s in range(shards)
    }
    _check_shards(s3, bucket, "out", shards, rows)
    assert not s3.uploads_in_progress(bucket)


def _kill_when_uploading(worker_pid: int, s3_port: int, found: list, deadline_s: float) -> None:
    """Once a library under the worker talks to the S3 server (its shard's tar upload has
    begun: the library uploads nothing else before it), kill -9 the worker and everything under
    it, like a machine that dies; note (library pid, pids killed) in ``found``."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        under = descendants(worker_pid)
        for lib in under:
            with contextlib.suppress(psutil.Error, OSError):
                if any(c.raddr and c.raddr.port == s3_port for c in lib.net_connections("tcp")):
                    os.kill(worker_pid, signal.SIGKILL)
                    for p in under:
                        with contextlib.suppress(psutil.Error):
                            p.kill()
                    found.append(lib.pid)
                    return
        time.sleep(0.01)


def test_object_storage_worker_killed_mid_upload_shard_reruns_elsewhere(
    tmp_path: Path, s3: S3Server
):
    """kill -9 of a vine_worker (and its libraries) while its shard's tar is being uploaded
    (parts slowed down): the shard runs again on the other worker; every object is whole, every
    row once."""
    bucket = s3.create_bucket("vine-killed")
    rows, shards = 4 * SHARD_SIZE, 4
    with running_origin(image_bytes=IMAGE_BYTES) as origin:
        specs = _specs(tmp_path, origin, bucket, s3, shards)
        port = free_port()
        engine = TaskVineEngine(VineOptions(port=port, library_memory_mb=300, library_disk_mb=300))
        workers = [start_vine_worker(port, tmp_path / f"w{i}") for i in range(2)]
        found: list[int] = []
        s3.slow_parts_s = 1.0
        s3_port = int(s3.endpoint.rsplit(":", 1)[1])
        killer = threading.Thread(
            target=_kill_when_uploading, args=(workers[0].pid, s3_port, found, 120.0)
        )
        killer.start()
        try:
            results = list(engine.run(specs, lambda delta: None))
        finally:
            s3.slow_parts_s = 0.0
            killer.join()
            for worker in workers:
                stop_tree(worker)
    assert found, "the worker was never seen uploading"
    assert all(r["ok"] for r in results), [r.get("error") for r in results]
    assert found[0] not in {r["pid"] for r in results}  # its shard committed elsewhere
    _check_shards(s3, bucket, "out", shards, rows)


def _specs(tmp_path: Path, origin, bucket: str, s3: S3Server, shards: int) -> list[ShardSpec]:
    options = {
        "endpoint_url": s3.endpoint,
        "key": KEY,
        "secret": SECRET,
        "default_block_size": PART_BYTES,
    }
    shard_dir = tmp_path / "job" / "shards"
    shard_dir.mkdir(parents=True)
    specs = []
    for s in range(shards):
        numbers = range(s * SHARD_SIZE, (s + 1) * SHARD_SIZE)
        path = shard_dir / f"{s:05d}.parquet"
        write_shard_input(
            path,
            [origin.url("img", n) for n in numbers],
            [f"c{n % 3}" for n in numbers],
            [str(n) for n in numbers],
            [n % 3 for n in numbers],
            numbers[0],
        )
        specs.append(
            ShardSpec(
                f"{s:05d}",
                str(path),
                f"s3://{bucket}/out",
                fetch=FetchOptions(allow_private=True, retries=0, concurrency=8),
                deadline_s=120.0,
                storage_options=options,
            )
        )
    return specs
