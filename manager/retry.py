"""`ldawt-manager retry-failed`: a new round of shards made of the rows whose latest outcome is
one of the chosen failures. Permanent failures (404, not an image, ...) are left alone unless
asked for by name."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ldawt.daemon.fetcher import errors
from ldawt.daemon.fetcher.options import FetchOptions
from ldawt.daemon.packer.manifest import manifest_column

from .engines import Engine
from .inputs import InputError
from .job import Job
from .ledger import DONE, Ledger
from .outcomes import latest_outcomes
from .plan import PlanOptions, ShardWriter
from .submit import execute, take_over

# Failures that may well go away: the server or the network was unwell, or we gave up waiting.
TRANSIENT = (
    errors.TIMEOUT,
    errors.CONNECT_ERROR,
    errors.CONNECTION_RESET,
    errors.DNS_ERROR,
    errors.TRUNCATED,
    errors.CANCELLED,
    errors.INTERNAL_ERROR,
    "http_429",
    "http_500",
    "http_502",
    "http_503",
    "http_504",
    "http_5xx",
)
PREVIOUS_STATUS = "previous_status"


def parse_statuses(text: str | None) -> frozenset[str]:
    """``None``: the transient failures. Otherwise comma-separated statuses; ``http_4xx`` and
    ``http_5xx`` stand for their whole class, ``all`` for every failure."""
    if text is None:
        return frozenset(TRANSIENT)
    chosen: set[str] = set()
    for name in (n.strip() for n in text.split(",") if n.strip()):
        if name == "all":
            chosen.update(errors.FAILURES)
        elif name in ("http_4xx", "http_5xx"):
            chosen.update(s for s in errors.HTTP_STATUSES if s.startswith(f"http_{name[5]}"))
        elif name in errors.FAILURES:
            chosen.add(name)
        else:
            raise InputError(
                f"unknown status {name!r}; the failures are: {', '.join(errors.FAILURES)}, all"
            )
    return frozenset(chosen)


def _failed_rows(
    job: Job, ledger: Ledger, statuses: frozenset[str], passthrough: list[str]
) -> Iterator[pa.Table]:
    in_flight = pa.array(sorted(_rows_in_unfinished_retries(job, ledger)), pa.int64())
    stored = [manifest_column(c) for c in passthrough]
    columns = ["url", "class", "key", "label", "status", *stored]
    chosen = pa.array(sorted(statuses), pa.string())
    for table in latest_outcomes(job, ledger, columns):
        mask = pc.is_in(table.column("status"), value_set=chosen)
        if len(in_flight):
            mask = pc.and_(mask, pc.invert(pc.is_in(table.column("row"), value_set=in_flight)))
        table = table.filter(mask)
        if table.num_rows:
            yield table.select(
                ["row", "url", "class", "key", "label", *stored, "status"]
            ).rename_columns(["row", "url", "class", "key", "label", *passthrough, PREVIOUS_STATUS])


def _rows_in_unfinished_retries(job: Job, ledger: Ledger) -> set[int]:
    rows: set[int] = set()
    for shard in ledger.shards():
        if shard.round > 0 and shard.state != DONE:
            path = job.out / shard.input_path
            rows.update(pq.read_table(path, columns=["row"]).column("row").to_pylist())
    return rows


def plan_retry(job: Job, ledger: Ledger, statuses: frozenset[str]) -> tuple[int, int]:
    """Write and record the next round's shards; returns (rows, shards)."""
    identity = ledger.meta("identity")
    passthrough = identity["columns"]["passthrough"]
    shaping = dict(identity["options"], groups=None)  # a retry round is sized by its own rows
    round_ = 1 + max((s.round for s in ledger.shards()), default=0)
    counts = ledger.status_counts()
    expected = sum(n for status, n in counts.items() if status in statuses)
    writer = ShardWriter(job.shard_dir, job.spill_dir, PlanOptions(**shaping), f"r{round_}-")
    shards = writer.write(_failed_rows(job, ledger, statuses, passthrough), expected)
    replaces = {}
    for shard in shards:
        previous = pq.read_table(shard.input_path, columns=[PREVIOUS_STATUS]).column(0)
        replaces[shard.shard_id] = dict(Counter(previous.to_pylist()))
    ledger.add_shards(
        ((s.shard_id, str(s.input_path.relative_to(job.out)), s.rows) for s in shards),
        round_,
        {},
        replaces,
    )
    return writer.stats.rows, len(shards)


def open_job(out: Path) -> Job:
    job = Job(out)
    if not job.exists():
        raise InputError(f"{out} holds no ldawt job (no {job.ledger_path})")
    return job


def stored_options(ledger: Ledger) -> PlanOptions:
    """The job's shaping options with the fetch options of its latest run."""
    identity, run = ledger.meta("identity"), ledger.meta("run")
    if identity is None or run is None:
        raise InputError(
            f"the job in {ledger.path.parent.parent} was never fully planned; "
            "rerun its submit command"
        )
    return PlanOptions(
        **identity["options"],
        deadline_s=run["deadline_s"],
        fetch=FetchOptions.from_dict(run["fetch"]),
    )


def retry_failed(
    out: Path, statuses: frozenset[str], engine: Engine, shard_retries: int, stream: TextIO
) -> int:
    job = open_job(out)
    with job.lock(), job.open_ledger() as ledger:
        options = stored_options(ledger)
        take_over(job, ledger, options.compress, stream)
        rows, shards = plan_retry(job, ledger, statuses)
        print(
            f"ldawt: retrying {rows:,} row(s) with status {', '.join(sorted(statuses))} "
            f"in {shards} new shard(s)",
            file=stream,
        )
        passthrough = ledger.meta("identity")["columns"]["passthrough"]
        return execute(job, ledger, engine, options, passthrough, shard_retries, stream)
