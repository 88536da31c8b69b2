"""Run one real job in a process of its own, with both metrics endpoints a deployment has.

Started by test_observability_prometheus.py as ``python observability_job.py '<json args>'``.
It does what the deployment wiring does: the daemon's endpoint (``start_metrics_server``, as the
library context calls it), the manager's endpoint (``start_manager_metrics_server``, as
``--metrics-port`` does), and every shard result relayed to the fleet totals
(``record_shard_result``) plus the shard-state gauges.

Protocol, one JSON line each way: it prints ``{"daemon_port", "manager_port"}``, waits for a
line on stdin, runs the job, prints ``{"exit_status"}``, then serves until stdin closes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ldawt.daemon.fetcher.options import FetchOptions
from ldawt.daemon.metrics import start_metrics_server, watch_workspace
from ldawt.manager import metrics as manager_metrics
from ldawt.manager.engines import Engine, Progress
from ldawt.manager.engines.local import LocalEngine
from ldawt.manager.plan import PlanOptions
from ldawt.manager.submit import JobRequest, run_job


class RelayingEngine:
    """Wraps an engine: publishes shard states and relays each result to the manager metrics."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner

    def describe(self) -> str:
        return f"{self.inner.describe()}, results relayed to the manager's metrics"

    def run(self, specs: list[dict[str, Any]], progress: Progress) -> Iterator[dict[str, Any]]:
        done = failed = 0
        manager_metrics.mark_job_start()
        manager_metrics.set_shard_states(pending=0, running=len(specs), done=0, failed=0)
        for result in self.inner.run(specs, progress):
            manager_metrics.record_shard_result(result)
            done, failed = (done + 1, failed) if result.get("ok") else (done, failed + 1)
            manager_metrics.set_shard_states(
                pending=0, running=len(specs) - done - failed, done=done, failed=failed
            )
            yield result


def main() -> int:
    args = json.loads(sys.argv[1])
    out = Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    daemon_port = start_metrics_server("127.0.0.1", 0, 1)
    manager_port = manager_metrics.start_manager_metrics_server("127.0.0.1", 0)
    watch_workspace(out)
    print(json.dumps({"daemon_port": daemon_port, "manager_port": manager_port}), flush=True)
    sys.stdin.readline()
    request = JobRequest(
        Path(args["input"]),
        out,
        None,
        None,
        None,
        (),
        PlanOptions(shard_size=args["shard_size"], fetch=FetchOptions(**args["fetch"])),
    )
    status = run_job(request, RelayingEngine(LocalEngine(1)))
    print(json.dumps({"exit_status": status}), flush=True)
    sys.stdin.read()  # serve the final values until the test has scraped them
    return 0


if __name__ == "__main__":
    sys.exit(main())
