"""Planning: turn input tables into shard input files and shard specs, streaming.

Each shard input is a small parquet file with the columns the daemon reads (``row``, ``url``,
``class``, ``key``, ``label``) plus the passthrough columns. Rows keep their input order and a
job-wide ``row`` number; class labels are numbered in order of first appearance, so the same
inputs and options always give the same shards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ldawt.daemon.fetcher.options import FetchOptions

from .inputs import ColumnMap, iter_batches

UNKNOWN_CLASS = "unknown"
JOB_SUBDIR = "job"


@dataclass(frozen=True)
class PlanOptions:
    shard_size: int = 5000
    layout: str = "class"
    compress: bool = False
    deadline_s: float = 3600.0
    fetch: FetchOptions = field(default_factory=FetchOptions)


@dataclass
class Plan:
    specs: list[dict[str, Any]]
    rows: int
    classes: list[str]


def key_from_url(url: str | None, row: int) -> str:
    """A key for rows without a key column: the id in iNaturalist-style paths
    (``/photos/<id>/<size>.jpg``), otherwise the last two path segments without extension."""
    if not url:
        return f"row{row}"
    segments = [s for s in urlsplit(url).path.split("/") if s]
    if not segments:
        return f"row{row}"
    segments[-1] = segments[-1].rsplit(".", 1)[0]
    if len(segments) >= 2 and segments[-2].isdigit():
        return segments[-2]
    return "_".join(segments[-2:])


class _Labeler:
    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def labels(self, classes: pa.Array) -> pa.Array:
        encoded = pc.dictionary_encode(classes)
        ids = [
            self.index.setdefault(name, len(self.index)) for name in encoded.dictionary.to_pylist()
        ]
        return pc.take(pa.array(ids, pa.int64()), encoded.indices)


def _shard_rows(files: list[Path], columns: ColumnMap, labeler: _Labeler) -> Iterator[pa.Table]:
    """Input batches converted to the daemon's columns, in input order."""
    wanted = [
        columns.url,
        *([columns.class_] if columns.class_ else []),
        *([columns.key] if columns.key else []),
        *columns.passthrough,
    ]
    wanted = list(dict.fromkeys(wanted))
    next_row = 0
    for path in files:
        for batch in iter_batches(path, wanted):
            n = batch.num_rows
            rows = pa.array(range(next_row, next_row + n), pa.int64())
            urls = batch.column(columns.url).cast(pa.string())
            if columns.class_:
                classes = pc.fill_null(
                    batch.column(columns.class_).cast(pa.string()), UNKNOWN_CLASS
                )
            else:
                classes = pa.array([UNKNOWN_CLASS] * n, pa.string())
            if columns.key:
                keys = batch.column(columns.key).cast(pa.string())
                if keys.null_count:
                    keys = pa.array(
                        [
                            k if k is not None else key_from_url(u, r)
                            for k, u, r in zip(
                                keys.to_pylist(),
                                urls.to_pylist(),
                                range(next_row, next_row + n),
                                strict=True,
                            )
                        ],
                        pa.string(),
                    )
            else:
                keys = pa.array(
                    [
                        key_from_url(u, r)
                        for u, r in zip(
                            urls.to_pylist(), range(next_row, next_row + n), strict=True
                        )
                    ],
                    pa.string(),
                )
            arrays = [rows, urls, classes, keys, labeler.labels(classes)]
            names = ["row", "url", "class", "key", "label"]
            for name in columns.passthrough:
                arrays.append(batch.column(name))
                names.append(name)
            yield pa.Table.from_arrays(arrays, names=names)
            next_row += n


def plan_job(files: list[Path], columns: ColumnMap, out_dir: Path, options: PlanOptions) -> Plan:
    """Write the shard inputs under ``out_dir/job/shards`` and return the shard specs."""
    shard_dir = out_dir / JOB_SUBDIR / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    labeler = _Labeler()
    specs: list[dict[str, Any]] = []
    pending: list[pa.Table] = []
    pending_rows = 0
    total = 0

    def flush(table: pa.Table) -> None:
        shard_id = f"{len(specs):05d}"
        input_path = shard_dir / f"{shard_id}.parquet"
        pq.write_table(table, input_path)
        specs.append(
            {
                "shard_id": shard_id,
                "input_path": str(input_path),
                "output_dir": str(out_dir),
                "layout": options.layout,
                "compress": options.compress,
                "passthrough": list(columns.passthrough),
                "fetch": options.fetch.to_dict(),
                "deadline_s": options.deadline_s,
            }
        )

    for table in _shard_rows(files, columns, labeler):
        total += table.num_rows
        pending.append(table)
        pending_rows += table.num_rows
        while pending_rows >= options.shard_size:
            combined = pa.concat_tables(pending)
            flush(combined.slice(0, options.shard_size))
            rest = combined.slice(options.shard_size)
            pending, pending_rows = [rest], rest.num_rows
    if pending_rows:
        flush(pa.concat_tables(pending))
    classes = list(labeler.index)
    (out_dir / JOB_SUBDIR / "classes.json").write_text(
        json.dumps(classes, ensure_ascii=False, indent=0) + "\n"
    )
    return Plan(specs=specs, rows=total, classes=classes)
