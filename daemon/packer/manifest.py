"""The manifest: one row per input row of a shard, saying what happened to it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from . import partial_path
from .tarwriter import fsync_directory

MANIFEST_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("key", pa.string()),
        ("url", pa.string()),
        ("class", pa.string()),
        ("label", pa.int64()),
        ("status", pa.string()),
        ("http_status", pa.int32()),
        ("error", pa.string()),
        ("attempts", pa.int32()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("content_type", pa.string()),
        ("elapsed_ms", pa.float32()),
        ("member", pa.string()),
        ("duplicate_of", pa.int64()),  # the row whose download this row shares
    ]
)


def write_atomically(path: Path, write: Any) -> None:
    """Run ``write(partial_path)``, fsync the result and rename it to ``path``."""
    partial = partial_path(path)
    try:
        write(partial)
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    fsync_directory(path.parent)


def manifest_column(passthrough: str) -> str:
    """The manifest's name for an input column carried through: its own unless a manifest
    column has it."""
    return f"input_{passthrough}" if passthrough in MANIFEST_SCHEMA.names else passthrough


def write_text_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` (folders created, file mode ``mode``) with write_atomically."""

    def write(partial: Path) -> None:
        partial.write_text(text)
        partial.chmod(mode)

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, write)


def write_manifest(path: Path, rows: list[dict[str, Any]], passthrough: pa.Table | None) -> None:
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    if passthrough is not None:
        for name in passthrough.column_names:
            table = table.append_column(manifest_column(name), passthrough.column(name))
    write_atomically(path, lambda partial: pq.write_table(table, partial))


def write_stats(path: Path, stats: dict[str, Any]) -> None:
    def write(partial: Path) -> None:
        partial.write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")

    write_atomically(path, write)
