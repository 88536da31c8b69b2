"""Job-wide per-host limits under the TaskVine engine: three real vine_workers (``ldawt-worker``
processes started by ``--local-workers 3``), each running shards in its own library process,
share ``--per-host 6 --host-rps 100`` as a loopback origin sees them."""

from __future__ import annotations

from pathlib import Path

import pytest
from fleet_caps import check_caps, recording_origin, run_capped_job

pytestmark = [pytest.mark.taskvine, pytest.mark.timeout(600)]


def test_taskvine_workers_share_the_per_host_limits(tmp_path: Path) -> None:
    with recording_origin() as (origin, base):
        stats = run_capped_job(
            tmp_path, base, "--engine", "taskvine", "--local-workers", "3",
            "--library-memory-mb", "300", "--library-disk-mb", "300",
        )  # fmt: skip
    check_caps(origin, stats)
