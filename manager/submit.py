"""`ldawt-manager submit`: plan a job once, then run its unfinished shards; rerun to resume."""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldawt.daemon import storage
from ldawt.daemon.contract import SUCCESSES, FetchOptions, Status

from .console import ProgressDisplay, format_duration
from .engines import Engine
from .errors import EXIT_JOB_FAILED, EXIT_OK, InputError
from .formats import InputFile, InputSource
from .index import update_index
from .inputs import (
    ClassLabels,
    ColumnMap,
    carried_columns,
    check_files,
    estimate_rows,
    list_input_files,
    read_schema,
    resolve_columns,
    shard_tables,
)
from .job import Job, JobIdentity, JobRun, JobSettings
from .ledger import DONE, Ledger
from .plan import PlanOptions, ShardWriter
from .reconcile import recover_interrupted
from .runner import run_pending

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobRequest:
    input: InputSource | Path
    out: Path
    url_col: str | None
    class_col: str | None
    key_col: str | None
    passthrough: tuple[str, ...]
    plan: PlanOptions
    force_new: bool = False
    shard_retries: int = 2
    verify_hash_col: str | None = None
    output: str | None = None
    """An fsspec URL for the shard files (``out`` then holds the job folder only)."""
    storage_options: dict[str, Any] | None = None


def prepare_output(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {out}: {exc}") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(f"output folder {out} is not writable")


def run_job(request: JobRequest, engine: Engine) -> int:
    """Plan (unless already planned) and run a job; returns the exit status (0: all done)."""
    files = list_input_files(request.input)
    columns = resolve_columns(
        read_schema(files[0]),
        request.url_col,
        request.class_col,
        request.key_col,
        request.passthrough,
        request.verify_hash_col,
    )
    check_files(files, columns)
    prepare_output(request.out)
    if request.output is not None:
        try:  # before any shard runs: client, credentials, bucket
            storage.probe(request.output, request.storage_options)
        except storage.StorageError as exc:
            raise InputError(str(exc)) from exc
    identity = JobIdentity.of(files, columns, request.plan)
    job = Job(request.out, request.output, request.storage_options)
    if request.output is None:
        job.output, job.storage_options = None, {}  # a local job, whatever an earlier run did
    with job.lock():
        job.record_output()
        ledger = _resume_or_replace(job, job.open_ledger(), identity, request.force_new)
        with ledger:
            settings = JobSettings(request.plan, carried_columns(columns.to_dict()))
            run = JobRun(job, ledger, settings)
            if ledger.meta("identity") is None:
                plan(run, files, columns, identity)
            recover_interrupted(run)
            return execute(run, engine, request.shard_retries)


def _resume_or_replace(job: Job, ledger: Ledger, identity: JobIdentity, force_new: bool) -> Ledger:
    recorded = ledger.meta("identity")
    if recorded is None:
        return ledger
    differences = identity.differences(recorded)
    if not differences:
        log.info("resuming the job in %s", job.out)
        return ledger
    if not force_new:
        ledger.close()
        raise InputError(
            f"{job.out} holds a job planned from other inputs or options:\n  - "
            + "\n  - ".join(differences)
            + "\nrerun with the original inputs and options to resume it, or pass --force-new "
            "to discard it (its shard files too) and start over"
        )
    log.info("--force-new: discarding the job in %s", job.out)
    JobRun(job, ledger, JobSettings.load(ledger)).discard()
    return job.open_ledger()


def plan(run: JobRun, files: list[InputFile], columns: ColumnMap, identity: JobIdentity) -> None:
    """Write the shard inputs and record them, with the job's identity, in one transaction."""
    log.info(
        f"planning {len(files)} input file(s); url={columns.url} "
        f"class={columns.class_ or '-'} key={columns.key or '(from URL)'}"
    )
    job, options = run.job, run.settings.options
    started = time.monotonic()
    shutil.rmtree(job.shard_dir, ignore_errors=True)  # left by a planning that was killed
    class_labels = ClassLabels()
    writer = ShardWriter(job.shard_dir, job.spill_dir, options)
    shards = writer.write(shard_tables(files, columns, class_labels), estimate_rows(files))
    stats = writer.stats.to_dict()
    if not stats["rows"]:
        raise InputError(f"the input ({', '.join(map(str, files))}) holds no rows")
    (job.folder / "classes.json").write_text(
        json.dumps(list(class_labels.index), ensure_ascii=False, indent=0) + "\n"
    )
    stats["shards"] = len(shards)
    job.write_description(identity, {"plan": stats})
    run.ledger.add_shards(
        ((s.shard_id, str(s.input_path.relative_to(job.out)), s.rows) for s in shards),
        0,
        {"identity": identity.to_dict(), "plan": stats, **run.settings.run_meta()},
    )
    log.info(
        f"planned {stats['rows']:,} rows into {len(shards)} shard(s) in "
        f"{time.monotonic() - started:.1f}s: {stats['bad_url']:,} bad URLs, "
        f"{stats['duplicates']:,} duplicate URLs, {stats['classes']:,} classes "
        f"({stats['unknown_class']:,} rows in class 'unknown')"
    )


def execute(run: JobRun, engine: Engine, shard_retries: int) -> int:
    """Run what is unfinished (after ``recover_interrupted``), bring the job's index up to date
    and summarise; returns the exit status."""
    ledger = run.ledger
    ledger.set_meta(run.settings.run_meta())
    shards = ledger.shards()
    done = [s for s in shards if s.state == DONE]
    log.info(f"{len(shards)} shard(s), {len(done)} already done; {engine.describe()}")
    # Rows of unfinished retry shards run again: their earlier outcomes no longer count.
    counts = ledger.status_counts()
    for shard in shards:
        if shard.state != DONE:
            counts.subtract(shard.replaces)
    total_rows = (ledger.meta("plan") or {}).get("rows", 0)
    progress = ProgressDisplay(total_rows, len(shards), +counts, len(done))
    started = time.monotonic()
    with progress:
        finished = run_pending(run, engine, progress, shard_retries)
    update_index(run)  # also after failed shards: what is committed, the rest pending
    for line in format_summary(ledger, time.monotonic() - started):
        log.info(line)
    for hint in failure_hints(ledger.status_counts(), run.settings.options.fetch, run.job.out):
        log.warning(hint)
    if not finished:
        log.warning("some shards failed; rerun the same command to retry them")
        return EXIT_JOB_FAILED
    return EXIT_OK


def format_summary(ledger: Ledger, elapsed_s: float) -> list[str]:
    states = ledger.state_counts()
    counts = ledger.status_counts()
    images, duplicates = counts[Status.OK], counts[Status.DUPLICATE]
    failed = sum(counts.values()) - images - duplicates
    nbytes = sum(s.bytes or 0 for s in ledger.shards([DONE]))
    # duplicate rows point at another row's image: rows, not images
    also = f" (+{duplicates:,} duplicate rows)" if duplicates else ""
    lines = [
        f"{states[DONE]}/{sum(states.values())} shards done, {images:,} images ok{also}, "
        f"{failed:,} failed, {nbytes / 1e6:,.1f} MB; this run took {format_duration(elapsed_s)}"
    ]
    failures = _failures(counts)
    if failures:
        lines.append("failures by status: " + ", ".join(f"{s}={n:,}" for s, n in failures.items()))
    return lines


# A share of the job's rows failing with one status for a reason an option changes: worth
# saying at the end which option, since a plain rerun resumes and fetches nothing again.
HINT_SHARE = 0.1


def failure_hints(counts: Counter[str], fetch: FetchOptions, out: Path) -> list[str]:
    """What to do about the statuses that failed a large share of the job's rows."""
    rows = sum(counts.values())
    options = {
        Status.BLOCKED_ADDRESS: (
            "their hosts resolve to loopback or private addresses",
            "--allow-private",
            not fetch.allow_private,
        ),
        Status.TLS_ERROR: (
            "their servers' certificates were not trusted",
            "--ca-file FILE (or --insecure)",
            fetch.tls_verify and fetch.ca_file is None,
        ),
        Status.TOO_LARGE: (
            f"their bodies passed --max-bytes {fetch.max_bytes}",
            "--max-bytes N",
            True,
        ),
        Status.TIMEOUT: (
            f"they took longer than --timeout {fetch.total_timeout:g}",
            "--timeout S (and --read-timeout S)",
            True,
        ),
        "http_429": ("their servers asked to slow down", "--per-host N or --host-rps R", True),
    }
    hints = []
    for status, (why, flag, applies) in options.items():
        n = counts.get(status, 0)
        if applies and rows and n >= HINT_SHARE * rows:
            hints.append(
                f"{n:,} of {rows:,} rows failed with {status}: {why}. To fetch them again with "
                f"another setting: ldawt-manager retry-failed {shlex.quote(str(out))} "
                f"--status {status} {flag} (rerunning submit resumes the job and fetches "
                "nothing again)"
            )
    return hints


def _failures(counts: dict[str, int]) -> dict[str, Any]:
    return {
        status: n
        for status, n in sorted(counts.items(), key=lambda item: -item[1])
        if status not in SUCCESSES
    }
