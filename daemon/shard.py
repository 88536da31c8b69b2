"""Run one shard: read its rows, download them, pack the images, write manifest and stats.

``run_shard`` is the function every engine calls (in-process, a local worker process, or a
TaskVine library). It takes a plain dict and returns a plain dict, and it never raises: a
raising function would kill a TaskVine library process together with its warm state.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from . import metrics
from .fetcher import errors
from .fetcher.fetch import Download, Fetcher
from .fetcher.options import FetchOptions
from .packer import partial_path
from .packer.manifest import write_manifest, write_stats
from .packer.names import MemberNamer
from .packer.tarwriter import TarWriter
from .runtime import get_runtime

Progress = Callable[[dict[str, Any]], None]
INPUT_COLUMNS = ("row", "url", "class", "key", "label")
# Optional input column: the job-wide row number of the row in this shard that fetches this row's
# URL. Such a row is not fetched; its manifest row points at the original's outcome.
DUPLICATE_OF = "dup_of"
PROGRESS_INTERVAL_S = 1.0
# Time granted after the shard's own deadline to cancel downloads and commit what is done.
COMMIT_GRACE_S = 120.0


@dataclass(frozen=True)
class ShardSpec:
    shard_id: str
    input_path: str
    output_dir: str
    layout: str = "class"
    compress: bool = False
    passthrough: tuple[str, ...] = ()
    fetch: FetchOptions = field(default_factory=FetchOptions)
    deadline_s: float = 3600.0

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> ShardSpec:
        values = dict(spec)
        values["fetch"] = FetchOptions.from_dict(values.get("fetch") or {})
        values["passthrough"] = tuple(values.get("passthrough") or ())
        return cls(**values)

    @property
    def tar_path(self) -> Path:
        suffix = ".tar.gz" if self.compress else ".tar"
        return Path(self.output_dir) / f"{self.shard_id}{suffix}"

    @property
    def manifest_path(self) -> Path:
        return Path(self.output_dir) / f"{self.shard_id}.manifest.parquet"

    @property
    def stats_path(self) -> Path:
        return Path(self.output_dir) / f"{self.shard_id}_stats.json"

    def remove_outputs(self) -> None:
        """Delete the shard's output files, finished or partial."""
        for path in (self.tar_path, self.manifest_path, self.stats_path):
            path.unlink(missing_ok=True)
            partial_path(path).unlink(missing_ok=True)


def write_shard_input(
    path: Path,
    urls: Sequence[str | None],
    classes: Sequence[str],
    keys: Sequence[str],
    labels: Sequence[int] | None = None,
    first_row: int = 0,
) -> None:
    """Write a shard input file (``INPUT_COLUMNS``) by hand, for ``run_shard`` without the
    planner: rows numbered from ``first_row``, labels 0 unless given."""
    n = len(urls)
    table = pa.table(
        {
            "row": pa.array(range(first_row, first_row + n), pa.int64()),
            "url": pa.array(urls, pa.string()),
            "class": pa.array(classes, pa.string()),
            "key": pa.array(keys, pa.string()),
            "label": pa.array([0] * n if labels is None else labels, pa.int64()),
        }
    )
    pq.write_table(table, path)


def run_shard(spec: dict[str, Any], progress: Progress | None = None) -> dict[str, Any]:
    """Run one shard to completion. Returns the result dict; never raises."""
    started = time.monotonic()
    try:
        shard = ShardSpec.from_dict(spec)
        return get_runtime().call(
            lambda fetcher: process_shard(shard, fetcher, progress),
            shard.fetch,
            timeout=shard.deadline_s + COMMIT_GRACE_S,
        )
    except BaseException as exc:
        metrics.SHARDS_FINISHED.labels("failed").inc()
        return failure_result(spec, exc, started)


def failure_result(spec: Any, exc: BaseException, started: float, context: str = "") -> dict:
    """The result of a shard that failed as a whole (``started``: its ``time.monotonic()``)."""
    error = "".join(traceback.format_exception_only(exc)).strip() or type(exc).__name__
    return {
        "shard_id": str(spec.get("shard_id")) if isinstance(spec, dict) else None,
        "ok": False,
        "error": (context + error)[:2000],
        "elapsed_s": time.monotonic() - started,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


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
        metrics.IMAGES.labels(status).inc()
        if download is not None:
            self.connections_new += download.connections_new
            self.connections_reused += download.connections_reused

    def delta(self, shard_id: str) -> dict[str, Any]:
        """What changed since the previous call."""
        counts = {s: n - self._reported.get(s, 0) for s, n in self.counts.items()}
        report = {
            "shard_id": shard_id,
            "counts": {s: n for s, n in counts.items() if n},
            "bytes": self.bytes - self._reported_bytes,
        }
        self._reported = dict(self.counts)
        self._reported_bytes = self.bytes
        return report


async def process_shard(spec: ShardSpec, fetcher: Fetcher, progress: Progress | None) -> dict:
    """The shard on the daemon's loop. Raises on shard-level failure (run_shard reports it)."""
    started_wall, started = time.time(), time.monotonic()
    metrics.SHARDS_STARTED.inc()
    metrics.LIBRARY_CALLS.inc()
    table = await asyncio.to_thread(pq.read_table, spec.input_path)
    has_duplicates = DUPLICATE_OF in table.column_names
    rows = table.select([*INPUT_COLUMNS, *([DUPLICATE_OF] if has_duplicates else [])]).to_pylist()
    duplicates = _duplicates(rows) if has_duplicates else {}
    passthrough = table.select(list(spec.passthrough)) if spec.passthrough else None
    Path(spec.output_dir).mkdir(parents=True, exist_ok=True)
    metrics.watch_workspace(spec.output_dir)

    tally = _Tally()
    outcomes: list[dict[str, Any] | None] = [None] * len(rows)
    writer = TarWriter(spec.tar_path, spec.compress)
    packer = _Packer(writer, MemberNamer(spec.layout), fetcher)
    reporter = asyncio.create_task(_report_progress(spec.shard_id, tally, progress))
    timed_out = False
    try:
        pending = (index for index in range(len(rows)) if index not in duplicates)

        async def download_rows() -> None:
            for index in pending:
                row = rows[index]
                download = await fetcher.fetch(row["url"], spec.fetch)
                outcome = _manifest_row(row, download)
                if download.status == errors.OK:
                    packer.add(row, download, outcome)
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
                outcomes[index] = _manifest_row(rows[index], None, errors.CANCELLED)
                tally.add(outcomes[index], None)
        await asyncio.to_thread(writer.commit)
        # after the commit: the originals' sha256 are set by the writer thread
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

    await asyncio.to_thread(write_manifest, spec.manifest_path, outcomes, passthrough)
    elapsed = time.monotonic() - started
    result = {
        "shard_id": spec.shard_id,
        "ok": True,
        "error": f"deadline of {spec.deadline_s:g}s passed; unfinished rows cancelled"
        if timed_out
        else None,
        "rows": len(rows),
        "counts": tally.counts,
        "bytes": tally.bytes,
        "members": writer.members,
        "tar_bytes": spec.tar_path.stat().st_size,
        "elapsed_s": elapsed,
        "started_at": started_wall,
        "tar_path": str(spec.tar_path),
        "manifest_path": str(spec.manifest_path),
        "stats_path": str(spec.stats_path),
        "connections_new": tally.connections_new,
        "connections_reused": tally.connections_reused,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    await asyncio.to_thread(write_stats, spec.stats_path, result)
    metrics.SHARDS_FINISHED.labels("done").inc()
    metrics.SHARD_DURATION.observe(elapsed)
    return result


class _Packer:
    """Names members, queues them for the tar writer and hands back budget once written."""

    def __init__(self, writer: TarWriter, namer: MemberNamer, fetcher: Fetcher) -> None:
        self._writer = writer
        self._namer = namer
        self._fetcher = fetcher

    def add(self, row: dict[str, Any], download: Download, outcome: dict[str, Any]) -> None:
        body = download.body
        assert body is not None
        stem = self._namer.stem(row["class"], row["key"])
        member = f"{stem}.{download.extension}"
        outcome["member"] = member

        def written(sha256: str) -> None:  # on the writer thread
            outcome["sha256"] = sha256
            self._fetcher.release(download)

        self._writer.add(member, body, written)
        if self._namer.layout == "webdataset":
            meta = {k: row[k] for k in ("key", "url", "class", "label")}
            self._writer.add(f"{stem}.json", json.dumps(meta, ensure_ascii=False).encode())
            self._writer.add(f"{stem}.cls", str(row["label"]).encode())
        download.body = None  # the writer holds the bytes now


def _manifest_row(
    row: dict[str, Any], download: Download | None, status: str | None = None
) -> dict[str, Any]:
    outcome: dict[str, Any] = {
        "row": row["row"],
        "key": row["key"],
        "url": row["url"],
        "class": row["class"],
        "label": row["label"],
        "status": status or (download.status if download else errors.INTERNAL_ERROR),
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
    fetched = original["status"] == errors.OK
    outcome = _manifest_row(row, None, errors.DUPLICATE if fetched else original["status"])
    outcome.update(
        duplicate_of=original["row"],
        http_status=original.get("http_status"),
        error=None if fetched else f"same URL as row {original['row']}: {original.get('error')}",
        attempts=0,
        sha256=original.get("sha256"),
        content_type=original.get("content_type"),
        member=original.get("member"),
    )
    return outcome


async def _report_progress(shard_id: str, tally: _Tally, progress: Progress | None) -> None:
    if progress is None:
        return
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL_S)
        progress(tally.delta(shard_id))
