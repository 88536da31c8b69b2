"""Run one real job in a process of its own, with both metrics endpoints a deployment has.

Started by test_observability_prometheus.py as ``python observability_job.py '<json args>'``.
It starts the daemon's endpoint (``start_metrics_server``, as the library context does) and the
manager's (``start_manager_metrics_server``, as ``--metrics-port`` does) on free ports it can
report before the job starts; the manager's result loop relays every shard result itself.

Protocol, one JSON line each way: it prints ``{"daemon_port", "manager_port"}``, waits for a
line on stdin, runs the job, prints ``{"exit_status"}``, then serves until stdin closes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ldawt.daemon.fetcher.options import FetchOptions
from ldawt.daemon.metrics import start_metrics_server, watch_workspace
from ldawt.manager import metrics as manager_metrics
from ldawt.manager.engines.local import LocalEngine
from ldawt.manager.plan import PlanOptions
from ldawt.manager.submit import JobRequest, run_job


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
    manager_metrics.mark_job_start()
    status = run_job(request, LocalEngine(1))
    print(json.dumps({"exit_status": status}), flush=True)
    sys.stdin.read()  # serve the final values until the test has scraped them
    return 0


if __name__ == "__main__":
    sys.exit(main())
