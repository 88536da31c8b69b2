"""Reading URL tables: one parquet or CSV file or a folder of them, in streaming batches, and
mapping their columns onto url / class / key."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

TABLE_SUFFIXES = (".parquet", ".pq", ".csv")
URL_DEFAULT = "photo_url"
CLASS_CANDIDATES = ("taxon_name", "species_name", "class", "label", "name")
KEY_CANDIDATES = ("photo_id", "key", "id")
BATCH_ROWS = 65_536


class InputError(ValueError):
    """A problem with the input tables, worded for the person who gave them."""


@dataclass(frozen=True)
class ColumnMap:
    url: str
    class_: str | None
    key: str | None
    passthrough: tuple[str, ...] = ()


def list_input_files(path: Path) -> list[Path]:
    """The table files named by ``path``: the file itself, or a folder's tables, sorted."""
    if not path.exists():
        raise InputError(f"input {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in TABLE_SUFFIXES)
        if not files:
            raise InputError(f"folder {path} holds no {'/'.join(TABLE_SUFFIXES)} files")
        return files
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise InputError(f"{path} is not a parquet or CSV file (by its name)")
    return [path]


def read_schema(path: Path) -> pa.Schema:
    try:
        if path.suffix.lower() == ".csv":
            with pacsv.open_csv(path) as reader:
                return reader.schema
        return pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"cannot read {path} as a table: {exc}") from exc


def iter_batches(path: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The chosen columns of ``path`` in batches; memory does not grow with the file."""
    try:
        if path.suffix.lower() == ".csv":
            with pacsv.open_csv(
                path, convert_options=pacsv.ConvertOptions(include_columns=columns)
            ) as reader:
                yield from reader
        else:
            yield from pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc


def resolve_columns(
    schema: pa.Schema,
    url: str | None,
    class_: str | None,
    key: str | None,
    passthrough: tuple[str, ...] = (),
) -> ColumnMap:
    """Check the requested columns exist, or pick the defaults; errors list what exists."""
    present = list(schema.names)

    def require(name: str, role: str) -> str:
        if name not in present:
            raise InputError(
                f"{role} column {name!r} not found; the columns present are: {', '.join(present)}"
            )
        return name

    url_col = require(url or URL_DEFAULT, "URL")
    url_type = schema.field(url_col).type
    if not (pa.types.is_string(url_type) or pa.types.is_large_string(url_type)):
        raise InputError(f"URL column {url_col!r} holds {url_type}, not text URLs")
    class_col = (
        require(class_, "class")
        if class_
        else next((c for c in CLASS_CANDIDATES if c in present), None)
    )
    key_col = (
        require(key, "key") if key else next((c for c in KEY_CANDIDATES if c in present), None)
    )
    for name in passthrough:
        require(name, "passthrough")
    return ColumnMap(url_col, class_col, key_col, tuple(passthrough))
