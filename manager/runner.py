"""The engine-independent loop: hand the ledger's unfinished shards to an engine and record
each result in the ledger the moment it arrives (and in the manager's metrics, and the daemon
endpoints it names in the job's Prometheus targets file)."""

from __future__ import annotations

import logging
import socket
from contextlib import closing

from ldawt.daemon.contract import ShardResult

from . import metrics
from .console import ProgressDisplay
from .engines import Engine
from .hostcaps import HostShares
from .job import JobRun
from .ledger import DONE, FAILED, PLANNED, RUNNING, Ledger
from .reconcile import NotCommitted, check_committed

log = logging.getLogger(__name__)


def record_result(run: JobRun, result: ShardResult, rows: int) -> str | None:
    """Record one engine result; returns None when the shard is committed and verified, else
    why it failed. A result that says ok is believed only once the files on disk check out."""
    shard_id = result["shard_id"]
    files = run.files(shard_id)
    error = result.get("error") or "shard failed"
    if result.get("ok"):
        try:
            run.ledger.mark_done(shard_id, check_committed(files, rows))
            return None
        except NotCommitted as exc:
            error = f"reported committed, but {exc}"
    files.remove()
    run.ledger.mark_failed(shard_id, error, result.get("host"))
    return error


def publish_states(ledger: Ledger) -> None:
    """Shards by state on the manager's metrics endpoint."""
    counts = ledger.state_counts()
    metrics.set_shard_states(
        pending=counts[PLANNED], running=counts[RUNNING], done=counts[DONE], failed=counts[FAILED]
    )


def run_pending(run: JobRun, engine: Engine, progress: ProgressDisplay, shard_retries: int) -> bool:
    """Run every planned or failed shard, failed ones up to ``shard_retries`` more times;
    True when none is left unfinished."""
    ledger = run.ledger
    with closing(worker_targets(run)) as targets:
        for _ in range(1 + shard_retries):
            todo = ledger.shards([PLANNED, FAILED])
            if not todo:
                return True
            rows = {shard.shard_id: shard.rows for shard in todo}
            specs = [run.spec(shard) for shard in todo]
            shares = HostShares.of_run(run, specs)
            ledger.mark_running(rows)
            with closing(engine.run(specs, progress.add, shares)) as results:
                publish_states(ledger)
                for result in results:
                    shard_id = result["shard_id"]
                    error = record_result(run, result, rows[shard_id])
                    progress.shard_finished(result, committed=error is None)
                    metrics.record_shard_result(result)
                    targets.add(result)
                    publish_states(ledger)
                    metrics.set_job_eta(progress.eta_seconds())
                    if error is not None:
                        log.warning(f"shard {shard_id} failed: {error}")
                    if ledger.reserve_used:
                        log.warning(
                            f"the disk holding {ledger.path} is full; stopping (shards still "
                            "running are run again next time)"
                        )
                        return False
        return not ledger.shards([PLANNED, FAILED])


def worker_targets(run: JobRun) -> metrics.WorkerTargets:
    """The run's Prometheus targets file, ``OUT/job/prometheus-targets.json``: the /metrics
    endpoint of every library process that returned a result, labelled with the job's output
    folder and the manager's host name. Emptied when the run ends, as its libraries end."""
    labels = {"ldawt_job": str(run.job.out), "ldawt_manager": socket.gethostname()}
    return metrics.WorkerTargets(run.job.folder / metrics.TARGETS_FILE, labels)
