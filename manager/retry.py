"""`ldawt-manager retry-failed`: a new round of shards made of the rows whose latest outcome is
one of the chosen failures. Permanent failures (404, not an image, ...) are left alone unless
asked for by name."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ldawt.daemon.contract import (
    FAILURES,
    HTTP_STATUSES,
    RETRY_ROUND,
    FetchOptions,
    Status,
    manifest_column,
)

from .engines import Engine
from .errors import InputError
from .job import Job, JobRun, JobSettings
from .ledger import DONE
from .manifests import latest_outcomes
from .plan import PlanOptions, ShardWriter
from .reconcile import recover_interrupted
from .submit import execute

log = logging.getLogger(__name__)

# Failures that may well go away: the server or the network was unwell, or we gave up waiting.
TRANSIENT = (
    Status.TIMEOUT,
    Status.CONNECT_ERROR,
    Status.CONNECTION_RESET,
    Status.DNS_ERROR,
    Status.TRUNCATED,
    Status.CANCELLED,
    Status.INTERNAL_ERROR,
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
            chosen.update(FAILURES)
        elif name in ("http_4xx", "http_5xx"):
            chosen.update(s for s in HTTP_STATUSES if s.startswith(f"http_{name[5]}"))
        elif name in FAILURES:
            chosen.add(name)
        else:
            raise InputError(
                f"unknown status {name!r}; the failures are: {', '.join(FAILURES)}, all"
            )
    return frozenset(chosen)


def _failed_rows(run: JobRun, statuses: frozenset[str], round_: int) -> Iterator[pa.Table]:
    """The rows to retry, as shard input columns, each marked with ``round_`` (its manifest row
    then says that it supersedes the row's earlier outcomes)."""
    in_flight = pa.array(sorted(_rows_in_unfinished_retries(run)), pa.int64())
    passthrough = list(run.settings.passthrough)
    stored = [manifest_column(c) for c in passthrough]
    columns = ["url", "class", "key", "label", "status", *stored]
    chosen = pa.array(sorted(statuses), pa.string())
    for table in latest_outcomes(run, columns):
        mask = pc.is_in(table.column("status"), value_set=chosen)
        if len(in_flight):
            mask = pc.and_(mask, pc.invert(pc.is_in(table.column("row"), value_set=in_flight)))
        table = table.filter(mask)
        if table.num_rows:
            table = table.select(
                ["row", "url", "class", "key", "label", *stored, "status"]
            ).rename_columns(["row", "url", "class", "key", "label", *passthrough, PREVIOUS_STATUS])
            yield table.append_column(
                RETRY_ROUND, pa.repeat(pa.scalar(round_, pa.int32()), len(table))
            )


def _rows_in_unfinished_retries(run: JobRun) -> set[int]:
    rows: set[int] = set()
    for shard in run.ledger.shards():
        if shard.round > 0 and shard.state != DONE:
            path = run.job.out / shard.input_path
            rows.update(pq.read_table(path, columns=["row"]).column("row").to_pylist())
    return rows


def plan_retry(run: JobRun, statuses: frozenset[str]) -> tuple[int, int]:
    """Write and record the next round's shards; returns (rows, shards)."""
    job, ledger = run.job, run.ledger
    shaping = dict(ledger.meta("identity")["options"], groups=None)  # sized by its own rows
    round_ = 1 + max((s.round for s in ledger.shards()), default=0)
    counts = ledger.status_counts()
    expected = sum(n for status, n in counts.items() if status in statuses)
    writer = ShardWriter(
        job.shard_dir, job.spill_dir, PlanOptions.from_shaping(shaping), f"r{round_}-"
    )
    shards = writer.write(_failed_rows(run, statuses, round_), expected)
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


def retry_failed(
    out: Path,
    statuses: frozenset[str],
    engine: Engine,
    shard_retries: int,
    adjust_fetch: Callable[[FetchOptions], FetchOptions],
) -> int:
    """Plan a round of the rows whose latest outcome is one of ``statuses`` and run it, with
    the fetch options of the job's latest run as ``adjust_fetch`` changes them."""
    job = Job.existing(out)
    with job.lock(), job.open_ledger() as ledger:
        settings = JobSettings.load(ledger)
        options = settings.options
        fetch = adjust_fetch(options.fetch)
        run = JobRun(job, ledger, replace(settings, options=replace(options, fetch=fetch)))
        recover_interrupted(run)
        rows, shards = plan_retry(run, statuses)
        log.info(
            f"retrying {rows:,} row(s) with status {', '.join(sorted(statuses))} "
            f"in {shards} new shard(s)"
        )
        return execute(run, engine, shard_retries)
