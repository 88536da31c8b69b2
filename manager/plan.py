"""Planning: turn rows into shard input files, in bounded memory.

Each shard input is a small parquet file with the columns the daemon reads (``row``, ``url``,
``class``, ``key``, ``label``, ``dup_of``) plus the passthrough columns, sorted by ``row``.

Duplicate URLs are found without holding every URL in memory, in three passes over spill files:

1. rows are spread over partitions by a hash of their URL (rows of one URL meet in one partition;
   with ``group_by_host``, a hash of their host, so rows of one host meet too);
2. each partition, sorted by URL, marks every repeat of a URL with ``dup_of`` (the first row of the
   URL) and gives every row its shard key, a duplicate taking its original's key so that both land
   in the same shard; rows then go to blocks by key;
3. blocks, in key order, are sorted and cut into shards, numbered in that order.

Memory is bounded by the size of a partition or a block, not by the row count. The result does not
depend on the partitioning (a per-process string hash) nor on batch sizes: the same rows and
options always give the same shards.

With ``group_by_host`` the partitions are ranges of a CRC-32 of the host, and positions are
renumbered partition after partition, host by host in hash order, so that the result does not
depend on the partitioning either. All rows of a host fall in one partition, so a host of more
rows than a partition holds is read whole: memory then follows the largest host.

The rows each shard holds of each host go to a host counts file (``hosts.HostCounter``), which
the manager's job-wide per-host limits read.

Shard keys: strategy ``fixed`` cuts the rows into runs of ``shard_size`` consecutive rows (in
input order, or host by host with ``group_by_host``);
strategy ``class`` assigns whole classes greedily (largest first, to the smallest group) to
``groups`` groups of near-equal size, one shard each, like the seed's SplitParquet.
"""

from __future__ import annotations

import heapq
import math
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ldawt.daemon.contract import DUPLICATE_OF, INPUT_COLUMNS, FetchOptions, TransformOptions

from .errors import InputError
from .hosts import HostCounter, counts_path, host_buckets, host_hashes, hosts_of
from .inputs import UNKNOWN_CLASS, blank_mask
from .spill import Spill

STRATEGIES = ("fixed", "class")
SHARD_COLUMNS = (*INPUT_COLUMNS, DUPLICATE_OF)
# Rows per partition and per block: bounds the planner's memory (about 600 MB at most). Past
# MAX_SPILL_FILES files at once (open file limits), partitions and blocks grow instead.
SPILL_ROWS = 200_000
MAX_SPILL_FILES = 768
_KEY = "_key"
_POSITION = "_position"  # dense stream order: rows of a retry round are not dense


def spill_buckets(rows: int) -> int:
    """Spill files for about ``rows`` rows: SPILL_ROWS each, at most MAX_SPILL_FILES."""
    return min(MAX_SPILL_FILES, max(1, math.ceil(rows / SPILL_ROWS)))


@dataclass(frozen=True)
class PlanOptions:
    shard_size: int = 5000
    strategy: str = "fixed"
    groups: int | None = None
    """Strategy ``class``: the number of groups (shards); default rows / shard_size."""
    layout: str = "class"
    compress: bool = False
    group_by_host: bool = False
    """Strategy ``fixed``: rows ordered host by host before they are cut, so that each host's
    rows land in as few shards as possible."""
    deadline_s: float = 3600.0
    fetch: FetchOptions = field(default_factory=FetchOptions)
    transform: TransformOptions = field(default_factory=TransformOptions)

    def shaping(self) -> dict[str, Any]:
        """The options that decide which rows go where and how outputs look; a job keeps them.
        The transform and group_by_host appear only when they are not the default, so jobs
        planned before they existed resume."""
        shaping: dict[str, Any] = {
            "shard_size": self.shard_size,
            "strategy": self.strategy,
            "groups": self.groups,
            "layout": self.layout,
            "compress": self.compress,
        }
        if self.group_by_host:
            shaping["group_by_host"] = True
        if self.transform != TransformOptions():
            shaping["transform"] = self.transform.to_dict()
        return shaping

    @classmethod
    def from_shaping(cls, shaping: dict[str, Any], **run: Any) -> PlanOptions:
        """The options a job recorded (``shaping()``), with ``run``'s (fetch, deadline_s)."""
        values = dict(shaping, **run)
        values["transform"] = TransformOptions.from_dict(values.get("transform") or {})
        return cls(**values)


@dataclass(frozen=True)
class PlannedShard:
    shard_id: str
    input_path: Path
    rows: int


@dataclass
class PlanStats:
    rows: int = 0
    bad_url: int = 0
    duplicates: int = 0
    classes: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "bad_url": self.bad_url,
            "duplicates": self.duplicates,
            "classes": len(self.classes),
            "unknown_class": self.classes.get(UNKNOWN_CLASS, 0),
        }


def balance_classes(counts: dict[str, int], groups: int) -> dict[str, int]:
    """Class -> group: whole classes, largest first, each to the group with fewest rows."""
    heap = [(0, group) for group in range(groups)]
    assignment: dict[str, int] = {}
    for name, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        size, group = heapq.heappop(heap)
        assignment[name] = group
        heapq.heappush(heap, (size + count, group))
    return assignment


def _sort_by_url(table: pa.Table) -> pa.Table:
    return table.take(pc.sort_indices(table, [("url", "ascending"), ("row", "ascending")]))


def _mark_duplicates(table: pa.Table) -> pa.Table:
    """Sort a partition by URL and set ``dup_of`` on every repeat of a URL."""
    table = _sort_by_url(table)
    urls = table.column("url").combine_chunks()
    previous = pa.concat_arrays([pa.nulls(1, urls.type), urls.slice(0, len(urls) - 1)])
    repeat = pc.and_(pc.fill_null(pc.equal(urls, previous), False), pc.invert(blank_mask(urls)))
    return table.append_column(DUPLICATE_OF, _of_original(table, repeat, "row"))


def _of_original(table: pa.Table, repeat: pa.Array, column: str) -> pa.Array:
    """``column`` of each repeat's original (rows in URL order), null elsewhere."""
    values = table.column(column)
    null = pa.scalar(None, values.type)
    return pc.if_else(repeat, pc.fill_null_forward(pc.if_else(repeat, null, values)), null)


def _original_values(table: pa.Table, column: str) -> pa.Array:
    """``column`` of each row's original: its own for rows that are no repeat."""
    repeat = pc.is_valid(table.column(DUPLICATE_OF))
    return pc.coalesce(_of_original(table, repeat, column), table.column(column))


class ShardWriter:
    """Writes planned rows into shard input files; see the module docstring."""

    def __init__(
        self, shard_dir: Path, spill_dir: Path, options: PlanOptions, prefix: str = ""
    ) -> None:
        self.shard_dir = shard_dir
        self.spill_dir = spill_dir
        self.options = options
        self.prefix = prefix
        self.stats = PlanStats()
        self.counts_path = counts_path(shard_dir, prefix)

    def write(self, tables: Iterable[pa.Table], expected_rows: int) -> list[PlannedShard]:
        """Plan ``tables`` (columns ``row url class key label`` + passthrough); ``expected_rows``
        only sizes the partitions."""
        if self.spill_dir.exists():
            shutil.rmtree(self.spill_dir)
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        try:
            count = spill_buckets(expected_rows)
            partitions = self._partition(tables, count)
            blocks = self._to_blocks(partitions)
            counter = HostCounter(self.counts_path, self.spill_dir / "hosts", count)
            shards = list(self._cut(blocks, counter))
            counter.finish()
            return shards
        finally:
            shutil.rmtree(self.spill_dir, ignore_errors=True)

    def _partition(self, tables: Iterable[pa.Table], count: int) -> tuple[Spill, list[int]]:
        spill: Spill | None = None
        for table in tables:
            if spill is None:
                schema = table.schema.append(pa.field(_POSITION, pa.int64()))
                spill = Spill(self.spill_dir / "partitions", schema)
            try:
                table = table.cast(spill.schema.remove(spill.schema.get_field_index(_POSITION)))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise InputError(f"the input files disagree on column types: {exc}") from exc
            position = pa.array(
                range(self.stats.rows, self.stats.rows + table.num_rows), pa.int64()
            )
            table = table.append_column(_POSITION, position)
            self.stats.rows += table.num_rows
            self.stats.bad_url += pc.sum(blank_mask(table.column("url"))).as_py() or 0
            for item in pc.value_counts(table.column("class")).to_pylist():
                self.stats.classes[item["values"]] += item["counts"]
            if count == 1:
                buckets = pa.array([0] * table.num_rows, pa.int64())
            elif self.options.group_by_host:  # a host's rows (so a URL's rows too) meet
                buckets = host_buckets(hosts_of(table.column("url")), count)
            else:
                buckets = pa.array(
                    [hash(url) % count for url in table.column("url").to_pylist()], pa.int64()
                )
            spill.write(table, buckets)
        if spill is None:
            return Spill(self.spill_dir / "partitions", pa.schema([])), []
        return spill, spill.close()

    def _key_count(self) -> int:
        """Shard keys: fixed runs of rows, or class groups."""
        by_size = max(1, math.ceil(self.stats.rows / self.options.shard_size))
        if self.options.strategy == "fixed":
            return by_size
        return self.options.groups or by_size

    def _keyer(self) -> Callable[[pa.Table], pa.Array]:
        """The shard key of each row of a partition, from its original's position or class."""
        if self.options.strategy == "fixed":
            size = self.options.shard_size
            return lambda table: pc.divide(_original_values(table, _POSITION), size)
        assignment = balance_classes(dict(self.stats.classes), self._key_count())
        names = pa.array(list(assignment), pa.string())
        groups = pa.array(list(assignment.values()), pa.int64())
        return lambda table: pc.take(
            groups, pc.index_in(_original_values(table, "class"), value_set=names)
        )

    def _to_blocks(self, partitions: tuple[Spill, list[int]]) -> tuple[Spill, list[int]]:
        spill, buckets = partitions
        keys_per_block = max(
            1,
            SPILL_ROWS // self.options.shard_size,
            math.ceil(self._key_count() / MAX_SPILL_FILES),
        )
        key_of = self._keyer()
        blocks: Spill | None = None
        placed = 0
        for bucket in buckets:
            table = _mark_duplicates(spill.read(bucket))
            if self.options.group_by_host:
                table = _host_positions(table, placed)
                placed += table.num_rows
            self.stats.duplicates += pc.count(table[DUPLICATE_OF]).as_py()
            keys = key_of(table)
            table = table.append_column(_KEY, keys)
            if blocks is None:
                blocks = Spill(self.spill_dir / "blocks", table.schema)
            blocks.write(table, pc.divide(keys, keys_per_block))
        if blocks is None:
            return spill, []
        return blocks, blocks.close()

    def _cut(self, blocks: tuple[Spill, list[int]], counter: HostCounter) -> Iterator[PlannedShard]:
        spill, buckets = blocks
        number = 0
        for bucket in buckets:
            table = spill.read(bucket)
            table = table.take(pc.sort_indices(table, [(_KEY, "ascending"), ("row", "ascending")]))
            keys = table.column(_KEY)
            table = table.select([*SHARD_COLUMNS, *_passthrough(table)])
            start = 0
            for item in pc.run_end_encode(keys.combine_chunks()).run_ends.to_pylist():
                shard_id = f"{self.prefix}{number:05d}"
                path = self.shard_dir / f"{shard_id}.parquet"
                rows = table.slice(start, item - start)
                pq.write_table(rows, path)
                counter.add(shard_id, rows.column("url"))
                yield PlannedShard(shard_id, path, item - start)
                number += 1
                start = item


def _host_positions(table: pa.Table, first: int) -> pa.Table:
    """``table`` with its positions renumbered from ``first`` host by host (rows of a host
    consecutive, in row order), so that runs of positions hold few hosts each. Hosts go in
    ``host_hashes`` order, the order of the partitions (``host_buckets``): the numbering is
    the same however many partitions there are."""
    hosts = hosts_of(table.column("url"))
    keys = pa.table({"hash": host_hashes(hosts), "host": hosts, "row": table.column("row")})
    order = pc.sort_indices(
        keys, [("hash", "ascending"), ("host", "ascending"), ("row", "ascending")]
    )
    positions = pc.add(pc.sort_indices(order).cast(pa.int64()), first)
    return table.set_column(table.schema.get_field_index(_POSITION), _POSITION, positions)


def _passthrough(table: pa.Table) -> list[str]:
    return [name for name in table.column_names if name not in (*SHARD_COLUMNS, _KEY, _POSITION)]
