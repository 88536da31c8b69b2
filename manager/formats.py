"""Input tables, wherever they are and however they are written: which files an input names,
what format each is in, and reading them as a stream of Arrow batches in bounded memory.

Formats, by the file's name (``--input-format`` overrides the name; compression is recognised
either way):

- ``parquet`` (``.parquet``, ``.pq``): read by row group, only the columns used.
- ``csv`` (``.csv``), ``tsv`` (``.tsv``, ``.tab``): the first line names the columns. CSV quotes
  as RFC 4180; TSV has no quoting (IANA's TSV: a field holds no tab or newline).
- ``txt`` (``.txt``): one URL per line, no header, blank lines skipped; its single column is the
  URL column (named as ``--url-col``, ``photo_url`` by default).
- ``json`` (``.json``): an array of objects, one per row (``[{"photo_url": ...}, ...]``, as
  pandas' ``orient="records"`` writes), or objects one after another (so JSON Lines named
  ``.json`` read too). An object of columns (``{"photo_url": [...]}``) is refused: it cannot
  be read in bounded memory.
- ``jsonl`` (``.jsonl``, ``.ndjson``): JSON Lines, one object per line, blank lines skipped.

The columns of a JSON file are the keys of its first 65,536 rows. CSV, TSV, text and JSON
values are read as text (a number is its decimal text, a nested value its JSON).

Compression: gzip, bzip2 and zstd (``.gz``, ``.bz2``, ``.zst``), decompressed by Arrow while
reading. A file is decompressed when its first bytes are one of those formats' magic numbers,
so a compressed file without a telling name reads too (``--input-format csv`` on
``export.dat`` holding gzip), and a ``.gz`` that an HTTP server already decompressed in transit
(``Content-Encoding: gzip``) is read as it arrives. The name's compression suffix is only
stripped before the format is looked up. Parquet compresses inside the file and is never read
from an outer compression.

Where: a local path, a ``file://`` URL (the same as its path), or any fsspec URL (``s3://``,
``gs://``, ``https://``, ...). Remote files are streamed (HTTP: one GET; object stores: ranged
reads of a few MiB), never copied to local disk; parquet is read with random access and a
read-ahead buffer. A folder (or an object-store prefix) means the files directly in it, skipping
names that start with ``.`` or ``_`` (``_SUCCESS`` markers): those whose name tells a format,
or all of them with ``--input-format``.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import posixpath
import re
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .errors import InputError

URL_DEFAULT = "photo_url"
FORMATS = ("parquet", "csv", "tsv", "txt", "json", "jsonl")
FORMAT_SUFFIXES = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".txt": "txt",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
COMPRESSION_SUFFIXES = {
    ".gz": "gzip",
    ".gzip": "gzip",
    ".bz2": "bz2",
    ".zst": "zstd",
    ".zstd": "zstd",
}
KNOWN_NAMES = ".parquet, .csv, .tsv, .txt, .json or .jsonl, optionally + .gz, .bz2 or .zst"
FOLDER_NAMES = ".parquet/.pq/.csv files, nor .tsv, .txt, .json or .jsonl (plain, .gz, .bz2, .zst)"
BATCH_ROWS = 65_536
# Rows per byte of a text table, for sizing the planner's partitions only: a guess that errs
# towards more rows (more, smaller partitions), and a compression ratio that does the same.
TEXT_BYTES_PER_ROW = 64
COMPRESSION_RATIO = 8
UNKNOWN_SIZE_ROWS = 10_000_000
PARQUET_READAHEAD = 8 << 20
STREAM_BLOCK = 8 << 20
JSON_CHUNK_CHARS = 1 << 20
JSON_MAX_OBJECT_CHARS = 64 << 20
MESSAGE_CHARS = 300
# The first bytes of a gzip, bzip2 (a block or the end of an empty stream) and zstd stream.
_MAGIC = (
    ("gzip", re.compile(rb"\x1f\x8b")),
    ("bz2", re.compile(rb"BZh[1-9](1AY&SY|\x17rE8P\x90)")),
    ("zstd", re.compile(rb"\x28\xb5\x2f\xfd")),
)
SNIFF_BYTES = 10
_URL = re.compile(r"([a-zA-Z][a-zA-Z0-9+.\-]*)://")
# A URL that went through pathlib (a config file's value): "s3://b/k" became "s3:/b/k".
_FOLDED_URL = re.compile(r"([a-zA-Z][a-zA-Z0-9+.\-]*):/(?!/)")
_SPACE = " \t\n\r"
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_JSON_COMMA = re.compile(r"[ \t\n\r]*,[ \t\n\r]*")
# Identity fields of a remote file, as the filesystems name them in info(): first found wins.
_VERSION_KEYS = ("ETag", "etag", "Etag", "md5Hash", "Content-MD5", "generation", "VersionId")
_MTIME_KEYS = ("LastModified", "Last-Modified", "last_modified", "mtime", "updated", "created")

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputSource:
    """What was named as input: a path or URL, the ``--input-format`` to read it as (None: by
    each file's name) and the URL column's name, which a text file's single column takes."""

    location: str | Path
    input_format: str | None = None
    url_col: str | None = None

    def __str__(self) -> str:
        return str(self.location)


@dataclass(eq=False)
class InputFile:
    """One table file: where it is, its format and how it is read."""

    location: str
    """A local path, or the URL of a remote file."""
    format: str
    compression: str | None = None
    """Named by the file's suffix (the bytes decide when reading; this sizes estimates)."""
    forced: bool = False
    """The format came from ``--input-format``, not the name."""
    text_column: str = URL_DEFAULT
    fs: Any = None
    """The fsspec filesystem of a remote file; None for a local one."""
    fs_path: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    """What the remote filesystem said about the file (size, ETag, modification time)."""
    _schema: pa.Schema | None = field(default=None, repr=False)
    _sniffed: tuple[str | None] | None = field(default=None, repr=False)
    """(compression,) that the file's first bytes showed, once read."""

    @property
    def remote(self) -> bool:
        return self.fs is not None

    def __str__(self) -> str:
        return self.location

    def size(self) -> int | None:
        if self.remote:
            return self.info.get("size")
        return Path(self.location).stat().st_size

    def describe(self) -> dict[str, Any]:
        """The file's part of a job's identity: path, size and modification time for a local
        file (as before remote inputs existed, so older jobs resume); for a remote one its URL,
        size and what the filesystem gives of ETag and modification time. The format only when
        ``--input-format`` chose it."""
        if self.remote:
            described = {"path": self.location, "size": self.info.get("size")}
            for name, keys in (("etag", _VERSION_KEYS), ("mtime", _MTIME_KEYS)):
                value = next((self.info[k] for k in keys if self.info.get(k) is not None), None)
                if value is not None:
                    described[name] = _plain(value)
        else:
            path = Path(self.location)
            stat = path.stat()
            described = {
                "path": str(path.resolve()),
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
            }
        if self.forced:
            described["format"] = self.format
        return described


def _plain(value: Any) -> Any:
    """A JSON-able form of an info() value."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)


def detect(name: str) -> tuple[str | None, str | None]:
    """(format, compression) from a file name: ``urls.tsv.gz`` -> ("tsv", "gzip")."""
    stem, suffix = posixpath.splitext(name.lower())
    compression = COMPRESSION_SUFFIXES.get(suffix)
    if compression:
        suffix = posixpath.splitext(stem)[1]
    return FORMAT_SUFFIXES.get(suffix), compression


def as_source(source: InputSource | str | Path) -> InputSource:
    return source if isinstance(source, InputSource) else InputSource(source)


def list_files(source: InputSource | str | Path) -> list[InputFile]:
    """The table files ``source`` names: the file itself, or a folder's files, sorted by name."""
    source = as_source(source)
    if source.input_format is not None and source.input_format not in FORMATS:
        raise InputError(
            f"unknown input format {source.input_format!r}; known: {', '.join(FORMATS)}"
        )
    location = _location(source.location)
    if isinstance(location, Path):
        return _list_local(location, source)
    return _list_remote(location, source)


def _location(given: str | Path) -> str | Path:
    """A URL (str) or a local path; ``file://`` URLs are local paths."""
    text = str(given)
    folded = _FOLDED_URL.match(text) if isinstance(given, Path) else None
    if folded and _known_protocol(folded.group(1)) and not given.exists():
        if folded.group(1).lower() == "file":  # file:/abs/path was file:///abs/path
            return Path(unquote(text[len("file:") :]))
        text = f"{folded.group(1)}://{text[folded.end() :]}"
    scheme = _URL.match(text)
    if scheme is None:
        return Path(text)
    if scheme.group(1).lower() != "file":
        return text
    parts = urlsplit(text)
    if parts.netloc not in ("", "localhost"):
        raise InputError(
            f"{text}: a file:// URL names a path on this machine, not on {parts.netloc}"
        )
    return Path(unquote(parts.path))


def _known_protocol(protocol: str) -> bool:
    try:
        from fsspec.registry import known_implementations
    except ImportError:
        return protocol.lower() in ("file", "s3", "gs", "gcs", "http", "https")
    return protocol.lower() in known_implementations


def _input_file(location: str, name: str, source: InputSource, in_folder: bool, **where: Any):
    """The ``InputFile`` for one file, or None for a folder's file of no known format."""
    detected, compression = detect(name)
    fmt = source.input_format or detected
    if fmt is None:
        if in_folder:
            return None
        raise InputError(
            f"cannot tell the format of {location} from its name (known: {KNOWN_NAMES}); pass "
            f"--input-format {'|'.join(FORMATS)}"
        )
    if fmt == "parquet" and compression:
        raise InputError(
            f"{location}: parquet is not read from a {compression}-compressed file (parquet "
            "compresses inside the file, and needs random access): decompress it first"
        )
    return InputFile(
        location,
        fmt,
        compression,
        forced=source.input_format is not None,
        text_column=source.url_col or URL_DEFAULT,
        **where,
    )


def _skipped(name: str) -> bool:
    """Hidden files and markers (``_SUCCESS``, ``_metadata``) in a folder are no tables."""
    return name.startswith((".", "_"))


def _list_local(path: Path, source: InputSource) -> list[InputFile]:
    if not path.exists():
        raise InputError(f"input {path} does not exist")
    if not path.is_dir():
        return [_input_file(str(path), path.name, source, in_folder=False)]
    found = [
        _input_file(str(p), p.name, source, in_folder=True)
        for p in sorted(path.iterdir())
        if not _skipped(p.name) and p.is_file()
    ]
    files = [f for f in found if f is not None]
    if not files:
        raise InputError(f"folder {path} holds no {FOLDER_NAMES}; or pass --input-format")
    return files


def _filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path within it."""
    protocol = _URL.match(url).group(1).lower()  # type: ignore[union-attr]
    try:
        import fsspec
    except ImportError:
        raise InputError(f"{url}: reading URLs needs fsspec: pip install fsspec") from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        raise InputError(_install_hint(url, protocol, exc)) from None
    except ValueError as exc:
        raise InputError(f"{url}: unknown URL scheme {protocol}:// ({_one_line(exc)})") from None


def _install_hint(url: str, protocol: str, exc: ImportError) -> str:
    from fsspec.registry import known_implementations

    implementation = known_implementations.get(protocol, {}).get("class", "")
    package = implementation.split(".")[0] if implementation else exc.name
    if package in ("fsspec", None):  # fsspec's own filesystems need their own imports
        package = exc.name
    extra = " (or pip install 'ldawt[s3]')" if package == "s3fs" else ""
    return (
        f"{url}: reading {protocol}:// URLs needs {package}, which is not installed: "
        f"pip install {package}{extra}"
    )


@contextmanager
def _remote_errors(url: str) -> Iterator[None]:
    """One-line errors for what a remote filesystem raises. Each filesystem raises its own
    classes (aiohttp's, botocore's, google-auth's), so every exception becomes an
    ``InputError`` here."""
    try:
        yield
    except InputError:
        raise
    except FileNotFoundError as exc:
        cause = exc.__cause__ or exc.__context__
        why = "no such file" if cause is None else _one_line(cause)
        raise InputError(f"cannot read {url}: {why}") from exc
    except ImportError as exc:
        protocol = _URL.match(url).group(1).lower()  # type: ignore[union-attr]
        raise InputError(_install_hint(url, protocol, exc)) from exc
    except Exception as exc:
        raise InputError(f"cannot read {url}: {type(exc).__name__}: {_one_line(exc)}") from exc


def _list_remote(url: str, source: InputSource) -> list[InputFile]:
    fs, path = _filesystem(url)
    with _remote_errors(url):
        info = fs.info(path)
        if info.get("type") != "directory":
            name = posixpath.basename(urlsplit(url).path if _is_http(fs) else path)
            return [_input_file(url, name, source, False, fs=fs, fs_path=path, info=info)]
        entries = sorted(fs.ls(path, detail=True), key=lambda e: e["name"])
    found = []
    for entry in entries:
        name = posixpath.basename(entry["name"].rstrip("/"))
        if entry.get("type") != "file" or _skipped(name):
            continue
        location = fs.unstrip_protocol(entry["name"])
        found.append(
            _input_file(location, name, source, True, fs=fs, fs_path=entry["name"], info=entry)
        )
    files = [f for f in found if f is not None]
    if not files:
        raise InputError(f"{url} holds no {FOLDER_NAMES}; or pass --input-format")
    return files


def _is_http(fs: Any) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return "http" in protocols or "https" in protocols


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 3] + "..."


def _describe_format(file: InputFile) -> str:
    """``csv, gzip``: the format, and the compression read (or named, before reading)."""
    codec = file.compression if file._sniffed is None else file._sniffed[0]
    text = file.format + (f", {codec}" if codec else "")
    if file.compression and codec != file.compression:
        text += f"; its name says {file.compression}, its first bytes do not"
    return text


# What reading a local file raises for bytes that are no such table; InputError (a ValueError)
# passes through unchanged.
_READ_ERRORS = (pa.ArrowException, OSError, ValueError, EOFError)


@contextmanager
def _reading(file: InputFile, doing: str) -> Iterator[None]:
    """Errors while reading ``file`` as one line: ``cannot read FILE{doing}: why``."""
    try:
        yield
    except InputError:
        raise
    except UnicodeDecodeError as exc:
        raise InputError(
            f"cannot read {file}{doing} ({_describe_format(file)}): not UTF-8 text ({exc.reason} "
            f"at byte {exc.start} of a block)"
        ) from exc
    except _READ_ERRORS as exc:
        raise InputError(
            f"cannot read {file}{doing} ({_describe_format(file)}): {_one_line(exc)}"
        ) from exc
    except Exception as exc:
        if not file.remote:
            raise
        # a transport's own errors (see _remote_errors)
        raise InputError(
            f"cannot read {file}{doing}: {type(exc).__name__}: {_one_line(exc)}"
        ) from exc


def _sniff(head: bytes) -> str | None:
    """The compression whose magic number ``head`` starts with, or None."""
    return next((name for name, magic in _MAGIC if magic.match(head)), None)


class _Prepended(io.RawIOBase):
    """``head`` (bytes already read from ``rest``), then the rest of ``rest``. Reads return
    all the bytes asked for until the end (Arrow takes a short read for the end), however
    few a network read returns at once."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            head, self._head = self._head, b""
            return head + self._rest.read()
        parts = [self._head[:size]]
        self._head = self._head[size:]
        wanted = size - len(parts[0])
        while wanted > 0:
            data = self._rest.read(wanted)
            if not data:
                break
            parts.append(data)
            wanted -= len(data)
        return b"".join(parts)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)


def _open_remote(file: InputFile, random_access: bool = False) -> Any:
    """A file object reading ``file`` from its filesystem: one streamed GET over HTTP, ranged
    reads with a read-ahead buffer elsewhere (and for parquet, which seeks)."""
    size = {"size": file.info["size"]} if _is_http(file.fs) and file.info.get("size") else {}
    with _remote_errors(file.location):
        if _is_http(file.fs) and not random_access:
            return file.fs.open(file.fs_path, "rb", block_size=0, **size)
        block = PARQUET_READAHEAD if random_access else STREAM_BLOCK
        return file.fs.open(file.fs_path, "rb", block_size=block, cache_type="readahead", **size)


def _sniffed(file: InputFile, codec: str | None) -> None:
    """Note the compression the file's bytes showed; say so once when its name says another."""
    if file._sniffed is None and file.compression and codec != file.compression:
        log.warning(
            f"{file}: its name says {file.compression}, its first bytes do not: read as they are"
            f" ({codec or 'uncompressed'}; an HTTP server may have decompressed it in transit)"
        )
    file._sniffed = (codec,)


@contextmanager
def _stream(file: InputFile) -> Iterator[pa.NativeFile]:
    """The bytes of a text table, decompressed as their first bytes say."""
    if not file.remote:
        with open(file.location, "rb") as handle:
            codec = _sniff(handle.read(SNIFF_BYTES))
        _sniffed(file, codec)
        with pa.input_stream(file.location, compression=codec) as stream:
            yield stream
        return
    with _open_remote(file) as raw:
        head = raw.read(SNIFF_BYTES)
        codec = _sniff(head)
        _sniffed(file, codec)
        stream = pa.PythonFile(_Prepended(head, raw), mode="r")
        if codec is not None:
            stream = pa.CompressedInputStream(stream, codec)
        with stream:
            yield stream


@contextmanager
def _parquet(file: InputFile) -> Iterator[pq.ParquetFile]:
    if not file.remote:
        yield pq.ParquetFile(file.location)
        return
    with _open_remote(file, random_access=True) as handle:
        yield pq.ParquetFile(handle)


def _csv_options(
    file: InputFile, columns: list[str] | None
) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions, pacsv.ConvertOptions]:
    """Arrow's CSV options for csv, tsv and txt. The wanted ``columns`` are read as text: types
    would be inferred from the first block only."""
    if file.format == "txt":
        read = pacsv.ReadOptions(column_names=[file.text_column])
        # one column: a delimiter no URL holds, no quoting
        parse = pacsv.ParseOptions(
            delimiter="\x1f", quote_char=False, double_quote=False, escape_char=False
        )
        columns = [file.text_column] if columns is None else columns
    else:
        read = pacsv.ReadOptions()
        parse = (
            pacsv.ParseOptions(delimiter="\t", quote_char=False, double_quote=False)
            if file.format == "tsv"
            else pacsv.ParseOptions()
        )
    if columns is None:
        return read, parse, pacsv.ConvertOptions()
    convert = pacsv.ConvertOptions(
        include_columns=columns, column_types=dict.fromkeys(columns, pa.string())
    )
    return read, parse, convert


def _empty(file: InputFile) -> InputError:
    return InputError(f"{file} is empty ({_describe_format(file)}: no rows, no header)")


def read_schema(file: InputFile) -> pa.Schema:
    """The file's columns (read once per file, from its footer or first rows)."""
    if file._schema is not None:
        return file._schema
    with _reading(file, " as a table"):
        if file.size() == 0:
            raise InputError(f"{file} is empty (0 bytes)")
        if file.format == "parquet":
            with _parquet(file) as parquet:
                schema = parquet.schema_arrow
        elif file.format in ("json", "jsonl"):
            with _stream(file) as stream, closing(_json_rows(file, stream)) as batches:
                rows = next(batches, None)
            if not rows:
                raise InputError(f"{file} holds no JSON objects (no rows)")
            schema = _json_schema(rows)
        else:
            schema = _csv_schema(file)
    file._schema = schema
    return schema


def _csv_schema(file: InputFile) -> pa.Schema:
    """The columns of a csv, tsv or txt file; a file of no rows (txt) or no header is empty."""
    with _stream(file) as stream:
        try:
            reader = pacsv.open_csv(stream, *_csv_options(file, None))
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc):
                raise _empty(file) from None
            raise
        with reader:
            if file.format == "txt" and not any(batch.num_rows for batch in _first(reader)):
                raise _empty(file)
            return reader.schema


def _first(reader: pacsv.CSVStreamingReader) -> Iterator[pa.RecordBatch]:
    """The reader's first batch, if any."""
    yield from itertools.islice(reader, 1)


def estimate_rows(file: InputFile) -> int:
    """Exact for parquet (its footer); for the others a guess from the size, on the high side:
    it only sizes the planner's partitions."""
    if file.format == "parquet":
        with _reading(file, ""), _parquet(file) as parquet:
            return parquet.metadata.num_rows
    size = _call(file, file.size)
    if size is None:
        return UNKNOWN_SIZE_ROWS
    return size // TEXT_BYTES_PER_ROW * (COMPRESSION_RATIO if file.compression else 1)


def _call(file: InputFile, function: Callable[[], T]) -> T:
    with _reading(file, ""):
        return function()


def iter_batches(file: InputFile, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The chosen columns of ``file`` in batches; memory does not grow with the file."""
    with _reading(file, ""):
        if file.format == "parquet":
            with _parquet(file) as parquet:
                yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns)
        elif file.format in ("json", "jsonl"):
            with _stream(file) as stream:
                for rows in _json_rows(file, stream):
                    yield _json_batch(rows, columns)
        else:
            with (
                _stream(file) as stream,
                pacsv.open_csv(stream, *_csv_options(file, columns)) as reader,
            ):
                yield from reader


# JSON: parsed by Python's C decoder in batches of rows, since Arrow's JSON reader fixes each
# column's type from the first block (a column null there and numbers later fails).


def _json_rows(file: InputFile, stream: pa.NativeFile) -> Iterator[list[dict[str, Any]]]:
    """Batches of up to BATCH_ROWS row objects."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    try:
        if file.format == "jsonl":
            yield from _json_lines(file, text)
        else:
            rows: list[dict[str, Any]] = []
            for row in _json_objects(file, text):
                rows.append(row)
                if len(rows) == BATCH_ROWS:
                    yield rows
                    rows = []
            if rows:
                yield rows
    finally:
        text.detach()  # the stream belongs to the caller


def _kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _json_lines(file: InputFile, text: io.TextIOWrapper) -> Iterator[list[dict[str, Any]]]:
    number = 0
    while True:
        lines = list(itertools.islice(text, BATCH_ROWS))
        if not lines:
            return
        first, number = number + 1, number + len(lines)
        # One decoder call per batch; on any doubt (blank lines too), line by line.
        try:
            rows = json.loads("[" + ",".join(lines) + "]")
            valid = len(rows) == len(lines) and all(type(row) is dict for row in rows)
        except ValueError:
            valid = False
        if not valid:
            rows = [_json_line(file, line, n) for n, line in enumerate(lines, first)]
            rows = [row for row in rows if row is not None]
        if rows:
            yield rows


def _json_line(file: InputFile, line: str, number: int) -> dict[str, Any] | None:
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise InputError(f"{file}: line {number} is not valid JSON ({_one_line(exc)})") from None
    if type(row) is not dict:
        raise InputError(
            f"{file}: line {number} holds a JSON {_kind(row)}, not an object (JSON Lines: one "
            "object per line)"
        )
    return row


def _json_objects(file: InputFile, text: io.TextIOWrapper) -> Iterator[dict[str, Any]]:
    """The objects of a JSON array of objects, or of objects one after another, read in chunks
    (one object at most JSON_MAX_OBJECT_CHARS long)."""
    decoder = json.JSONDecoder()
    buffer, position = "", 0

    def more() -> bool:
        nonlocal buffer, position
        chunk = text.read(JSON_CHUNK_CHARS)
        if not chunk:
            return False
        buffer, position = buffer[position:] + chunk, 0
        return True

    def skip_space() -> bool:
        """Past whitespace; False at the end of the text."""
        nonlocal position
        while True:
            position = _JSON_SPACE.match(buffer, position).end()  # type: ignore[union-attr]
            if position < len(buffer):
                return True
            if not more():
                return False

    if not skip_space():
        return
    in_array = buffer[position] == "["
    position += in_array
    index = 0
    while True:
        if (position == len(buffer) or buffer[position] in _SPACE) and not skip_space():
            if in_array:
                raise InputError(f"{file} ends inside its JSON array (cut short?)")
            return
        if in_array and buffer[position] == "]":
            position += 1
            if skip_space():
                raise InputError(f"{file}: more data after the end of its JSON array")
            return
        while True:
            try:
                row, position = decoder.raw_decode(buffer, position)
                break
            except json.JSONDecodeError as exc:
                too_long = len(buffer) - position > JSON_MAX_OBJECT_CHARS
                if too_long or not more():
                    raise InputError(
                        f"{file}: row {index + 1} is not valid JSON ({exc.msg})"
                    ) from None
        if type(row) is not dict:
            raise InputError(
                f"{file}: row {index + 1} is a JSON {_kind(row)}, not an object; ldawt reads a "
                "JSON array of objects, one per row, or JSON Lines"
            )
        if not in_array and index == 0 and row and all(type(v) is list for v in row.values()):
            raise InputError(
                f"{file} holds an object of arrays (columns?); ldawt reads rows: a JSON array of "
                'objects, one per row ([{"photo_url": ...}, ...]), or JSON Lines'
            )
        yield row
        index += 1
        if in_array:
            comma = _JSON_COMMA.match(buffer, position)
            if comma is not None and comma.end() < len(buffer):  # the common case, at once
                position = comma.end()
                continue
            if not skip_space():
                raise InputError(f"{file} ends inside its JSON array (cut short?)")
            if buffer[position] == ",":
                position += 1
            elif buffer[position] != "]":
                raise InputError(f"{file}: expected , or ] after row {index} of its JSON array")


def _json_type(value: Any) -> pa.DataType:
    """The Arrow type a JSON column is shown as (its values are read as text)."""
    if type(value) is bool:
        return pa.bool_()
    if type(value) is int:
        return pa.int64()
    if type(value) is float:
        return pa.float64()
    return pa.string()


def _json_schema(rows: list[dict[str, Any]]) -> pa.Schema:
    names = dict.fromkeys(name for row in rows for name in row)
    return pa.schema(
        [
            (name, _json_type(next((r[name] for r in rows if r.get(name) is not None), None)))
            for name in names
        ]
    )


def _json_text(value: Any) -> str | None:
    """A JSON value as text: strings as they are, others in their JSON form."""
    if value is None or type(value) is str:
        return value
    if type(value) is int:
        return str(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _json_column(values: list[Any]) -> pa.Array:
    """A column of JSON values as text (see ``_json_text``)."""
    try:
        return pa.array(values, pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    try:  # a column of integers or booleans only: Arrow writes them as JSON does
        typed = pa.array(values)
        if pa.types.is_integer(typed.type) or pa.types.is_boolean(typed.type):
            return typed.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    return pa.array([_json_text(value) for value in values], pa.string())


def _json_batch(rows: list[dict[str, Any]], columns: list[str]) -> pa.RecordBatch:
    arrays = [_json_column([row.get(name) for row in rows]) for name in columns]
    return pa.RecordBatch.from_arrays(arrays, names=columns)
