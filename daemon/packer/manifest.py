"""The manifest (one row per input row of a shard, saying what happened to it) and the stats
file, each written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..contract import MANIFEST_SCHEMA, ShardResult, manifest_column, write_atomically


def write_manifest(path: Path, rows: list[dict[str, Any]], passthrough: pa.Table | None) -> None:
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    if passthrough is not None:
        for name in passthrough.column_names:
            table = table.append_column(manifest_column(name), passthrough.column(name))
    write_atomically(path, lambda partial: pq.write_table(table, partial))


def write_stats(path: Path, stats: ShardResult) -> None:
    def write(partial: Path) -> None:
        partial.write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")

    write_atomically(path, write)
