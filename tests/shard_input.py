"""Shard input files written by hand, for running ``run_shard`` or an engine without the
planner (tests and benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write_shard_input(
    path: Path,
    urls: Sequence[str | None],
    classes: Sequence[str],
    keys: Sequence[str],
    labels: Sequence[int] | None = None,
    first_row: int = 0,
) -> None:
    """Write a shard input file (``contract.INPUT_COLUMNS``): rows numbered from
    ``first_row``, labels 0 unless given."""
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
