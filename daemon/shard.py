"""Run one shard: read its rows, download them, pack the images, write manifest and stats.

``run_shard`` is the function every engine calls (in-process, a local worker process, or a
TaskVine library). It takes a ``ShardSpec`` and returns a ``ShardResult`` (see
``ldawt.daemon.contract``), and it never raises: a raising function would kill a TaskVine
library process together with its warm state.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import tempfile
import time
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from . import metrics
from .contract import (
    DUPLICATE_OF,
    EXPECTED_HASH,
    INPUT_COLUMNS,
    RETRY_ROUND,
    ProgressCallback,
    ProgressDelta,
    ShardResult,
    ShardSpec,
    Status,
    describe_exception,
    failure_result,
)
from .fetcher.fetch import Download, Fetcher
from .fetcher.shares import ShardShares
from .fetcher.throttles import CURRENT_LOG, ThrottleLog
from .packer.manifest import write_manifest, write_stats
from .packer.members import SIZE_FIELDS, MemberPacker
from .packer.tarwriter import TarWriter
from .runtime import get_runtime
from .storage import upload
from .transform.options import TransformOptions
from .transform.stage import TransformResult, transform
from .transform.verify import hash_mismatch

PROGRESS_INTERVAL_S = 1.0
HASH_ON_LOOP_MAX_BYTES = 1 << 20
"""Originals up to this size are hashed on the event loop (about 0.7 ms at 1.4 GB/s), larger
ones in the pixel threads."""
# What a duplicate row shares with the row that fetched its URL.
SHARED_WITH_DUPLICATES = ("sha256", "content_type", "member", *SIZE_FIELDS, "stored_bytes")
# Time granted after the shard's own deadline to cancel downloads and commit what is done.
COMMIT_GRACE_S = 120.0


def run_shard(
    spec: ShardSpec | dict[str, Any], progress: ProgressCallback | None = None
) -> ShardResult:
    """Run one shard to completion (``spec`` as a ``ShardSpec`` or its dict). Returns its
    result; never raises."""
    started = time.monotonic()
    try:
        shard = spec if isinstance(spec, ShardSpec) else ShardSpec.from_dict(spec)
        runtime = get_runtime()
        return runtime.call(
            lambda fetcher: process_shard(shard, fetcher, runtime.pixels, progress),
            shard.fetch,
            timeout=shard.deadline_s + COMMIT_GRACE_S,
        )
    except BaseException as exc:
        metrics.SHARDS_FINISHED.labels("failed").inc()
        return failure_result(shard_id_of(spec), describe_exception(exc), started)


def shard_id_of(spec: Any) -> str | None:
    """The shard id of a spec that may not even parse, for its failure result."""
    if isinstance(spec, ShardSpec):
        return spec.shard_id
    return str(spec.get("shard_id")) if isinstance(spec, dict) else None


class _Tally:
    """Running counts of a shard, for its result and for progress reports."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.bytes = 0
        self.connections_new = 0
        self.connections_reused = 0
        self._reported: dict[str, int] = {}
        self._reported_bytes = 0

    def add(self, outcome: dict[str, Any], download: Download | None) -> None:
        status = outcome["status"]
        self.counts[status] = self.counts.get(status, 0) + 1
        self.bytes += outcome.get("bytes") or 0
        metrics.image_series(status).inc()
        if download is not None:
            self.connections_new += download.connections_new
            self.connections_reused += download.connections_reused

    def delta(self, shard_id: str) -> ProgressDelta:
        """What changed since the previous call."""
        counts = {s: n - self._reported.get(s, 0) for s, n in self.counts.items()}
        report: ProgressDelta = {
            "shard_id": shard_id,
            "counts": {s: n for s, n in counts.items() if n},
            "bytes": self.bytes - self._reported_bytes,
        }
        self._reported = dict(self.counts)
        self._reported_bytes = self.bytes
        return report


async def process_shard(
    spec: ShardSpec, fetcher: Fetcher, pixels: Executor, progress: ProgressCallback | None
) -> ShardResult:
    """The shard on the daemon's loop, its pixel work on ``pixels``. Raises on shard-level
    failure (run_shard reports it). A shard whose output folder is a URL is written to a local
    temporary folder (under ``TMPDIR``, else /tmp; removed after) and its files then uploaded in
    the commit order, the stats file last."""
    if not spec.remote:
        return await _process_shard(spec, fetcher, pixels, progress)
    staging = tempfile.mkdtemp(prefix=f"ldawt-{spec.shard_id}-")
    try:
        local = spec.replace(output_dir=staging, storage_options={})
        return await _process_shard(local, fetcher, pixels, progress, spec.files)
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)


async def _publish(local: ShardSpec, remote: Any, result: ShardResult) -> None:
    """Upload a committed local shard's tar and manifest to ``remote`` (its ``ShardFiles`` at a
    URL), each whole or not at all, before the stats file is written."""
    files = local.files
    await asyncio.to_thread(upload, files.tar, remote.tar)
    await asyncio.to_thread(upload, files.manifest, remote.manifest)
    result.update(
        tar_path=str(remote.tar), manifest_path=str(remote.manifest), stats_path=str(remote.stats)
    )


async def _process_shard(
    spec: ShardSpec,
    fetcher: Fetcher,
    pixels: Executor,
    progress: ProgressCallback | None,
    remote: Any = None,
) -> ShardResult:
    """The shard written to ``spec.output_dir``; with ``remote`` (its files at a URL), uploaded
    there in the commit order."""
    started_wall, started = time.time(), time.monotonic()
    metrics.SHARDS_STARTED.inc()
    metrics.LIBRARY_CALLS.inc()
    table = await asyncio.to_thread(pq.read_table, spec.input_path)
    has_duplicates = DUPLICATE_OF in table.column_names
    optional = [c for c in (DUPLICATE_OF, EXPECTED_HASH) if c in table.column_names]
    if RETRY_ROUND in table.column_names and RETRY_ROUND not in spec.passthrough:
        optional.append(RETRY_ROUND)
    rows = table.select([*INPUT_COLUMNS, *optional]).to_pylist()
    duplicates = _duplicates(rows) if has_duplicates else {}
    passthrough = table.select(list(spec.passthrough)) if spec.passthrough else None
    Path(spec.output_dir).mkdir(parents=True, exist_ok=True)
    metrics.watch_workspace(spec.output_dir)
    files = spec.files

    tally = _Tally()
    throttles = ThrottleLog()
    CURRENT_LOG.set(throttles)  # this task's context: the download tasks below inherit it
    outcomes: list[dict[str, Any] | None] = [None] * len(rows)
    writer = TarWriter(files.tar, spec.compress)
    packer = MemberPacker(writer, spec.layout)
    reporter = asyncio.create_task(_report_progress(spec.shard_id, tally, progress))
    shares = ShardShares(spec.host_shares)
    timed_out = False
    try:
        pending = (index for index in range(len(rows)) if index not in duplicates)

        async def download_rows() -> None:
            for index in pending:
                row = rows[index]
                download = await fetcher.fetch(row["url"], spec.fetch, shares)
                outcome = _manifest_row(row, download)
                if download.status == Status.OK:
                    await _store(spec, row, download, outcome, fetcher, pixels, packer)
                outcomes[index] = outcome
                tally.add(outcome, download)

        workers = min(spec.fetch.concurrency, len(rows)) or 1
        try:
            async with asyncio.timeout(spec.deadline_s):
                await asyncio.gather(*(download_rows() for _ in range(workers)))
        except TimeoutError:
            timed_out = True
        for index, outcome in enumerate(outcomes):
            if outcome is None and index not in duplicates:
                outcomes[index] = _manifest_row(rows[index], None, Status.CANCELLED)
                tally.add(outcomes[index], None)
        await asyncio.to_thread(writer.commit)
        # last: a duplicate copies its original's outcome, complete once every row is done
        for index, original in duplicates.items():
            outcomes[index] = _duplicate_row(rows[index], outcomes[original])
            tally.add(outcomes[index], None)
    except BaseException:
        await asyncio.to_thread(writer.abort)
        raise
    finally:
        reporter.cancel()
    if progress is not None:
        progress(tally.delta(spec.shard_id))

    await asyncio.to_thread(write_manifest, files.manifest, outcomes, passthrough)
    elapsed = time.monotonic() - started
    result = ShardResult(
        shard_id=spec.shard_id,
        ok=True,
        error=f"deadline of {spec.deadline_s:g}s passed; unfinished rows cancelled"
        if timed_out
        else None,
        rows=len(rows),
        counts=tally.counts,
        bytes=tally.bytes,
        members=writer.members,
        tar_bytes=files.tar.stat().st_size,
        elapsed_s=elapsed,
        started_at=started_wall,
        tar_path=str(files.tar),
        manifest_path=str(files.manifest),
        stats_path=str(files.stats),
        connections_new=tally.connections_new,
        connections_reused=tally.connections_reused,
        throttled_hosts=throttles.top(),
        host=socket.gethostname(),
        pid=os.getpid(),
    )
    if remote is not None:
        await _publish(spec, remote, result)
    await asyncio.to_thread(write_stats, files.stats, result)
    if remote is not None:  # last: the mark of a complete shard
        await asyncio.to_thread(upload, files.stats, remote.stats)
    metrics.SHARDS_FINISHED.labels("done").inc()
    metrics.SHARD_DURATION.observe(elapsed)
    return result


async def _store(
    spec: ShardSpec,
    row: dict[str, Any],
    download: Download,
    outcome: dict[str, Any],
    fetcher: Fetcher,
    pixels: Executor,
    packer: MemberPacker,
) -> None:
    """Check, transform (or only measure) and pack one downloaded image. A refused image
    changes the row's status. The downloaded bytes stay charged to the fetcher's budget until
    they are in the tar, so images waiting for the transform count too."""
    body = download.body
    assert body is not None
    expected = row.get(EXPECTED_HASH)
    try:
        if spec.transform.active or expected or len(body) > HASH_ON_LOOP_MAX_BYTES:
            loop = asyncio.get_running_loop()
            image, sha256 = await loop.run_in_executor(
                pixels, _image_stage, body, spec.transform, expected
            )
        else:  # originals as they are: the header alone, microseconds, and the hash
            # On the loop, not by the tar writer's thread: when the loop keeps a core busy, a
            # writer thread taking the GIL back after each hash cost the process about 15% more
            # CPU per image (bench/RESULTS.md); here the bytes are also still in the CPU cache.
            # Larger bodies go to the pixel threads: the loop would stop for milliseconds.
            image, sha256 = _image_stage(body, spec.transform, None)
    except BaseException:
        fetcher.release(download)
        raise
    outcome.update(
        width=image.width,
        height=image.height,
        orig_width=image.orig_width,
        orig_height=image.orig_height,
    )
    if not image.ok:
        outcome.update(status=image.status, error=image.detail)
        fetcher.release(download)
        return
    assert image.data is not None
    outcome["stored_bytes"] = len(image.data)
    outcome["sha256"] = sha256
    extension = image.extension or download.extension or "bin"
    packer.add(row, image.data, extension, outcome, lambda: fetcher.release(download))
    download.body = None  # the writer holds the bytes now


def _image_stage(
    body: bytes, options: TransformOptions, expected: str | None
) -> tuple[TransformResult, str]:
    """The expected-hash check, then the transform (off the loop unless both are cheap).
    Returns the result and, for an image to store, the downloaded bytes' sha256 (the
    manifest's ``sha256`` is always theirs)."""
    if expected:
        mismatch = hash_mismatch(body, expected)
        if mismatch is not None:
            return TransformResult(Status.HASH_MISMATCH, mismatch), ""
    image = transform(body, options)
    return image, hashlib.sha256(body).hexdigest() if image.ok else ""


def _manifest_row(
    row: dict[str, Any], download: Download | None, status: str | None = None
) -> dict[str, Any]:
    outcome: dict[str, Any] = {
        "row": row["row"],
        "key": row["key"],
        "url": row["url"],
        "class": row["class"],
        "label": row["label"],
        "status": status or (download.status if download else Status.INTERNAL_ERROR),
        RETRY_ROUND: row.get(RETRY_ROUND) or 0,
    }
    if download is not None:
        outcome.update(
            http_status=download.http_status,
            error=download.detail or None,
            attempts=download.attempts,
            bytes=len(download.body) if download.body is not None else None,
            content_type=download.content_type,
            elapsed_ms=download.elapsed_ms,
        )
    return outcome


def _duplicates(rows: list[dict[str, Any]]) -> dict[int, int]:
    """Index of each duplicate row -> index of the row fetching its URL. A row whose original
    is not in this shard is fetched itself."""
    index_of = {row["row"]: index for index, row in enumerate(rows)}
    return {
        index: index_of[row[DUPLICATE_OF]]
        for index, row in enumerate(rows)
        if row[DUPLICATE_OF] is not None and row[DUPLICATE_OF] in index_of
    }


def _duplicate_row(row: dict[str, Any], original: dict[str, Any]) -> dict[str, Any]:
    """A duplicate shares the original's member when it was fetched, else its failure."""
    fetched = original["status"] == Status.OK
    outcome = _manifest_row(row, None, Status.DUPLICATE if fetched else original["status"])
    outcome.update(
        duplicate_of=original["row"],
        http_status=original.get("http_status"),
        error=None if fetched else f"same URL as row {original['row']}: {original.get('error')}",
        attempts=0,
        **{k: original.get(k) for k in SHARED_WITH_DUPLICATES},
    )
    return outcome


async def _report_progress(shard_id: str, tally: _Tally, progress: ProgressCallback | None) -> None:
    if progress is None:
        return
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL_S)
        progress(tally.delta(shard_id))
