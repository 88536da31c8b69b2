"""The engine-independent loop: hand the ledger's unfinished shards to an engine and record
each result in the ledger the moment it arrives."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from typing import Any

from . import metrics
from .engines import Engine
from .job import Job
from .ledger import DONE, FAILED, PLANNED, RUNNING, Ledger
from .outputs import NotCommitted, check_committed
from .plan import PlanOptions
from .progress import Progress

Notify = Callable[[str], None]


def record_result(
    job: Job, ledger: Ledger, result: dict[str, Any], rows: int, compress: bool
) -> str | None:
    """Record one engine result; returns None when the shard is committed and verified, else
    why it failed. A result that says ok is believed only once the files on disk check out."""
    shard_id = result["shard_id"]
    paths = job.output_paths(shard_id, compress)
    error = result.get("error") or "shard failed"
    if result.get("ok"):
        try:
            ledger.mark_done(shard_id, check_committed(paths, rows))
            return None
        except NotCommitted as exc:
            error = f"reported committed, but {exc}"
    paths.remove_outputs()
    ledger.mark_failed(shard_id, error, result.get("host"))
    return error


def publish_states(ledger: Ledger) -> None:
    """Shards by state on the manager's metrics endpoint."""
    counts = ledger.state_counts()
    metrics.set_shard_states(
        pending=counts[PLANNED], running=counts[RUNNING], done=counts[DONE], failed=counts[FAILED]
    )


def run_pending(
    job: Job,
    ledger: Ledger,
    engine: Engine,
    options: PlanOptions,
    passthrough: list[str],
    progress: Progress,
    shard_retries: int,
    notify: Notify,
) -> bool:
    """Run every planned or failed shard, failed ones up to ``shard_retries`` more times;
    True when none is left unfinished."""
    for _ in range(1 + shard_retries):
        todo = ledger.shards([PLANNED, FAILED])
        if not todo:
            return True
        rows = {shard.shard_id: shard.rows for shard in todo}
        specs = [job.spec(shard, options, passthrough) for shard in todo]
        ledger.mark_running(rows)
        with closing(engine.run(specs, progress.add)) as results:
            publish_states(ledger)
            for result in results:
                shard_id = result["shard_id"]
                error = record_result(job, ledger, result, rows[shard_id], options.compress)
                progress.shard_finished(result, committed=error is None)
                metrics.record_shard_result(result)
                publish_states(ledger)
                metrics.set_job_eta(progress.eta_seconds())
                if error is not None:
                    notify(f"shard {shard_id} failed: {error}")
                if ledger.reserve_used:
                    notify(
                        f"the disk holding {ledger.path} is full; stopping (shards still "
                        "running are run again next time)"
                    )
                    return False
    return not ledger.shards([PLANNED, FAILED])
