"""Reading URL tables: one file or a folder of them, local or at a URL, in any of the formats
of ``formats`` (parquet, CSV, TSV, text, JSON, JSON Lines; plain or compressed), in streaming
batches, and mapping their columns onto the shard columns row / url / class / key / label."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc

from ldawt.daemon.contract import EXPECTED_HASH

from . import formats
from .errors import InputError
from .formats import URL_DEFAULT, InputFile, InputSource

CLASS_CANDIDATES = ("taxon_name", "species_name", "class", "label", "name")
KEY_CANDIDATES = ("photo_id", "key", "id")
UNKNOWN_CLASS = "unknown"


@dataclass(frozen=True)
class ColumnMap:
    url: str
    class_: str | None
    key: str | None
    passthrough: tuple[str, ...] = ()
    verify_hash: str | None = None
    """The column of expected hashes (``--verify-hash-col``), carried as ``EXPECTED_HASH``."""

    def wanted(self) -> list[str]:
        names = [self.url, self.class_, self.key, *self.passthrough, self.verify_hash]
        return list(dict.fromkeys(n for n in names if n))

    def to_dict(self) -> dict[str, object]:
        mapping: dict[str, object] = {
            "url": self.url,
            "class": self.class_,
            "key": self.key,
            "passthrough": list(self.passthrough),
        }
        if self.verify_hash:  # only when set: jobs planned before it existed resume
            mapping["verify_hash"] = self.verify_hash
        return mapping


def carried_columns(columns: dict[str, object]) -> tuple[str, ...]:
    """The shard input columns a job's manifests carry (a recorded ``ColumnMap.to_dict()``):
    the passthrough columns, and the expected hashes when they are verified, so that
    ``retry-failed`` verifies retried rows too."""
    passthrough = tuple(columns.get("passthrough") or ())  # type: ignore[call-overload]
    return (*passthrough, EXPECTED_HASH) if columns.get("verify_hash") else passthrough


def list_input_files(source: InputSource | str | Path) -> list[InputFile]:
    """The table files named by ``source`` (a path or URL, or an ``InputSource`` with
    ``--input-format``): the file itself, or a folder's tables, sorted."""
    return formats.list_files(source)


def _as_file(file: InputFile | Path) -> InputFile:
    """Callers may still pass a local path of a table named as such."""
    return file if isinstance(file, InputFile) else formats.list_files(file)[0]


def read_schema(file: InputFile | Path) -> pa.Schema:
    return formats.read_schema(_as_file(file))


def estimate_rows(files: list[InputFile]) -> int:
    """Exact for parquet (its footer), a guess from the size for the others."""
    return sum(formats.estimate_rows(_as_file(file)) for file in files)


def iter_batches(file: InputFile | Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The chosen columns of ``file`` in batches; memory does not grow with the file."""
    return formats.iter_batches(_as_file(file), columns)


def resolve_columns(
    schema: pa.Schema,
    url: str | None,
    class_: str | None,
    key: str | None,
    passthrough: tuple[str, ...] = (),
    verify_hash: str | None = None,
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
    _require_text(schema, url_col)
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
        if name == EXPECTED_HASH:  # the shards would check every row against it
            raise InputError(
                f"--passthrough {name} clashes with the shard input column of "
                "--verify-hash-col's hashes; to verify the images against it, pass "
                f"--verify-hash-col {name} instead"
            )
    if verify_hash:
        require(verify_hash, "--verify-hash-col")
    return ColumnMap(url_col, class_col, key_col, tuple(passthrough), verify_hash)


def _require_text(schema: pa.Schema, url_col: str) -> None:
    url_type = schema.field(url_col).type
    if not (pa.types.is_string(url_type) or pa.types.is_large_string(url_type)):
        # a text table's column is binary when its first rows are not UTF-8
        hint = " (text that is not UTF-8?)" if pa.types.is_binary(url_type) else ""
        raise InputError(f"URL column {url_col!r} holds {url_type}, not text URLs{hint}")


def check_files(files: list[InputFile], columns: ColumnMap) -> None:
    """Every file must hold the mapped columns (the first file chose them)."""
    for file in map(_as_file, files):
        schema = read_schema(file)
        missing = [name for name in columns.wanted() if name not in schema.names]
        if missing:
            raise InputError(
                f"{file} lacks column(s) {', '.join(missing)}; the columns present are: "
                f"{', '.join(schema.names)}"
            )
        if file.format == "parquet":  # the other formats' columns are read as text
            _require_text(schema, columns.url)


def key_from_url(url: str | None, row: int) -> str:
    """A key for rows without a key: the id in iNaturalist-style paths
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


class ClassLabels:
    """Class name -> integer label, numbered in order of first appearance."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def labels(self, classes: pa.Array) -> pa.Array:
        encoded = pc.dictionary_encode(classes)
        ids = [
            self.index.setdefault(name, len(self.index)) for name in encoded.dictionary.to_pylist()
        ]
        return pc.take(pa.array(ids, pa.int64()), encoded.indices)


def blank_mask(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """True where a string is null or blank: a URL not fetched (status ``bad_url``), a class
    put in ``unknown``."""
    return pc.fill_null(pc.equal(pc.utf8_trim_whitespace(values), ""), True)


def shard_tables(
    files: list[InputFile], columns: ColumnMap, class_labels: ClassLabels
) -> Iterator[pa.Table]:
    """Input batches converted to the shard columns (``row url class key label`` and the
    passthrough columns), in input order; ``row`` numbers rows across all files."""
    next_row = 0
    for file in files:
        for batch in iter_batches(file, columns.wanted()):
            n = batch.num_rows
            numbers = range(next_row, next_row + n)
            urls = batch.column(columns.url).cast(pa.string())
            if columns.class_:
                classes = batch.column(columns.class_).cast(pa.string())
                classes = pc.if_else(blank_mask(classes), UNKNOWN_CLASS, classes)
            else:
                classes = pa.array([UNKNOWN_CLASS] * n, pa.string())
            keys = (
                batch.column(columns.key).cast(pa.string())
                if columns.key
                else pa.nulls(n, pa.string())
            )
            if keys.null_count:
                keys = pa.array(
                    [
                        k if k is not None else key_from_url(u, r)
                        for k, u, r in zip(keys.to_pylist(), urls.to_pylist(), numbers, strict=True)
                    ],
                    pa.string(),
                )
            arrays = [
                pa.array(numbers, pa.int64()),
                urls,
                classes,
                keys,
                class_labels.labels(classes),
            ]
            names = ["row", "url", "class", "key", "label"]
            for name in columns.passthrough:
                arrays.append(batch.column(name))
                names.append(name)
            if columns.verify_hash:
                arrays.append(batch.column(columns.verify_hash).cast(pa.string()))
                names.append(EXPECTED_HASH)
            yield pa.Table.from_arrays(arrays, names=names)
            next_row += n
