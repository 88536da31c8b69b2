"""The shard contract: everything that crosses the engine boundary, in one place.

An engine hands ``run_shard`` a ``ShardSpec`` and gets back a ``ShardResult``; both travel as
plain JSON-able dicts when they leave the process (``to_dict``/``from_dict``), so a TaskVine
library of the same ldawt version can run them. The shard writes its files (``ShardFiles``)
atomically, in commit order: tar, manifest (``MANIFEST_SCHEMA``, one row per input row), stats
last; a shard with a stats file is complete. Every row ends with one ``Status`` of a closed set.

New per-shard settings (transforms, per-host budgets) are fields of ``ShardSpec``; new manifest
columns go into ``MANIFEST_SCHEMA``.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import pyarrow as pa

from .fetcher.options import ROBOTS_MODES as ROBOTS_MODES  # the choices of --robots
from .fetcher.options import FetchOptions
from .fetcher.throttles import ThrottledHost
from .fetcher.throttles import ThrottleLog as ThrottleLog  # sums throttled_hosts of results
from .records import known_fields
from .storage import RemotePath, is_url
from .transform.options import TransformOptions

# --- row statuses ----------------------------------------------------------------------------


class Status:
    """The closed set of row statuses. Plain strings, as they appear in manifests, stats and
    metrics labels: hot paths compare and count them by the million."""

    OK = "ok"
    DUPLICATE = "duplicate"
    """Same URL as another row of the job, which fetched it; points at that row's member."""
    REDIRECT_LOOP = "redirect_loop"
    TIMEOUT = "timeout"
    CONNECT_ERROR = "connect_error"
    CONNECTION_RESET = "connection_reset"
    DNS_ERROR = "dns_error"
    TLS_ERROR = "tls_error"
    TOO_LARGE = "too_large"
    TRUNCATED = "truncated"
    NOT_IMAGE = "not_image"
    BAD_URL = "bad_url"
    BLOCKED_ADDRESS = "blocked_address"
    OPTED_OUT = "opted_out"
    """The response's ``X-Robots-Tag`` holds a disallowed directive; its body was not read."""
    ROBOTS_DISALLOWED = "robots_disallowed"
    """The host's robots.txt disallows the URL for ldawt (or could not be loaded: 5xx)."""
    CANCELLED = "cancelled"
    INTERNAL_ERROR = "internal_error"
    # The transform stage (``ldawt.daemon.transform``):
    TOO_SMALL = "too_small"
    """Shorter side below ``min_image_size``."""
    IMAGE_TOO_LARGE = "image_too_large"
    """More pixels than ``max_image_area``, or than the decompression-bomb limit."""
    BAD_ASPECT = "bad_aspect"
    """Longer side / shorter side above ``max_aspect_ratio``."""
    DECODE_ERROR = "decode_error"
    """Not decodable: unreadable header, truncated or corrupt data, unsupported format."""
    HASH_MISMATCH = "hash_mismatch"
    """The downloaded bytes do not have the hash the input's ``--verify-hash-col`` gives."""


NAMED_HTTP_CODES = (400, 401, 403, 404, 410, 429, 500, 502, 503, 504)
HTTP_STATUSES = (*(f"http_{code}" for code in NAMED_HTTP_CODES), "http_3xx", "http_4xx", "http_5xx")
SUCCESSES = (Status.OK, Status.DUPLICATE)
"""Statuses of rows whose image is in a tar (a duplicate points at its original's member)."""
FAILURES = (
    *HTTP_STATUSES,
    Status.REDIRECT_LOOP,
    Status.TIMEOUT,
    Status.CONNECT_ERROR,
    Status.CONNECTION_RESET,
    Status.DNS_ERROR,
    Status.TLS_ERROR,
    Status.TOO_LARGE,
    Status.TRUNCATED,
    Status.NOT_IMAGE,
    Status.BAD_URL,
    Status.BLOCKED_ADDRESS,
    Status.OPTED_OUT,
    Status.ROBOTS_DISALLOWED,
    Status.CANCELLED,
    Status.INTERNAL_ERROR,
    Status.TOO_SMALL,
    Status.IMAGE_TOO_LARGE,
    Status.BAD_ASPECT,
    Status.DECODE_ERROR,
    Status.HASH_MISMATCH,
)
ALL_STATUSES = (*SUCCESSES, *FAILURES)


def status_for_http(code: int) -> str:
    """The status of a row answered with HTTP ``code``: 404 -> "http_404"; codes without a
    status of their own fall into their class ("http_4xx")."""
    if code in NAMED_HTTP_CODES:
        return f"http_{code}"
    return f"http_{code // 100}xx"


# --- shard input and manifest ----------------------------------------------------------------

INPUT_COLUMNS = ("row", "url", "class", "key", "label")
"""Columns of a shard input file (``ShardSpec.input_path``), plus the passthrough columns."""
DUPLICATE_OF = "dup_of"
"""Optional input column: the job-wide row number of the row in the same shard that fetches this
row's URL. Such a row is not fetched; its manifest row points at the original's outcome."""
EXPECTED_HASH = "expected_hash"
"""Optional input column: the hex SHA-256 (64 digits) or MD5 (32) the downloaded bytes must
have; a row whose bytes differ is ``hash_mismatch``."""
RETRY_ROUND = "retry_round"
"""Optional input column of a ``retry-failed`` shard: its round (1 for the first retry round),
copied into the manifest column of the same name (0 for the job's first shards). An outcome
supersedes the outcomes of the same ``row`` in lower rounds, so the manifests alone say which
outcome of each input row is its latest. Manifests written before this column existed lack it:
their round is the ledger's."""

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
        ("width", pa.int32()),  # the stored image's size
        ("height", pa.int32()),
        ("orig_width", pa.int32()),  # the downloaded image's size, upright
        ("orig_height", pa.int32()),
        ("stored_bytes", pa.int64()),  # the stored image's size in bytes (bytes: downloaded)
        (RETRY_ROUND, pa.int32()),  # 0, or the retry round of this outcome (the highest wins)
    ]
)
"""A manifest's columns, followed by the passthrough columns (``manifest_column``)."""


def manifest_column(passthrough: str) -> str:
    """The manifest's name for an input column carried through: its own unless a manifest
    column has it."""
    return f"input_{passthrough}" if passthrough in MANIFEST_SCHEMA.names else passthrough


# --- the shard's files -----------------------------------------------------------------------


def partial_path(final: Path) -> Path:
    """Where ``final`` is written until it is complete."""
    return final.with_name(final.name + ".partial")


@dataclass(frozen=True)
class ShardFiles:
    """A shard's output files, in commit order (tar, manifest, stats): local ``Path``s, or
    ``storage.RemotePath``s when the output folder is a URL (``s3://bucket/prefix``)."""

    tar: Path
    manifest: Path
    stats: Path

    @classmethod
    def of(
        cls,
        output_dir: str | Path,
        shard_id: str,
        compress: bool,
        storage_options: dict[str, Any] | None = None,
    ) -> ShardFiles:
        folder: Any = Path(output_dir)
        if is_url(output_dir):
            folder = RemotePath.of(str(output_dir), storage_options)
        suffix = ".tar.gz" if compress else ".tar"
        return cls(
            folder / f"{shard_id}{suffix}",
            folder / f"{shard_id}.manifest.parquet",
            folder / f"{shard_id}_stats.json",
        )

    def __iter__(self) -> Iterator[Path]:
        return iter((self.tar, self.manifest, self.stats))

    def remove(self) -> None:
        """Delete the shard's output files, finished or partial."""
        for path in self:
            path.unlink(missing_ok=True)
            if isinstance(path, Path):  # an upload leaves no partial object
                partial_path(path).unlink(missing_ok=True)


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """Run ``write(partial_path)``, fsync the result and rename it to ``path``: a reader sees
    the old file or the whole new one, never a part."""
    partial = partial_path(path)
    try:
        write(partial)
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    fsync_directory(path.parent)


def write_text_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` (folders created, file mode ``mode``) with write_atomically."""

    def write(partial: Path) -> None:
        partial.write_text(text)
        partial.chmod(mode)

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, write)


# --- spec and result -------------------------------------------------------------------------

LAYOUTS = ("class", "webdataset")


@dataclass(frozen=True)
class HostShare:
    """A shard's share of one host's job-wide limits. The manager numbers the host's
    ``capacity`` units (``--per-host``, or fewer when the host has fewer rows) 0..capacity-1 and
    gives each running shard its own ``units``: one request in flight each. With ``host_rps``,
    the host's schedule is the wall-clock instants ``k / host_rps`` (``time.time()``, so workers
    on other machines agree up to their clocks' skew); instant ``k`` belongs to unit
    ``k % capacity``, and a shard sends a request only on the instants of its units. As the
    units of the running shards are disjoint, the host never gets more than ``host_rps``."""

    units: tuple[int, ...]
    capacity: int
    host_rps: float | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> HostShare:
        fields = known_fields(cls, values, "host share field")
        rate = fields.get("host_rps")
        return cls(
            units=tuple(int(unit) for unit in fields["units"]),
            capacity=int(fields["capacity"]),
            host_rps=None if rate is None else float(rate),
        )


@dataclass(frozen=True)
class ShardSpec:
    """One shard's work: what to read, where to write, and how."""

    shard_id: str
    """Also the file stem of the outputs."""
    input_path: str
    """A parquet file of ``INPUT_COLUMNS`` [+ ``DUPLICATE_OF``] + passthrough columns."""
    output_dir: str
    """A local folder, or an fsspec URL (``s3://bucket/prefix``): the shard is then written to
    a local temporary folder and its files uploaded in the commit order."""
    layout: str = "class"
    """"class": ``<class>/<key>.<ext>`` (ImageFolder); "webdataset": ``<key>.<ext>``,
    ``<key>.json``, ``<key>.cls``."""
    compress: bool = False
    """Write ``.tar.gz`` instead of ``.tar``."""
    passthrough: tuple[str, ...] = ()
    """Input columns copied into the manifest (``manifest_column`` names them there)."""
    fetch: FetchOptions = field(default_factory=FetchOptions)
    transform: TransformOptions = field(default_factory=TransformOptions)
    """What the stored images are: the originals (the default) or resized, re-encoded and
    filtered ones."""
    deadline_s: float = 3600.0
    """The shard's own deadline: past it, unfinished rows are ``cancelled`` and it commits."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    """fsspec options of a URL ``output_dir`` (endpoint, credentials, block size); empty: the
    client's standard places (``AWS_*`` variables, profiles)."""
    host_shares: dict[str, HostShare] = field(default_factory=dict)
    """This shard's share of the job-wide per-host limits, by host as yarl's ``URL.raw_host``
    spells it (IDNA, IPv6 without brackets, lower case), given by the manager
    (``ldawt.manager.hostcaps``) for the hosts whose rows could break a limit; hosts not named
    are held by the process's own limits only. In JSON: ``{host: {"units": [...], "capacity":
    C, "host_rps": r or null}}``."""

    @property
    def files(self) -> ShardFiles:
        return ShardFiles.of(self.output_dir, self.shard_id, self.compress, self.storage_options)

    @property
    def remote(self) -> bool:
        """The output folder is a URL."""
        return is_url(self.output_dir)

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON-able values (what a TaskVine FunctionCall carries)."""
        values = dataclasses.asdict(self)
        values["passthrough"] = list(self.passthrough)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ShardSpec:
        fields = known_fields(cls, values, "shard spec field")
        fields["fetch"] = FetchOptions.from_dict(fields.get("fetch") or {})
        fields["transform"] = TransformOptions.from_dict(fields.get("transform") or {})
        fields["passthrough"] = tuple(fields.get("passthrough") or ())
        fields["storage_options"] = dict(fields.get("storage_options") or {})
        fields["host_shares"] = {
            str(host): HostShare.from_dict(share)
            for host, share in (fields.get("host_shares") or {}).items()
        }
        return cls(**fields)

    def replace(self, **changes: Any) -> ShardSpec:
        return dataclasses.replace(self, **changes)


class ShardResult(TypedDict, total=False):
    """What a shard run returns (and, once committed, what its stats file holds). Always
    present: ``shard_id``, ``ok``, ``error``; the rest when the shard ran."""

    shard_id: str | None
    ok: bool
    """The shard committed its files."""
    error: str | None
    """Why it failed; for a committed shard, a note (e.g. its deadline passed)."""
    rows: int
    counts: dict[str, int]
    """Rows by status."""
    bytes: int
    """Body bytes downloaded."""
    members: int
    tar_bytes: int
    elapsed_s: float
    started_at: float
    tar_path: str
    manifest_path: str
    stats_path: str
    connections_new: int
    connections_reused: int
    throttled_hosts: list[ThrottledHost]
    """The hosts that pushed back on this shard's requests (at most ``throttles.TOP_HOSTS``,
    most first): per host its 429/503 answers (``throttled``), the host-wide pauses their
    Retry-After started (``pauses``) and the halvings of its concurrency limit (``halvings``)."""
    host: str
    pid: int
    # Added by the TaskVine library and engine:
    library_calls: int
    library_started_at: float
    metrics_port: int | None
    metrics_error: str
    attempts: int
    worker: str


class ProgressDelta(TypedDict, total=False):
    """What a running shard reports about once a second: rows finished since the previous
    report, by status, and body bytes downloaded. An engine's own note for the progress line
    (e.g. "no worker connected") comes with ``shard_id`` None and only ``note`` ("" clears it)."""

    shard_id: str | None
    counts: dict[str, int]
    bytes: int
    note: str


ProgressCallback = Callable[[ProgressDelta], None]

ERROR_MAX_CHARS = 2000


def describe_exception(exc: BaseException) -> str:
    """An exception in one line or a few: its type and message, no traceback."""
    return "".join(traceback.format_exception_only(exc)).strip() or type(exc).__name__


def failure_result(
    shard_id: str | None, error: str, started: float | None = None, host: str | None = None
) -> ShardResult:
    """The result of a shard that failed as a whole. ``started``: its ``time.monotonic()``
    when known, for ``elapsed_s``; ``host``: where it ran when that is not this process (then
    without a ``pid``)."""
    result = ShardResult(shard_id=shard_id, ok=False, error=error[:ERROR_MAX_CHARS])
    if host is None:
        result.update(host=socket.gethostname(), pid=os.getpid())
    else:
        result["host"] = host
    if started is not None:
        result["elapsed_s"] = time.monotonic() - started
    return result
