"""Job-wide per-host limits (``--per-host``, ``--host-rps`` for the whole job): the planner's
host counts, the manager's shares (``hostcaps``), a shard's own pacing (``shares``), and the
limits as a real origin sees them under the local engine's worker processes."""

from __future__ import annotations

from pathlib import Path

from fleet_caps import check_caps, recording_origin, run_capped_job


def test_local_worker_processes_share_the_per_host_limits(tmp_path: Path) -> None:
    with recording_origin() as (origin, base):
        stats = run_capped_job(tmp_path, base, "--engine", "local", "--workers", "3")
    check_caps(origin, stats)
