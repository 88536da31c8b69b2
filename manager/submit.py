"""`ldawt-manager submit`: plan the job, run its shards on an engine, show progress, summarise."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ldawt.daemon.fetcher import errors

from .engines import Engine
from .inputs import ColumnMap, InputError, list_input_files, read_schema, resolve_columns
from .plan import JOB_SUBDIR, PlanOptions, plan_job
from .progress import Progress, format_duration


@dataclass(frozen=True)
class JobRequest:
    input: Path
    out: Path
    url_col: str | None
    class_col: str | None
    key_col: str | None
    passthrough: tuple[str, ...]
    plan: PlanOptions


def prepare_output(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {out}: {exc}") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(f"output folder {out} is not writable")


def shard_is_complete(spec: dict[str, Any]) -> bool:
    return (Path(spec["output_dir"]) / f"{spec['shard_id']}_stats.json").exists()


def run_job(request: JobRequest, engine: Engine, stream: TextIO = sys.stderr) -> int:
    """Plan and run a job; returns the process exit status (0: every shard committed)."""
    files = list_input_files(request.input)
    columns: ColumnMap = resolve_columns(
        read_schema(files[0]),
        request.url_col,
        request.class_col,
        request.key_col,
        request.passthrough,
    )
    prepare_output(request.out)
    print(
        f"ldawt: {len(files)} input file(s); url={columns.url} class={columns.class_ or '-'} "
        f"key={columns.key or '(from URL)'}",
        file=stream,
    )
    plan = plan_job(files, columns, request.out, request.plan)
    todo = [spec for spec in plan.specs if not shard_is_complete(spec)]
    print(
        f"ldawt: {plan.rows:,} rows in {len(plan.specs)} shard(s), {len(plan.specs) - len(todo)} "
        f"already done; {engine.describe()}",
        file=stream,
    )
    done_rows = sum(_stats_rows(spec) for spec in plan.specs if spec not in todo)
    progress = Progress(plan.rows, len(plan.specs), stream, done_rows, len(plan.specs) - len(todo))
    started = time.monotonic()
    results = []
    for result in engine.run(todo, progress.add):
        results.append(result)
        progress.shard_finished()
        if not result.get("ok"):
            print(f"\nldawt: shard {result['shard_id']} failed: {result.get('error')}", file=stream)
    progress.close()
    summary = summarise(request.out, plan.specs, time.monotonic() - started)
    (request.out / JOB_SUBDIR / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_summary(summary), file=stream)
    return 0 if all(r.get("ok") for r in results) else 1


def _stats_rows(spec: dict[str, Any]) -> int:
    stats = Path(spec["output_dir"]) / f"{spec['shard_id']}_stats.json"
    return int(json.loads(stats.read_text()).get("rows", 0))


def summarise(out: Path, specs: list[dict[str, Any]], elapsed_s: float) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    total_bytes = 0
    done = 0
    for spec in specs:
        stats_path = out / f"{spec['shard_id']}_stats.json"
        if not stats_path.exists():
            continue
        stats = json.loads(stats_path.read_text())
        counts.update(stats["counts"])
        total_bytes += stats["bytes"]
        done += 1
    ok = counts.get(errors.OK, 0) + counts.get(errors.DUPLICATE, 0)
    return {
        "shards": len(specs),
        "shards_done": done,
        "rows": sum(counts.values()),
        "ok": ok,
        "failed": sum(counts.values()) - ok,
        "by_status": dict(counts.most_common()),
        "bytes": total_bytes,
        "elapsed_s": round(elapsed_s, 3),
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"ldawt: {summary['shards_done']}/{summary['shards']} shards done, "
        f"{summary['ok']:,} images ok, {summary['failed']:,} failed, "
        f"{summary['bytes'] / 1e6:,.1f} MB in {format_duration(summary['elapsed_s'])}",
    ]
    failures = {
        s: n for s, n in summary["by_status"].items() if s not in (errors.OK, errors.DUPLICATE)
    }
    if failures:
        lines.append(
            "ldawt: failures by status: " + ", ".join(f"{s}={n:,}" for s, n in failures.items())
        )
    return "\n".join(lines)
