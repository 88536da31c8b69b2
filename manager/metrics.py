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

from ldawt.daemon.fetcher.errors import ALL_STATUSES, DUPLICATE, OK, SUCCESSES
from ldawt.daemon.metrics import SHARD_BUCKETS, Endpoint, new_registry
from ldawt.daemon.packer.manifest import write_text_atomically

log = logging.getLogger(__name__)

REGISTRY = new_registry()

SHARD_STATES = ("pending", "running", "done", "failed")
ROW_OUTCOMES = (OK, DUPLICATE, "failed")
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


def write_worker_targets(
    path: str | os.PathLike[str], targets: Iterable[str], labels: Mapping[str, str] | None = None
) -> None:
    """Write Prometheus file-based discovery for the daemons' endpoints (``host:port``, as each
    library reports its chosen port), atomically, so Prometheus never reads half a file.

    Point a ``file_sd_configs`` entry of the ``ldawt-worker`` job at ``path``; Prometheus picks
    up every rewrite by itself.
    """
    destination = Path(path)
    entry = {"targets": sorted(set(targets)), "labels": dict(labels or {})}
    text = json.dumps([entry] if entry["targets"] else [], indent=2) + "\n"
    write_text_atomically(destination, text)


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
