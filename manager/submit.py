"""`ldawt-manager submit`: plan a job once, then run its unfinished shards; rerun to resume."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ldawt.daemon.fetcher import errors

from .engines import Engine
from .inputs import (
    ColumnMap,
    InputError,
    Labeler,
    check_files,
    estimate_rows,
    list_input_files,
    read_schema,
    resolve_columns,
    shard_tables,
)
from .job import Job, JobIdentity
from .ledger import DONE, Ledger
from .outputs import reconcile, stop_orphans
from .plan import PlanOptions, ShardWriter
from .progress import Progress, format_duration
from .runner import run_pending


@dataclass(frozen=True)
class JobRequest:
    input: Path
    out: Path
    url_col: str | None
    class_col: str | None
    key_col: str | None
    passthrough: tuple[str, ...]
    plan: PlanOptions
    force_new: bool = False
    shard_retries: int = 2


def prepare_output(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {out}: {exc}") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(f"output folder {out} is not writable")


def run_job(request: JobRequest, engine: Engine, stream: TextIO | None = None) -> int:
    """Plan (unless already planned) and run a job; returns the exit status (0: all done)."""
    stream = stream or sys.stderr
    files = list_input_files(request.input)
    columns = resolve_columns(
        read_schema(files[0]),
        request.url_col,
        request.class_col,
        request.key_col,
        request.passthrough,
    )
    check_files(files, columns)
    prepare_output(request.out)
    identity = JobIdentity.of(files, columns, request.plan)
    job = Job(request.out)
    with job.lock():
        ledger = _resume_or_replace(job, job.open_ledger(), identity, request.force_new, stream)
        try:
            if ledger.meta("identity") is None:
                plan(job, ledger, files, columns, identity, request.plan, stream)
            take_over(job, ledger, request.plan.compress, stream)
            return execute(
                job,
                ledger,
                engine,
                request.plan,
                list(columns.passthrough),
                request.shard_retries,
                stream,
            )
        finally:
            ledger.close()


def take_over(job: Job, ledger: Ledger, compress: bool, stream: TextIO) -> None:
    """Before running: stop what a killed manager left running, then make the ledger and the
    output folder agree."""
    orphans = stop_orphans(job)
    if orphans:
        print(
            f"ldawt: stopped {len(orphans)} worker process(es) a killed manager of this job "
            "left running",
            file=stream,
        )
    reconcile(job, ledger, compress)


def run_meta(options: PlanOptions) -> dict[str, Any]:
    """The options a job may change from run to run; retry-failed reuses the latest."""
    return {"run": {"fetch": options.fetch.to_dict(), "deadline_s": options.deadline_s}}


def _resume_or_replace(
    job: Job, ledger: Ledger, identity: JobIdentity, force_new: bool, stream: TextIO
) -> Ledger:
    recorded = ledger.meta("identity")
    if recorded is None:
        return ledger
    differences = identity.differences(recorded)
    if not differences:
        print(f"ldawt: resuming the job in {job.out}", file=stream)
        return ledger
    if not force_new:
        ledger.close()
        raise InputError(
            f"{job.out} holds a job planned from other inputs or options:\n  - "
            + "\n  - ".join(differences)
            + "\nrerun with the original inputs and options to resume it, or pass --force-new "
            "to discard it (its shard files too) and start over"
        )
    print(f"ldawt: --force-new: discarding the job in {job.out}", file=stream)
    job.discard(ledger, recorded["options"]["compress"])
    return job.open_ledger()


def plan(
    job: Job,
    ledger: Ledger,
    files: list[Path],
    columns: ColumnMap,
    identity: JobIdentity,
    options: PlanOptions,
    stream: TextIO,
) -> None:
    """Write the shard inputs and record them, with the job's identity, in one transaction."""
    print(
        f"ldawt: planning {len(files)} input file(s); url={columns.url} "
        f"class={columns.class_ or '-'} key={columns.key or '(from URL)'}",
        file=stream,
    )
    started = time.monotonic()
    shutil.rmtree(job.shard_dir, ignore_errors=True)  # left by a planning that was killed
    labeler = Labeler()
    writer = ShardWriter(job.shard_dir, job.spill_dir, options)
    shards = writer.write(shard_tables(files, columns, labeler), estimate_rows(files))
    stats = writer.stats.to_dict()
    if not stats["rows"]:
        raise InputError(f"the input ({', '.join(map(str, files))}) holds no rows")
    (job.folder / "classes.json").write_text(
        json.dumps(list(labeler.index), ensure_ascii=False, indent=0) + "\n"
    )
    stats["shards"] = len(shards)
    job.write_description(identity, {"plan": stats})
    ledger.add_shards(
        ((s.shard_id, str(s.input_path.relative_to(job.out)), s.rows) for s in shards),
        0,
        {"identity": identity.to_dict(), "plan": stats, **run_meta(options)},
    )
    print(
        f"ldawt: planned {stats['rows']:,} rows into {len(shards)} shard(s) in "
        f"{time.monotonic() - started:.1f}s: {stats['bad_url']:,} bad URLs, "
        f"{stats['duplicates']:,} duplicate URLs, {stats['classes']:,} classes "
        f"({stats['unknown_class']:,} rows in class {'unknown'!r})",
        file=stream,
    )


def execute(
    job: Job,
    ledger: Ledger,
    engine: Engine,
    options: PlanOptions,
    passthrough: list[str],
    shard_retries: int,
    stream: TextIO,
) -> int:
    """Run what is unfinished (after ``take_over``) and summarise."""
    ledger.set_meta(run_meta(options))
    shards = ledger.shards()
    done = [s for s in shards if s.state == DONE]
    print(
        f"ldawt: {len(shards)} shard(s), {len(done)} already done; {engine.describe()}",
        file=stream,
    )
    progress = Progress(
        sum(s.rows for s in shards),
        len(shards),
        stream,
        sum(s.rows for s in done),
        len(done),
    )
    started = time.monotonic()
    finished = run_pending(
        job,
        ledger,
        engine,
        options,
        passthrough,
        progress,
        shard_retries,
        lambda message: print(f"\nldawt: {message}", file=stream),
    )
    progress.close()
    print(format_summary(ledger, time.monotonic() - started), file=stream)
    if not finished:
        print("ldawt: some shards failed; rerun the same command to retry them", file=stream)
    return 0 if finished else 1


def format_summary(ledger: Ledger, elapsed_s: float) -> str:
    states = ledger.state_counts()
    counts = ledger.status_counts()
    ok = sum(counts[s] for s in errors.SUCCESSES)
    failed = sum(counts.values()) - ok
    nbytes = sum(s.bytes or 0 for s in ledger.shards([DONE]))
    lines = [
        f"ldawt: {states[DONE]}/{sum(states.values())} shards done, {ok:,} images ok, "
        f"{failed:,} failed, {nbytes / 1e6:,.1f} MB; this run took {format_duration(elapsed_s)}"
    ]
    failures = _failures(counts)
    if failures:
        lines.append(
            "ldawt: failures by status: " + ", ".join(f"{s}={n:,}" for s, n in failures.items())
        )
    return "\n".join(lines)


def _failures(counts: dict[str, int]) -> dict[str, Any]:
    return {
        status: n
        for status, n in sorted(counts.items(), key=lambda item: -item[1])
        if status not in errors.SUCCESSES
    }
