"""Shards written straight to object storage (``submit --out s3://... --job-dir DIR``), against
a real S3-protocol server on 127.0.0.1 (moto's), with the manager as a subprocess."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import tarfile
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from manager_support import WAIT_LIMIT_S, manager_command, running_origin, url_table, wait_for
from s3_support import (
    KEY,
    PART_BYTES,
    S3Server,
    running_s3,
    running_s3_checking_credentials,
)

from ldawt.manager.job import JOB_ENV

IMAGE_BYTES = 200_000
SHARD_SIZE = 40  # 40 images of 200 kB: a tar of 8 MB, more than one 5 MiB part


@pytest.fixture(scope="module")
def s3() -> S3Server:
    with running_s3() as server:
        yield server


def _run(env: dict[str, str], *args: str | Path, timeout: float = WAIT_LIMIT_S):
    return subprocess.run(
        manager_command(*args), capture_output=True, text=True, timeout=timeout, env=env
    )


def _submit_args(table: Path, url: str, job_dir: Path, *extra: str | Path) -> list[str | Path]:
    return [
        "submit",
        table,
        "--out",
        url,
        "--job-dir",
        job_dir,
        "--storage-options",
        json.dumps({"default_block_size": PART_BYTES}),
        "--allow-private",
        "--shard-size",
        str(SHARD_SIZE),
        "--engine",
        "local",
        "--workers",
        "2",
        "--concurrency",
        "8",
        *extra,
    ]


def _table(tmp_path: Path, origin, rows: int, gone_every: int = 10) -> Path:
    urls = [
        origin.url("gone" if i % gone_every == gone_every - 1 else "img", i) for i in range(rows)
    ]
    return url_table(tmp_path / "urls.parquet", urls)


def _shard_objects(s3: S3Server, bucket: str, prefix: str) -> dict[str, dict]:
    """The shards' objects under ``prefix`` (the job's index.parquet beside them left out)."""
    return {
        k[len(prefix) + 1 :]: v
        for k, v in s3.objects(bucket).items()
        if k.startswith(prefix) and k != f"{prefix}/index.parquet"
    }


def _check_shards(s3: S3Server, bucket: str, prefix: str, shards: int, rows: int) -> list[int]:
    """Every shard's three objects are there and agree; returns the rows of all manifests."""
    client = s3.client()
    objects = _shard_objects(s3, bucket, prefix)
    assert sorted(objects) == sorted(
        f"{i:05d}{suffix}"
        for i in range(shards)
        for suffix in (".tar", ".manifest.parquet", "_stats.json")
    ), sorted(objects)
    all_rows = []
    for i in range(shards):
        stem = f"{prefix}/{i:05d}"
        stats = json.loads(
            client.get_object(Bucket=bucket, Key=f"{stem}_stats.json")["Body"].read()
        )
        tar_bytes = client.get_object(Bucket=bucket, Key=f"{stem}.tar")["Body"].read()
        assert stats["tar_bytes"] == len(tar_bytes)
        assert stats["tar_path"] == f"s3://{bucket}/{stem}.tar"
        manifest = pq.read_table(
            io.BytesIO(
                client.get_object(Bucket=bucket, Key=f"{stem}.manifest.parquet")["Body"].read()
            )
        )
        with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
            members = sorted(tar.getnames())
        ok = [r["member"] for r in manifest.to_pylist() if r["status"] == "ok"]
        assert sorted(ok) == members
        all_rows += manifest.column("row").to_pylist()
    assert sorted(all_rows) == list(range(rows))
    return all_rows


def test_shards_larger_than_a_part_are_uploaded_and_resume_checks_the_objects(
    tmp_path: Path, s3: S3Server
):
    bucket = s3.create_bucket("big-shards")
    rows, shards = 3 * SHARD_SIZE, 3
    with running_origin(image_bytes=IMAGE_BYTES) as origin:
        table = _table(tmp_path, origin, rows)
        job_dir = tmp_path / "job"
        url = f"s3://{bucket}/run1"
        parts_before = s3.parts_seen
        done = _run(s3.env(), *_submit_args(table, url, job_dir))
        assert done.returncode == 0, done.stderr
        assert s3.parts_seen - parts_before >= 2 * shards  # each tar went up in several parts
        _check_shards(s3, bucket, "run1", shards, rows)
        tar = s3.objects(bucket)["run1/00000.tar"]
        assert tar["Size"] > PART_BYTES and "-" in tar["ETag"]  # a completed multipart upload
        assert not s3.uploads_in_progress(bucket)
        # the job folder is local; nothing of the shards is there
        assert (job_dir / "job" / "ledger.sqlite").exists()
        assert not list(job_dir.glob("*.tar"))
        index = pq.read_table(job_dir / "index.parquet")
        assert sorted(index.column("row").to_pylist()) == list(range(rows))
        uploaded = s3.client().get_object(Bucket=bucket, Key="run1/index.parquet")["Body"].read()
        assert pq.read_table(io.BytesIO(uploaded)).equals(index)  # beside the shards too

        # commands taking the job folder find the objects
        status = _run(s3.env(), "status", job_dir)
        assert status.returncode == 0 and "3" in status.stdout, status.stderr
        report = _run(s3.env(), "report", job_dir, "--json")
        assert report.returncode == 0, report.stderr
        rebuilt = _run(s3.env(), "index", job_dir)
        assert rebuilt.returncode == 0, rebuilt.stderr

        # resume: all objects check out, nothing is fetched again
        hits = sum(origin.hits.values())
        again = _run(s3.env(), *_submit_args(table, url, job_dir))
        assert again.returncode == 0, again.stderr
        assert sum(origin.hits.values()) == hits
        # a tar that lost its object (or has another size) is run again
        s3.client().delete_object(Bucket=bucket, Key="run1/00001.tar")
        third = _run(s3.env(), *_submit_args(table, url, job_dir))
        assert third.returncode == 0, third.stderr
        assert sum(origin.hits.values()) == hits + SHARD_SIZE
        _check_shards(s3, bucket, "run1", shards, rows)

        # retry-failed takes the job folder and uploads its round's shards too
        retried = _run(s3.env(), "retry-failed", job_dir, "--status", "http_404")
        assert retried.returncode == 0, retried.stderr
        gone = [i for i in range(rows) if i % 10 == 9]
        assert origin.hits[f"/gone/{gone[0]}.jpg"] == 2
        index = pq.read_table(job_dir / "index.parquet").to_pylist()
        assert sorted(r["row"] for r in index) == list(range(rows))  # each row once
        retry_shards = {r["shard"] for r in index if r["row"] in gone}
        objects = s3.objects(bucket)
        assert all(f"run1/{shard}_stats.json" in objects for shard in retry_shards)


def _job_processes(job_dir: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(JOB_ENV) == str(job_dir.resolve()):
                found.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


@pytest.mark.parametrize("victims", ["workers", "whole job"])
def test_kill_9_mid_upload_then_resume(tmp_path: Path, s3: S3Server, victims: str):
    """kill -9 while a tar's multipart upload is in progress (its parts are slowed down): of
    the worker processes alone (the manager runs the shards again), or of the manager and its
    workers (a rerun resumes). No object is ever visible in part; every row ends up once."""
    bucket = s3.create_bucket(f"killed-{victims.replace(' ', '-')}")
    rows, shards = 4 * SHARD_SIZE, 4
    with running_origin(image_bytes=IMAGE_BYTES) as origin:
        table = _table(tmp_path, origin, rows)
        job_dir = tmp_path / "job"
        url = f"s3://{bucket}/out"
        s3.slow_parts_s = 1.0
        log = tmp_path / "manager.log"
        with open(log, "wb") as handle:
            process = subprocess.Popen(
                manager_command(*_submit_args(table, url, job_dir)),
                env=s3.env(),
                stdout=handle,
                stderr=handle,
            )
        try:
            wait_for(lambda: bool(s3.uploads_in_progress(bucket)), "an upload to start", process)
            manager = psutil.Process(process.pid)
            targets = manager.children(recursive=True)
            if victims == "whole job":
                targets = [manager, *targets]
            for victim in targets:
                victim.send_signal(signal.SIGKILL)
            # what is visible right after the kill: whole objects only, no stats without its
            # tar and manifest; the killed upload stays incomplete (never completed)
            seen = _shard_objects(s3, bucket, "out")
            assert not [k for k in seen if "partial" in k], seen
            for i in range(shards):
                if f"{i:05d}_stats.json" in seen:
                    assert {f"{i:05d}.tar", f"{i:05d}.manifest.parquet"} <= set(seen)
            assert s3.uploads_in_progress(bucket)
            s3.slow_parts_s = 0.0
            if victims == "workers":  # the manager runs the killed shards again itself
                assert process.wait(timeout=WAIT_LIMIT_S) == 0, log.read_text()
            else:
                process.wait()
        finally:
            s3.slow_parts_s = 0.0
            if process.poll() is None:
                process.kill()
        wait_for(lambda: not _job_processes(job_dir), "the job's processes to exit")
        resumed = _run(s3.env(), *_submit_args(table, url, job_dir))
        assert resumed.returncode == 0, resumed.stderr
        all_rows = _check_shards(s3, bucket, "out", shards, rows)
        assert len(all_rows) == len(set(all_rows)) == rows  # every row exactly once
        index = pq.read_table(job_dir / "index.parquet")
        assert sorted(index.column("row").to_pylist()) == list(range(rows))


def test_a_missing_bucket_is_one_clear_error_before_any_shard_runs(tmp_path: Path, s3: S3Server):
    with running_origin() as origin:
        table = _table(tmp_path, origin, 20)
        options = {"endpoint_url": s3.endpoint, "key": KEY, "secret": "x"}
        env = {k: v for k, v in s3.env().items() if not k.startswith("AWS_")}
        env["AWS_EC2_METADATA_DISABLED"] = "true"
        done = _run(
            env,
            "submit",
            table,
            "--out",
            "s3://no-such-bucket/prefix",
            "--job-dir",
            tmp_path / "job",
            "--storage-options",
            json.dumps(options),
            "--allow-private",
        )
        assert done.returncode == 2, done.stderr
        assert "bucket does not exist" in done.stderr, done.stderr
        assert done.stderr.count("ldawt:") == 1, done.stderr
        assert not origin.hits


def test_no_credentials_at_all_is_one_clear_error(tmp_path: Path, s3: S3Server):
    bucket = s3.create_bucket("nocreds")
    with running_origin() as origin:
        table = _table(tmp_path, origin, 20)
        env = {
            k: v
            for k, v in s3.env().items()
            if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        }
        env.update(
            AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
            AWS_CONFIG_FILE=str(tmp_path / "none"),
        )
        done = _run(
            env, "submit", table, "--out", f"s3://{bucket}/p", "--job-dir", tmp_path / "job"
        )
        assert done.returncode == 2, done.stderr
        assert "credentials" in done.stderr, done.stderr
        assert not origin.hits


def test_wrong_credentials_are_one_clear_error(tmp_path: Path):
    with running_s3_checking_credentials() as s3, running_origin() as origin:
        table = _table(tmp_path, origin, 20)
        done = _run(
            s3.env(), "submit", table, "--out", "s3://some-bucket/p", "--job-dir", tmp_path / "job"
        )
        assert done.returncode == 2, done.stderr
        assert "access denied" in done.stderr or "credentials" in done.stderr, done.stderr
        assert not origin.hits


def test_a_url_out_needs_a_job_dir(tmp_path: Path):
    done = _run(
        {**S3Server("http://127.0.0.1:1").env()},
        "submit",
        tmp_path / "urls.parquet",
        "--out",
        "s3://bucket/prefix",
    )
    assert done.returncode == 2
    assert "--job-dir" in done.stderr


def test_a_failed_upload_is_aborted_not_completed(tmp_path: Path, s3: S3Server, monkeypatch):
    """A read error after the first part went up: the multipart upload is aborted, no object
    appears; the same upload without the error completes."""
    from ldawt.daemon import storage

    bucket = s3.create_bucket("aborted")
    local = tmp_path / "big.tar"
    local.write_bytes(b"x" * (3 * PART_BYTES))
    options = {"endpoint_url": s3.endpoint, "key": KEY, "secret": "s", "skip_instance_cache": True}
    remote = storage.RemotePath.of(
        f"s3://{bucket}/big.tar", {**options, "default_block_size": PART_BYTES}
    )

    class Failing(io.BytesIO):
        def read(self, size: int = -1) -> bytes:
            if self.tell() >= PART_BYTES:
                raise OSError("disk gone")
            return super().read(size)

    monkeypatch.setattr(storage, "open", lambda *a, **k: Failing(local.read_bytes()), raising=False)
    parts_before = s3.parts_seen
    with pytest.raises(OSError, match="disk gone"):
        storage.upload(local, remote)
    assert s3.parts_seen > parts_before  # a part had gone up
    assert "big.tar" not in s3.objects(bucket)
    assert not s3.uploads_in_progress(bucket)  # aborted
    monkeypatch.undo()
    storage.upload(local, remote)
    assert s3.objects(bucket)["big.tar"]["Size"] == 3 * PART_BYTES
