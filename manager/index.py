"""The job's index: ``OUT/index.parquet``, every input row once, with its latest outcome.

The manifests hold one row per input row of their shard, and ``retry-failed`` adds shards whose
rows are rows of earlier shards again: read together, a retried row appears once per round. The
index is the table of everything with each input row exactly once:

- a row of a committed shard, unless a committed shard of a later round holds the same ``row``
  (the round of a manifest row is its ``retry_round`` column; for manifests written before that
  column existed, or by a retry shard planned before it, the ledger's round of the shard);
- a row of a first-round shard not committed yet (planned, running, or failed as a whole):
  status ``pending``, its ``shard`` the one that will fetch it, read from the shard's input file
  (``OUT/job/shards/<shard>.parquet``), the outcome columns null;
- a row of a retry shard not committed yet keeps its earlier outcome (the failure retried).

Which shards there are, and which are committed, is the ledger's record (``index OUT`` first
checks it against the files, as every run does).

Columns: ``INDEX_SCHEMA`` (``shard`` names the shard whose tar holds ``member``; width and
height are null where the manifest does not know them), then the passthrough columns, named as
in the manifests (``input_<col>`` for a name an index column has).

Format: one parquet file, written as a stream in row groups of ``ROW_GROUP_ROWS`` rows to
``index.parquet.partial``, fsynced and renamed (``write_atomically``): a reader sees the previous
index or the whole new one. Rows come in shard order: the first round's shards (for strategy
``fixed``, input order but for duplicate rows, which sit with their original), then the rows
whose latest outcome is a retry, newest round first. Sort by ``row`` for input order.

Memory does not grow with the job's rows but for two bitmaps of one bit per row (``RowSet``:
12.5 MB each for 10^8 rows); besides them, one shard's manifest and one or two row groups of
``ROW_GROUP_ROWS`` rows at a time, whatever the number of rows, shards or retried rows.
``submit`` and ``retry-failed`` bring the index up to date at their end (skipped when nothing
changed since it was written); ``ldawt-manager index OUT`` rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ldawt.daemon.contract import (
    INPUT_COLUMNS,
    MANIFEST_SCHEMA,
    RETRY_ROUND,
    manifest_column,
    write_atomically,
)
from ldawt.daemon.storage import RemotePath, StorageError, readable, upload

from .errors import InputError
from .job import Job, JobRun, JobSettings
from .ledger import DONE, ShardRecord
from .reconcile import recover_interrupted

log = logging.getLogger(__name__)

PENDING = "pending"
"""The status of a row whose shard has not committed yet (index only, never in a manifest)."""
_FROM_MANIFESTS = ("row", "key", "url", "class", "label", "status", "http_status", "error")
INDEX_SCHEMA = pa.schema(
    [
        *(MANIFEST_SCHEMA.field(name) for name in _FROM_MANIFESTS),
        ("shard", pa.string()),
        *(MANIFEST_SCHEMA.field(name) for name in ("member", "sha256", "width", "height")),
    ]
)
"""The index's columns, followed by the passthrough columns (``index_column``)."""
ROW_GROUP_ROWS = 128 * 1024
FINGERPRINT_KEY = b"ldawt.index.source"
FORMAT_VERSION = 1


def index_column(passthrough: str) -> str:
    """The index's name for a passthrough column: the manifest's, or ``input_<col>`` when an
    index column has that name."""
    name = manifest_column(passthrough)
    return f"input_{passthrough}" if name in INDEX_SCHEMA.names else name


class RowSet:
    """A set of job row numbers (0 .. rows - 1) as a bitmap, one bit per row, grown on demand;
    membership is one vectorised ``take`` per table."""

    def __init__(self, rows: int) -> None:
        self._bits = bytearray((max(rows, 0) + 7) // 8)
        self._array = self._wrap()
        self.size = 0

    def _wrap(self) -> pa.BooleanArray:
        buffer = pa.py_buffer(self._bits)  # shares the bytearray: later bits show through
        return pa.BooleanArray.from_buffers(pa.bool_(), len(self._bits) * 8, [None, buffer])

    def _reach(self, row: int) -> None:
        if row >= len(self._bits) * 8:
            grown = bytearray(row // 8 + 1)
            grown[: len(self._bits)] = self._bits
            self._bits = grown
            self._array = self._wrap()

    def add(self, rows: pa.Array | pa.ChunkedArray) -> None:
        values = rows.to_pylist()
        if not values:
            return
        self._reach(max(values))
        bits = self._bits
        for row in values:
            bits[row >> 3] |= 1 << (row & 7)
        self.size += len(values)

    def without(self, table: pa.Table) -> pa.Table:
        """``table`` without the rows whose ``row`` is in the set."""
        if not self.size or not table.num_rows:
            return table
        rows = table.column("row")
        self._reach(pc.max(rows).as_py())
        return table.filter(pc.invert(pc.take(self._array, rows)))


@dataclass
class IndexSummary:
    path: Path
    rows: int = 0
    pending: int = 0

    def add(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        self.pending += pc.sum(pc.equal(table.column("status"), PENDING)).as_py() or 0

    def describe(self) -> str:
        pending = (
            f" ({self.pending:,} pending: their shards are not done yet)" if self.pending else ""
        )
        return f"index: {self.rows:,} rows, one per input row, in {self.path}{pending}"


def write_index(run: JobRun, force: bool = True) -> IndexSummary | None:
    """Write the job's index from its ledger's shards and their manifests. Unless ``force``,
    returns None without writing when the index was written from the same committed shards."""
    shards = run.ledger.shards()
    path = run.job.index_path
    fingerprint = _fingerprint(run, shards)
    if not force and _recorded_fingerprint(path) == fingerprint:
        return None
    schema = _schema(run, shards).with_metadata({FINGERPRINT_KEY: fingerprint})
    summary = IndexSummary(path)

    def write(partial: Path) -> None:
        with pq.ParquetWriter(partial, schema) as writer:
            for table in _row_groups(_index_tables(run, shards, schema)):
                summary.add(table)
                writer.write_table(table, row_group_size=ROW_GROUP_ROWS)

    write_atomically(path, write)
    if run.job.output is not None:  # beside the shards too, for those who read them there
        upload(path, RemotePath.of(f"{run.job.output}/{path.name}", run.job.storage_options))
    return summary


def update_index(run: JobRun) -> None:
    """At the end of a run: bring the index up to date. A failure is a warning (the run's work
    is safe either way), naming the command that rebuilds it."""
    path = run.job.index_path
    if run.ledger.reserve_used:  # the disk is full: the ledger needed its reserve
        log.warning(f"{path} is not up to date (the disk is full); the next run does it")
        return
    try:
        summary = write_index(run, force=False)
    except (OSError, pa.ArrowException, StorageError) as exc:
        log.warning(
            f"{path} is not up to date: {exc}; `ldawt-manager index {run.job.out}` rebuilds it"
        )
        return
    if summary is not None:
        log.info(summary.describe())


def rebuild_index(out: Path) -> IndexSummary:
    """``ldawt-manager index OUT``: check the shard files against the ledger, as a run does
    first, then write the index afresh."""
    job = Job.existing(out)
    with job.lock(), job.open_ledger() as ledger:
        run = JobRun(job, ledger, JobSettings.load(ledger))
        recover_interrupted(run)
        try:
            summary = write_index(run)
        except (OSError, pa.ArrowException, StorageError) as exc:
            raise InputError(
                f"cannot write the index of the job in {job.out}: {exc}; if a shard file is "
                "damaged, rerun the job's submit command, which fetches such shards again"
            ) from exc
    assert summary is not None
    log.info(summary.describe())
    return summary


# --- what goes in ----------------------------------------------------------------------------


def _fingerprint(run: JobRun, shards: list[ShardRecord]) -> str:
    """What the index is made of: the committed shards (as verified) and the planned ones."""
    source = [
        FORMAT_VERSION,
        list(run.settings.passthrough),
        [
            [s.shard_id, s.round, s.state == DONE]
            + ([s.finished_at, s.tar_bytes] if s.state == DONE else [])
            for s in shards
        ],
    ]
    return hashlib.sha256(json.dumps(source).encode()).hexdigest()


def _recorded_fingerprint(path: Path) -> str | None:
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException):
        return None
    value = metadata.get(FINGERPRINT_KEY)
    return value.decode() if value is not None else None


def _schema(run: JobRun, shards: list[ShardRecord]) -> pa.Schema:
    """``INDEX_SCHEMA`` and the passthrough columns, typed as in the shard inputs."""
    passthrough = run.settings.passthrough
    inputs = pa.schema([])
    if passthrough and shards:
        inputs = pq.read_schema(run.job.out / shards[0].input_path)
    fields = list(INDEX_SCHEMA)
    for name in passthrough:
        kind = inputs.field(name).type if name in inputs.names else pa.string()
        fields.append(pa.field(index_column(name), kind))
    return pa.schema(fields)


def _index_tables(run: JobRun, shards: list[ShardRecord], schema: pa.Schema) -> Iterator[pa.Table]:
    """The index's rows, shard by shard (see the module docstring)."""
    rows = (run.ledger.meta("plan") or {}).get("rows", 0)
    retries = [s for s in shards if s.round > 0 and s.state == DONE]
    rounds: dict[str, int] = {}
    retried = RowSet(rows)  # rows of every committed retry shard
    for shard in retries:
        table = _read(run.files(shard.shard_id).manifest, ["row", RETRY_ROUND])
        recorded = (
            pc.max(table.column(RETRY_ROUND)).as_py() if RETRY_ROUND in table.schema.names else None
        )
        # 0 or absent: a manifest of a shard planned before the column existed
        rounds[shard.shard_id] = recorded or shard.round
        retried.add(table.column("row"))
    for shard in shards:
        if shard.round == 0:
            table = (
                _outcomes(run, shard, schema)
                if shard.state == DONE
                else _pending(run, shard, schema)
            )
            yield retried.without(table)
    later = RowSet(rows)  # rows of the retry rounds already written: a round's rows are disjoint
    for shard in sorted(retries, key=lambda s: (-rounds[s.shard_id], s.shard_id)):
        table = _outcomes(run, shard, schema)
        yield later.without(table)
        later.add(table.column("row"))


def _read(path: Path, columns: Iterable[str]) -> pa.Table:
    """The ``columns`` of a parquet file that it has."""
    file = pq.ParquetFile(readable(path))
    present = set(file.schema_arrow.names)
    return file.read(columns=[c for c in columns if c in present])


def _outcomes(run: JobRun, shard: ShardRecord, schema: pa.Schema) -> pa.Table:
    """A committed shard's manifest as index rows."""
    stored = {index_column(c): manifest_column(c) for c in run.settings.passthrough}
    wanted = {name: stored.get(name, name) for name in schema.names if name != "shard"}
    table = _read(run.files(shard.shard_id).manifest, wanted.values())
    return _conform(table, schema, wanted, shard.shard_id)


def _pending(run: JobRun, shard: ShardRecord, schema: pa.Schema) -> pa.Table:
    """An uncommitted shard's input rows as index rows, status ``pending``."""
    given = {index_column(c): c for c in run.settings.passthrough}
    wanted = {
        name: given.get(name, name) for name in (*INPUT_COLUMNS, *given)
    }  # what a pending row has
    table = _read(run.job.out / shard.input_path, wanted.values())
    status = pa.repeat(pa.scalar(PENDING), table.num_rows)
    return _conform(
        table.append_column("status", status),
        schema,
        {**wanted, "status": "status"},
        shard.shard_id,
    )


def _conform(table: pa.Table, schema: pa.Schema, names: dict[str, str], shard_id: str) -> pa.Table:
    """``table`` in the index's columns: ``names`` maps index columns to ``table``'s; the
    ``shard`` column says ``shard_id``; columns ``table`` lacks are null."""
    n = table.num_rows
    arrays = []
    for field in schema:
        source = names.get(field.name)
        if field.name == "shard":
            arrays.append(pa.repeat(pa.scalar(shard_id), n))
        elif source is not None and source in table.column_names:
            arrays.append(table.column(source).cast(field.type))
        else:
            arrays.append(pa.nulls(n, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _row_groups(tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
    """``tables`` regrouped into whole row groups of ``ROW_GROUP_ROWS`` rows (the last one
    shorter)."""
    held: list[pa.Table] = []
    count = 0
    for table in tables:
        if not table.num_rows:
            continue
        held.append(table)
        count += table.num_rows
        if count >= ROW_GROUP_ROWS:
            combined = pa.concat_tables(held)
            cut = count - count % ROW_GROUP_ROWS
            yield combined.slice(0, cut)
            rest = combined.slice(cut)
            held, count = ([rest] if rest.num_rows else []), rest.num_rows
    if held:
        yield pa.concat_tables(held)
