"""Checking a job's shard outputs against its ledger, so a resumed job trusts nothing blindly.

A shard is committed when its stats file exists (the daemon writes tar, manifest, stats in that
order). ``reconcile`` runs before a job (re)starts: ledger-done shards whose files no longer
match go back to ``planned``; shards that committed while no manager was recording them (it was
killed) are adopted after checking their tar; everything else loses its leftover files.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tarfile
from pathlib import Path

import psutil
import pyarrow.parquet as pq

from ldawt.daemon.contract import ShardFiles
from ldawt.daemon.storage import RemotePath

from .job import JOB_ENV, Job, JobRun
from .ledger import DONE, RUNNING, Committed, Ledger, ShardRecord

ORPHAN_EXIT_TIMEOUT_S = 30.0

log = logging.getLogger(__name__)


class NotCommitted(Exception):
    """The shard's outputs are missing or do not match; the message says how."""


def _tar_members(path: Path | RemotePath) -> int:
    with path.open("rb") as handle, tarfile.open(fileobj=handle, mode="r:*") as tar:
        return sum(1 for _ in tar)


def check_committed(
    files: ShardFiles, rows: int, tar_bytes: int | None = None, count_members: bool = False
) -> Committed:
    """The committed outputs of a shard of ``rows`` rows. The tar's size must match
    ``tar_bytes`` (recorded when the shard was verified before) or else the size its stats file
    recorded at commit; ``count_members`` also reads every tar header (for shards no manager
    saw finish), and so does a stats file without a recorded size."""
    try:
        stats = json.loads(files.stats.read_text())
    except FileNotFoundError:
        raise NotCommitted("no stats file") from None
    except (OSError, ValueError) as exc:
        raise NotCommitted(f"unreadable stats file: {exc}") from exc
    if stats.get("rows") != rows:
        raise NotCommitted(f"stats file counts {stats.get('rows')} rows, the plan {rows}")
    try:
        size = files.tar.stat().st_size
        with files.manifest.open("rb") as handle:
            manifest_rows = pq.ParquetFile(handle).metadata.num_rows
    except (OSError, ValueError) as exc:
        raise NotCommitted(f"tar or manifest unreadable: {exc}") from exc
    if manifest_rows != rows:
        raise NotCommitted(f"manifest has {manifest_rows} rows, the plan {rows}")
    expected_size = tar_bytes if tar_bytes is not None else stats.get("tar_bytes")
    if expected_size is not None and size != expected_size:
        raise NotCommitted(f"tar is {size} bytes, {expected_size} when committed")
    if count_members or expected_size is None:
        try:
            members = _tar_members(files.tar)
        except (OSError, tarfile.TarError) as exc:
            raise NotCommitted(f"tar unreadable: {exc}") from exc
        if members != stats.get("members"):
            raise NotCommitted(f"tar has {members} members, stats say {stats.get('members')}")
    return Committed(
        counts=stats.get("counts", {}),
        bytes=stats.get("bytes", 0),
        tar_bytes=size,
        elapsed_s=stats.get("elapsed_s"),
        worker=stats.get("host"),
        started_at=stats.get("started_at"),
    )


def stop_orphans(job: Job) -> list[int]:
    """Kill worker processes a killed manager of this job left running: they would finish
    their shard and race the shard's rerun on the same files. Returns their pids. This
    process's own children (its forkserver from an earlier run of the job) are not orphans."""
    ours = {os.getpid(), *(child.pid for child in psutil.Process().children(recursive=True))}
    orphans = []
    for process in psutil.process_iter():
        if process.pid in ours:
            continue
        try:
            if process.environ().get(JOB_ENV) == str(job.out):
                process.send_signal(signal.SIGKILL)
                orphans.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    psutil.wait_procs(orphans, timeout=ORPHAN_EXIT_TIMEOUT_S)
    return [p.pid for p in orphans]


def recover_interrupted(run: JobRun) -> None:
    """Before running: stop what a killed manager left running, then make the ledger and the
    output folder agree."""
    orphans = stop_orphans(run.job)
    if orphans:
        log.warning(
            f"stopped {len(orphans)} worker process(es) a killed manager of this job left running"
        )
    reconcile(run)


def reconcile(run: JobRun) -> None:
    """Make the ledger and the output folder agree (see the module docstring)."""
    rerun = []
    for shard in run.ledger.shards():
        files = run.files(shard.shard_id)
        if shard.state == DONE:
            try:
                check_committed(files, shard.rows, shard.tar_bytes)
            except NotCommitted:
                files.remove()
                rerun.append(shard.shard_id)
            continue
        if _adopt(run.ledger, shard, files):
            continue
        files.remove()
        if shard.state == RUNNING:
            rerun.append(shard.shard_id)
    run.ledger.mark_planned(rerun)


def _adopt(ledger: Ledger, shard: ShardRecord, files: ShardFiles) -> bool:
    if not files.stats.exists():
        return False
    try:
        committed = check_committed(files, shard.rows, count_members=True)
    except NotCommitted:
        return False
    ledger.mark_done(shard.shard_id, committed)
    return True
