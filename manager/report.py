"""`ldawt-manager status` (from the ledger alone, instant) and `ldawt-manager report` (reads
every committed manifest: outcomes by status, host and class, throughput, slow hosts)."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ldawt.daemon.fetcher import errors

from .job import Job
from .ledger import DONE, Ledger, ShardRecord
from .outcomes import latest_outcomes
from .progress import format_duration

TOP = 10
THROUGHPUT_BUCKETS = 24
_HOST_PATTERN = r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(?P<host>\[[^\]]*\]|[^:/?#]+)"
NO_HOST = "(no host)"


def busy_seconds(shards: list[ShardRecord]) -> float:
    """Wall time during which at least one of the shards was running."""
    spans = sorted(
        (s.started_at, s.finished_at)
        for s in shards
        if s.started_at is not None and s.finished_at is not None
    )
    total, end = 0.0, float("-inf")
    for start, finish in spans:
        if finish > end:
            total += finish - max(start, end)
            end = finish
    return total


def status(ledger: Ledger) -> dict[str, Any]:
    shards = ledger.shards()
    done = [s for s in shards if s.state == DONE]
    counts = ledger.status_counts()
    planned_rows = (ledger.meta("plan") or {}).get("rows", 0)
    ok = sum(counts[s] for s in errors.SUCCESSES)
    with_outcome = sum(counts.values())
    busy = busy_seconds(done)
    rate = sum(s.rows for s in done) / busy if busy else 0.0
    to_run = sum(s.rows for s in shards if s.state != DONE)
    return {
        "shards": ledger.state_counts(),
        "rows": planned_rows,
        "rows_ok": ok,
        "rows_failed": with_outcome - ok,
        "rows_pending": planned_rows - with_outcome,
        "rows_to_run": to_run,
        "rows_per_s": rate,
        "eta_s": to_run / rate if rate and to_run else None,
    }


def format_status(job: Job, figures: dict[str, Any]) -> str:
    shards = figures["shards"]
    eta = "-" if figures["eta_s"] is None else format_duration(figures["eta_s"])
    return "\n".join(
        [
            f"job: {job.out}",
            "shards: " + ", ".join(f"{n:,} {state}" for state, n in shards.items()),
            f"rows: {figures['rows']:,} planned, {figures['rows_ok']:,} ok, "
            f"{figures['rows_failed']:,} failed, {figures['rows_pending']:,} pending",
            f"rate: {figures['rows_per_s']:,.0f} rows/s while running; "
            f"{figures['rows_to_run']:,} rows to run, ETA {eta}",
        ]
    )


def _hosts(urls: pa.ChunkedArray) -> pa.Array:
    found = pc.extract_regex(pc.fill_null(urls, ""), _HOST_PATTERN)
    return pc.fill_null(pc.struct_field(found, "host"), NO_HOST)


def report(job: Job, ledger: Ledger) -> dict[str, Any]:
    by_status: Counter[str] = Counter()
    host_status: dict[str, Counter[str]] = defaultdict(Counter)
    class_status: dict[str, Counter[str]] = defaultdict(Counter)
    host_ms: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for table in latest_outcomes(job, ledger, ["url", "class", "status", "elapsed_ms"]):
        table = table.append_column("host", _hosts(table.column("url")))
        for item in table.group_by(["host", "status"]).aggregate([("row", "count")]).to_pylist():
            host_status[item["host"]][item["status"]] += item["row_count"]
            by_status[item["status"]] += item["row_count"]
        for item in table.group_by(["class", "status"]).aggregate([("row", "count")]).to_pylist():
            class_status[item["class"]][item["status"]] += item["row_count"]
        fetched = table.filter(pc.equal(table.column("status"), errors.OK))
        for item in (
            fetched.group_by("host")
            .aggregate([("elapsed_ms", "sum"), ("row", "count")])
            .to_pylist()
        ):
            host_ms[item["host"]][0] += item["elapsed_ms_sum"] or 0.0
            host_ms[item["host"]][1] += item["row_count"]
    done = ledger.shards([DONE])
    rows = sum(by_status.values())
    ok = sum(by_status[s] for s in errors.SUCCESSES)
    nbytes = sum(s.bytes or 0 for s in done)
    busy = busy_seconds(done)
    images = {name: sum(c[s] for s in errors.SUCCESSES) for name, c in class_status.items()}
    ranked = sorted(images.items(), key=lambda item: (-item[1], item[0]))
    return {
        "job": str(job.out),
        "status": status(ledger),
        "totals": {
            "rows": rows,
            "ok": by_status[errors.OK],
            "duplicate": by_status[errors.DUPLICATE],
            "failed": rows - ok,
            "failure_rate": (rows - ok) / rows if rows else 0.0,
            "bytes": nbytes,
            "busy_s": busy,
            "images_per_s": sum(s.rows for s in done) / busy if busy else 0.0,
            "mb_per_s": nbytes / busy / 1e6 if busy else 0.0,
        },
        "by_status": dict(by_status.most_common()),
        "failures_by_host": _failures_by_host(host_status),
        "classes": {
            "count": len(images),
            "top": [{"class": c, "images": n} for c, n in ranked[:TOP]],
            "bottom": [{"class": c, "images": n} for c, n in ranked[-TOP:][::-1]],
        },
        "throughput": _throughput(done),
        "slowest_hosts": [
            {"host": host, "mean_ms": total / n, "images": n}
            for host, (total, n) in sorted(
                host_ms.items(), key=lambda item: -item[1][0] / max(1, item[1][1])
            )[:TOP]
            if n
        ],
    }


def _failures_by_host(host_status: dict[str, Counter[str]]) -> list[dict[str, Any]]:
    failing = []
    for host, counts in host_status.items():
        failures = {s: n for s, n in counts.items() if s not in errors.SUCCESSES}
        if failures:
            failing.append(
                {
                    "host": host,
                    "rows": sum(counts.values()),
                    "failed": sum(failures.values()),
                    "by_status": dict(Counter(failures).most_common()),
                }
            )
    return sorted(failing, key=lambda item: (-item["failed"], item["host"]))[: TOP * 2]


def _throughput(done: list[ShardRecord]) -> list[dict[str, Any]]:
    """Rows and bytes committed per interval, from the first shard start to the last commit."""
    timed = [s for s in done if s.started_at is not None and s.finished_at is not None]
    if not timed:
        return []
    start = min(s.started_at for s in timed)
    span = max(1.0, max(s.finished_at for s in timed) - start)
    width = span / THROUGHPUT_BUCKETS
    buckets = [{"rows": 0, "bytes": 0} for _ in range(THROUGHPUT_BUCKETS)]
    for shard in timed:
        index = min(THROUGHPUT_BUCKETS - 1, int((shard.finished_at - start) / width))
        buckets[index]["rows"] += shard.rows
        buckets[index]["bytes"] += shard.bytes or 0
    return [
        {
            "from": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start + i * width)),
            "seconds": width,
            **bucket,
        }
        for i, bucket in enumerate(buckets)
    ]


def format_report(figures: dict[str, Any]) -> str:
    totals = figures["totals"]
    lines = [
        f"job: {figures['job']}",
        f"rows: {totals['rows']:,} with an outcome: {totals['ok']:,} ok, "
        f"{totals['duplicate']:,} duplicate, {totals['failed']:,} failed "
        f"({100 * totals['failure_rate']:.1f}%)",
        f"bytes: {totals['bytes'] / 1e6:,.1f} MB in {format_duration(totals['busy_s'])} of "
        f"running: {totals['images_per_s']:,.0f} rows/s, {totals['mb_per_s']:,.1f} MB/s",
        "",
        "by status:",
        *(f"  {status:<16} {n:>12,}" for status, n in figures["by_status"].items()),
    ]
    if figures["failures_by_host"]:
        lines += ["", "failures by host:"]
        for item in figures["failures_by_host"]:
            detail = ", ".join(f"{s}={n:,}" for s, n in item["by_status"].items())
            lines.append(
                f"  {item['host']:<40} {item['failed']:>10,} of {item['rows']:,}  {detail}"
            )
    classes = figures["classes"]
    lines += ["", f"classes: {classes['count']:,}; most images:"]
    lines += [f"  {c['images']:>10,}  {c['class']}" for c in classes["top"]]
    lines += ["fewest images:"]
    lines += [f"  {c['images']:>10,}  {c['class']}" for c in classes["bottom"]]
    if figures["slowest_hosts"]:
        lines += ["", "slowest hosts (mean time per image):"]
        lines += [
            f"  {h['mean_ms']:>9,.0f} ms  {h['host']} ({h['images']:,} images)"
            for h in figures["slowest_hosts"]
        ]
    if figures["throughput"]:
        lines += ["", "throughput (rows and bytes committed per interval):"]
        lines += [
            f"  {b['from']}  {b['rows'] / b['seconds']:>10,.0f} rows/s  "
            f"{b['bytes'] / b['seconds'] / 1e6:>8,.1f} MB/s"
            for b in figures["throughput"]
        ]
    return "\n".join(lines)
