"""Hosts of URLs, as the per-host limits see them, and the rows each shard holds of each host.

The host counts of a planning (``HostCounter``) are one parquet file in the job's shard-inputs
folder, ``job/shards/host-counts/plan.parquet`` (``r1.parquet``, ... for retry rounds;
``counted-<first shard>.parquet`` for the shards of a job planned before the counts existed,
counted when it next runs): one row per shard and host, ``shard, host, rows, host_rows``
(``host_rows``: the host's rows in the whole planning), for the hosts with more than one row in
the planning. A host with one row is
fetched by one process, whose own limits hold it; the manager's job-wide limits
(``hostcaps``) need the others. The file's metadata lists every shard it covers, also those
holding no counted host. Written in bounded memory: counts spill by host, and each bucket is
summed alone. Reading the counts of the large hosts skips the rest (``read_counts``).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from yarl import URL

from ldawt.daemon.contract import describe_exception, write_atomically

from .errors import InputError
from .spill import Spill

_AUTHORITY = r"^(?i:https?)://(?P<authority>[^/?#]*)"
COUNTS_FOLDER = "host-counts"
_SHARDS_KEY = b"ldawt_shards"
_SPILLED = pa.schema([("shard", pa.string()), ("host", pa.string()), ("rows", pa.int64())])
COUNTS_SCHEMA = _SPILLED.append(pa.field("host_rows", pa.int64()))
# Row groups of each bucket in descending host_rows: a reader looking for large hosts skips
# the many groups of small ones by their statistics.
GROUP_ROWS = 65_536


def hosts_of(urls: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """The host of each http(s) URL as the daemon names it (yarl's ``URL.raw_host``: lower
    case, IDNA for a non-ASCII name, an IPv6 address without brackets), without user or port;
    null where there is none (the row would be ``bad_url``). Two simple patterns and a rarely
    needed third are several times faster than one that does it all; the rare non-ASCII and
    IPv6 hosts go through yarl once per distinct value."""
    trimmed = pc.utf8_trim_whitespace(urls.cast(pa.string()))
    authority = pc.struct_field(pc.extract_regex(trimmed, _AUTHORITY), [0])
    if pc.any(pc.match_substring(authority, "@")).as_py():
        authority = pc.replace_substring_regex(authority, r"^[^@]*@", "")
    host = pc.utf8_lower(pc.replace_substring_regex(authority, r":[0-9]*$", ""))
    host = pc.if_else(pc.equal(host, ""), pa.scalar(None, pa.string()), host)
    unusual = pc.or_(pc.invert(pc.string_is_ascii(host)), pc.starts_with(host, "["))
    if pc.any(unusual).as_py():
        host = pc.if_else(unusual, _raw_hosts(host), host)
    return host


def _raw_hosts(hosts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """yarl's spelling of each host; null where yarl refuses it (the URL is then bad)."""
    if isinstance(hosts, pa.ChunkedArray):
        hosts = hosts.combine_chunks()
    encoded = pc.dictionary_encode(hosts)
    return pc.take(
        pa.array([_raw_host(host) for host in encoded.dictionary.to_pylist()], pa.string()),
        encoded.indices,
    )


def _raw_host(host: str) -> str | None:
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return URL.build(scheme="http", host=bare).raw_host
    except (ValueError, UnicodeError):
        return None


def host_hashes(hosts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The CRC-32 of each host (null: 0), the same in every process (unlike Python's string
    hash), computed once per distinct host."""
    if isinstance(hosts, pa.ChunkedArray):
        hosts = hosts.combine_chunks()
    encoded = pc.dictionary_encode(hosts)
    of_value = pa.array(
        [zlib.crc32(host.encode()) for host in encoded.dictionary.to_pylist()], pa.int64()
    )
    return pc.fill_null(pc.take(of_value, encoded.indices), 0)


def host_buckets(hosts: pa.Array | pa.ChunkedArray, count: int) -> pa.Array:
    """A bucket in ``[0, count)`` for each host: ranges of ``host_hashes``, so that buckets
    taken in order hold the hosts in hash order, whatever ``count``."""
    return pc.shift_right(pc.multiply(host_hashes(hosts), count), 32)


def counts_path(shard_dir: Path, prefix: str) -> Path:
    """The host counts file of the planning whose shard ids start with ``prefix``."""
    return shard_dir / COUNTS_FOLDER / f"{prefix.rstrip('-') or 'plan'}.parquet"


class HostCounter:
    """Collects the rows per host of each shard as it is cut; ``finish`` writes the file."""

    def __init__(self, path: Path, spill_dir: Path, buckets: int) -> None:
        self.path = path
        self._spill = Spill(spill_dir, _SPILLED)
        self._buckets = buckets
        self._shards: list[str] = []

    def add(self, shard_id: str, urls: pa.Array | pa.ChunkedArray) -> None:
        self._shards.append(shard_id)
        found = pc.value_counts(hosts_of(urls).drop_null())
        hosts = found.field("values")
        table = pa.table(
            [pa.repeat(pa.scalar(shard_id), len(hosts)), hosts, found.field("counts")],
            schema=_SPILLED,
        )
        self._spill.write(table, host_buckets(hosts, self._buckets))

    def finish(self) -> None:
        """Write the counts of the hosts with more than one row, atomically."""
        buckets = self._spill.close()
        schema = COUNTS_SCHEMA.with_metadata({_SHARDS_KEY: json.dumps(self._shards)})

        def write(partial: Path) -> None:
            with pq.ParquetWriter(partial, schema) as writer:
                for bucket in buckets:
                    table = self._spill.read(bucket)
                    totals = table.group_by("host").aggregate([("rows", "sum")])
                    totals = totals.filter(pc.greater(totals["rows_sum"], 1))
                    totals = totals.rename_columns({"rows_sum": "host_rows"})
                    joined = table.join(totals, "host", join_type="inner")
                    joined = joined.sort_by([("host_rows", "descending")])
                    writer.write_table(joined.select(schema.names).cast(schema), GROUP_ROWS)

        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, write)


def read_counts(
    folder: Path, shard_ids: set[str], above: int
) -> tuple[dict[str, dict[str, int]], set[str]]:
    """From the count files in ``folder``: the rows by shard, for ``shard_ids``, of every host
    that may hold more than ``above`` rows among them (a superset: the caller sums and filters);
    and which of ``shard_ids`` the files cover. A host may be split over several files (a
    planning and its retry rounds, or shards counted later): a host with more than ``above``
    rows over ``n`` files has more than ``above // n`` in one of them, so those are found first
    by the files' statistics, then their rows read from every file."""
    covered: set[str] = set()
    paths = []
    for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else ():
        held = set(json.loads(_read_schema(path).metadata.get(_SHARDS_KEY, b"[]"))) & shard_ids
        if held:
            covered |= held
            paths.append(path)
    candidates: set[str] = set()
    for path in paths:
        found = _read(path, ["host"], [("host_rows", ">", above // len(paths))])
        candidates.update(found["host"].to_pylist())
    rows: dict[str, dict[str, int]] = {}
    if not candidates:
        return rows, covered
    wanted = pa.array(sorted(shard_ids), pa.string())
    for path in paths:
        table = _read(path, None, [("host", "in", sorted(candidates))])
        table = table.filter(pc.is_in(table["shard"], value_set=wanted))
        for shard, host, count in zip(
            table["shard"].to_pylist(),
            table["host"].to_pylist(),
            table["rows"].to_pylist(),
            strict=True,
        ):
            rows.setdefault(shard, {})[host] = count
    return rows, covered


def _read_schema(path: Path) -> pa.Schema:
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise _unreadable(path, exc) from exc
    if schema.metadata is None or _SHARDS_KEY not in schema.metadata:
        raise InputError(f"host counts {path} are not ldawt's (no list of shards); delete it")
    return schema


def _read(path: Path, columns: list[str] | None, filters: list) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns, filters=filters)
    except (OSError, pa.ArrowException) as exc:
        raise _unreadable(path, exc) from exc


def _unreadable(path: Path, exc: Exception) -> InputError:
    return InputError(
        f"cannot read the host counts {path} ({' '.join(describe_exception(exc).split())}); "
        "delete it to count the hosts again"
    )
