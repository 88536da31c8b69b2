"""Prometheus metrics of the manager process, and the relay of workers' shard counters.

Two families live in the manager's own ``REGISTRY``:

* ``ldawt_manager_*``: the job as the manager sees it (shards by state, rows of committed shards
  by outcome, workers connected, FunctionCalls in flight, ETA). The manager loop sets them.
* ``ldawt_fleet_*``: the sums of the counters of every shard result the manager received
  (``record_shard_result``). Workers behind NAT cannot be scraped; one scrape of the manager
  still shows how much the fleet downloaded. They count work done, so a failed shard's rows count
  too (like the daemons' own ``ldawt_images_total``), while ``ldawt_manager_rows_total`` only
  counts the rows of committed shards.

Label values are bounded: statuses come from the closed taxonomy (anything else becomes
``other``), states and outcomes are fixed lists.

The manager also tells Prometheus where the daemons are: ``WorkerTargets`` keeps the endpoints
that shard results name in a file-based discovery file of the job folder (``TARGETS_FILE``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
)

from ldawt.daemon.contract import ALL_STATUSES, SUCCESSES, Status, write_text_atomically
from ldawt.daemon.metrics import SHARD_BUCKETS, Endpoint, new_registry

log = logging.getLogger(__name__)

REGISTRY = new_registry()

SHARD_STATES = ("pending", "running", "done", "failed")
ROW_OUTCOMES = (Status.OK, Status.DUPLICATE, "failed")
SHARD_OUTCOMES = ("done", "failed")
CONNECTION_KINDS = ("new", "reused")
OTHER_STATUS = "other"
_STATUS_LABELS = frozenset(ALL_STATUSES)

SHARDS = Gauge(
    "ldawt_manager_shards",
    "Shards of the job by state: pending (not yet submitted), running (submitted, no result yet),"
    " done (committed) or failed (gave up).",
    ["state"],
    registry=REGISTRY,
)
ROWS = Counter(
    "ldawt_manager_rows",
    "Rows of committed shards by outcome: ok, duplicate or failed.",
    ["outcome"],
    registry=REGISTRY,
)
WORKERS = Gauge(
    "ldawt_manager_workers_connected", "Workers connected to the manager.", registry=REGISTRY
)
FUNCTION_CALLS = Gauge(
    "ldawt_manager_function_calls_in_flight",
    "FunctionCalls submitted whose result has not come back yet.",
    registry=REGISTRY,
)
ETA = Gauge(
    "ldawt_manager_job_eta_seconds",
    "Estimated seconds until every shard is finished (NaN while unknown).",
    registry=REGISTRY,
)
JOB_START = Gauge(
    "ldawt_manager_job_start_time_seconds",
    "Unix time at which the manager started (or resumed) the job.",
    registry=REGISTRY,
)

FLEET_IMAGES = Counter(
    "ldawt_fleet_images",
    "Rows finished by the fleet, by result status, summed from shard results.",
    ["status"],
    registry=REGISTRY,
)
FLEET_BYTES = Counter(
    "ldawt_fleet_download_bytes",
    "Body bytes downloaded by the fleet, summed from shard results.",
    registry=REGISTRY,
)
FLEET_SHARDS = Counter(
    "ldawt_fleet_shards_finished",
    "Shard results received, by outcome (done: committed, failed).",
    ["outcome"],
    registry=REGISTRY,
)
FLEET_SHARD_DURATION = Histogram(
    "ldawt_fleet_shard_duration_seconds",
    "Wall time of one shard on its worker, from shard results.",
    buckets=SHARD_BUCKETS,
    registry=REGISTRY,
)
FLEET_CONNECTIONS = Counter(
    "ldawt_fleet_connections",
    "Connections used by the fleet, by kind (new or reused), summed from shard results.",
    ["kind"],
    registry=REGISTRY,
)

# Series exist (at 0) from the first scrape, so rate() and increase() see the first increments.
for _state in SHARD_STATES:
    SHARDS.labels(_state)
for _outcome in ROW_OUTCOMES:
    ROWS.labels(_outcome)
for _outcome in SHARD_OUTCOMES:
    FLEET_SHARDS.labels(_outcome)
for _kind in CONNECTION_KINDS:
    FLEET_CONNECTIONS.labels(_kind)
for _status in ALL_STATUSES:
    FLEET_IMAGES.labels(_status)
ETA.set(math.nan)


def _number(value: Any) -> float | None:
    """A result field as a finite number >= 0, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _amount(value: Any) -> float:
    return _number(value) or 0.0


def record_shard_result(result: Mapping[str, Any]) -> None:
    """Add one finished shard's counters (a ``run_shard`` result dict) to the fleet totals.

    Call it once per result received, committed or not. Never raises on odd input: unknown
    statuses count as ``other``, missing or negative numbers count as 0.
    """
    committed = bool(result.get("ok"))
    FLEET_SHARDS.labels("done" if committed else "failed").inc()
    counts = result.get("counts") or {}
    if not isinstance(counts, Mapping):
        counts = {}
    for status, rows in counts.items():
        n = _amount(rows)
        if not n:
            continue
        label = status if status in _STATUS_LABELS else OTHER_STATUS
        if label == OTHER_STATUS:
            log.warning("shard %s reported unknown status %r", result.get("shard_id"), status)
        FLEET_IMAGES.labels(label).inc(n)
        if committed:
            ROWS.labels(status if status in SUCCESSES else "failed").inc(n)
    FLEET_BYTES.inc(_amount(result.get("bytes")))
    FLEET_CONNECTIONS.labels("new").inc(_amount(result.get("connections_new")))
    FLEET_CONNECTIONS.labels("reused").inc(_amount(result.get("connections_reused")))
    elapsed = _number(result.get("elapsed_s"))
    if elapsed is not None:
        FLEET_SHARD_DURATION.observe(elapsed)


def set_shard_states(*, pending: int, running: int, done: int, failed: int) -> None:
    """Publish how many shards of the job are in each state (call after every change)."""
    for state, n in (
        ("pending", pending),
        ("running", running),
        ("done", done),
        ("failed", failed),
    ):
        SHARDS.labels(state).set(n)


def set_workers_connected(n: int) -> None:
    WORKERS.set(n)


def set_function_calls_in_flight(n: int) -> None:
    FUNCTION_CALLS.set(n)


def set_job_eta(seconds: float | None) -> None:
    """Seconds until the job should be finished; ``None`` while it cannot be estimated."""
    ETA.set(math.nan if seconds is None else seconds)


def mark_job_start(when: float | None = None) -> None:
    JOB_START.set(time.time() if when is None else when)


TARGETS_FILE = "prometheus-targets.json"
"""The job folder's Prometheus file-based discovery file, ``OUT/job/prometheus-targets.json``:
the ``/metrics`` endpoints of the library processes serving the current run (``WorkerTargets``)."""


def metrics_target(result: Mapping[str, Any]) -> str | None:
    """The ``host:port`` of the daemon endpoint a shard result names (the worker's ``host`` and
    its library's ``metrics_port``), or None: results of the local engine, failures that never
    reached a library and libraries without a metrics server name none."""
    port = result.get("metrics_port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        return None
    host = result.get("host")
    if not isinstance(host, str) or not host:
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _targets_text(targets: Iterable[str], labels: Mapping[str, str] | None) -> str:
    entry = {"targets": sorted(set(targets)), "labels": dict(labels or {})}
    return json.dumps([entry] if entry["targets"] else [], indent=2) + "\n"


def write_worker_targets(
    path: str | os.PathLike[str], targets: Iterable[str], labels: Mapping[str, str] | None = None
) -> None:
    """Write Prometheus file-based discovery for the daemons' endpoints (``host:port``, as each
    library reports its chosen port), atomically, so Prometheus never reads half a file: one
    target group with ``labels``, or ``[]`` when there is no target.

    Point a ``file_sd_configs`` entry of the ``ldawt-worker`` job at ``path``; Prometheus picks
    up every rewrite by itself.
    """
    write_text_atomically(Path(path), _targets_text(targets, labels))


class WorkerTargets:
    """The daemon endpoints named by the shard results of one run, kept in a file-discovery file
    (``write_worker_targets``) for Prometheus.

    A library process, and its ``/metrics``, lives only while its worker is connected to this
    manager (a vine_worker stops its libraries when the manager goes), so the file lists the
    current run's endpoints: opening replaces what an earlier run left there, ``add`` rewrites
    the file only when a result names an endpoint not listed yet, ``close`` empties it. Never
    raises on a file that cannot be written: the run goes on, and the next change tries again.
    """

    def __init__(self, path: str | os.PathLike[str], labels: Mapping[str, str] | None = None):
        self.path = Path(path)
        self.labels = dict(labels or {})
        self.targets: set[str] = set()
        self._written = True  # the file says what self.targets says
        try:
            self._written = self.path.read_text() == _targets_text((), self.labels)
        except FileNotFoundError:
            pass  # nothing to replace; no file until there is a target
        except (OSError, UnicodeDecodeError):
            self._written = False
        if not self._written:
            self._write()

    def add(self, result: Mapping[str, Any]) -> bool:
        """Take note of the endpoint a shard result names; True when the file was rewritten."""
        target = metrics_target(result)
        if target is None or target in self.targets:
            return False
        self.targets.add(target)
        return self._write()

    def close(self) -> None:
        """The run is over and its libraries with it: no target left in the file."""
        if self.targets or not self._written:
            self.targets.clear()
            self._write()

    def _write(self) -> bool:
        try:
            write_worker_targets(self.path, self.targets, self.labels)
        except OSError as exc:
            self._written = False
            log.warning("could not write the Prometheus targets file %s: %s", self.path, exc)
            return False
        self._written = True
        return True


_ENDPOINT = Endpoint(REGISTRY, "manager")


def start_manager_metrics_server(address: str, port: int) -> int:
    """Expose the manager's ``REGISTRY`` on ``http://address:port/metrics``; return the port.

    No fallback to another port: Prometheus is configured to scrape the manager at a fixed
    address, so a port in use raises ``OSError``. Port 0 picks a free port (tests). Later calls
    return the port already serving.
    """
    return _ENDPOINT.start(address, port, 1)


def stop_manager_metrics_server() -> None:
    _ENDPOINT.stop()
