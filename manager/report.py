"""`ldawt-manager status` (from the ledger and the job's lock, instant: whether a manager runs
the job now) and `ldawt-manager report` (reads every committed manifest: outcomes by status, host
and class, rows the image checks refused, the sizes of the stored images, throughput, slow
hosts; and the shards' stats files: the hosts that throttled the job)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from itertools import chain, count
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ldawt.daemon.contract import SUCCESSES, Status, ThrottledHost, ThrottleLog
from ldawt.daemon.storage import readable

from .console import format_duration
from .hosts import hosts_of
from .job import Job, JobRun
from .ledger import DONE, RUNNING, Ledger, ShardRecord
from .manifests import latest_outcomes

log = logging.getLogger(__name__)

TOP = 10
THROUGHPUT_BUCKETS = 24
"""At most this many rows in the throughput table."""
NICE_WIDTHS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)
DAY_S = 86400
RESUME_HINT = "rerun the same submit command to resume"
NO_HOST = "(no host)"
IMAGE_CHECKS = {
    Status.TOO_SMALL: "shorter side below --min-image-size",
    Status.IMAGE_TOO_LARGE: "more pixels than --max-image-area or the decompression-bomb limit",
    Status.BAD_ASPECT: "longer / shorter side above --max-aspect-ratio",
    Status.DECODE_ERROR: "could not be decoded",
    Status.HASH_MISMATCH: "not the bytes --verify-hash-col names",
}
"""The statuses of downloaded images the image stage refused, and what each means."""
SIZE_COLUMNS = ("width", "height", "stored_bytes")
"""Manifest columns of the stored images' sizes; manifests written before them lack them."""
LONGER_SIDE_BOUNDS = (64, 128, 256, 512, 1024, 2048, 4096)
"""Upper bounds (px) of the buckets of the stored images' longer side; the last is open."""
SIGNIFICANT_DIGITS = 4
"""Size distributions count values to this many significant digits (exact below 10,000), so
their memory stays small whatever the job's size; minimum and maximum are exact."""


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


def status(ledger: Ledger, job: Job | None = None) -> dict[str, Any]:
    """Where the job stands, from its ledger and its lock (``job``: the ledger's own job unless
    given). ``manager_pid``: the ldawt-manager running the job now, or None. When none is, the
    ledger's ``running`` shards are counted as ``interrupted`` (nothing runs them; the next
    ``submit`` runs them again) and there is no ETA."""
    job = job or Job(ledger.path.parent.parent)
    manager_pid = job.manager_pid()
    shards = ledger.shards()
    done = [s for s in shards if s.state == DONE]
    states = ledger.state_counts()
    counts = ledger.status_counts()
    planned_rows = (ledger.meta("plan") or {}).get("rows", 0)
    ok = sum(counts[s] for s in SUCCESSES)
    with_outcome = sum(counts.values())
    busy = busy_seconds(done)
    rate = sum(s.rows for s in done) / busy if busy else 0.0
    to_run = sum(s.rows for s in shards if s.state != DONE)
    running = manager_pid is not None
    return {
        "shards": states,
        "planned": ledger.meta("identity") is not None,
        "manager_pid": manager_pid,
        "interrupted": 0 if running else states[RUNNING],
        "rows": planned_rows,
        "rows_ok": ok,
        "rows_failed": with_outcome - ok,
        "rows_pending": planned_rows - with_outcome,
        "rows_to_run": to_run,
        "rows_per_s": rate,
        "eta_s": to_run / rate if running and rate and to_run else None,
    }


def format_status(job: Job, figures: dict[str, Any]) -> str:
    return "\n".join([f"job: {job.out}", *_status_lines(figures)])


def _status_lines(figures: dict[str, Any]) -> list[str]:
    pid = figures["manager_pid"]
    shards = dict(figures["shards"])
    finished = figures["planned"] and not figures["rows_to_run"]
    if pid is not None:
        manager = f"running (pid {pid or '?'})"
    elif finished:
        manager = "not running; every shard is done"
    elif not figures["planned"]:
        manager = f"not running; planning did not finish: {RESUME_HINT}"
    else:
        manager = f"not running; {RESUME_HINT}"
    if figures["interrupted"]:
        shards = {("interrupted" if state == RUNNING else state): n for state, n in shards.items()}
    if pid is not None:
        eta = "-" if figures["eta_s"] is None else format_duration(figures["eta_s"])
        rate = (
            f"rate: {figures['rows_per_s']:,.0f} rows/s while running; "
            f"{figures['rows_to_run']:,} rows to run, ETA {eta}"
        )
    else:
        ran = figures["rows_per_s"]
        past = f"{ran:,.0f} rows/s while it ran" if ran else "- (no shard done yet)"
        rate = f"rate: {past}; {figures['rows_to_run']:,} rows to run"
    return [
        f"manager: {manager}",
        "shards: " + ", ".join(f"{n:,} {state}" for state, n in shards.items()),
        f"rows: {figures['rows']:,} planned, {figures['rows_ok']:,} ok, "
        f"{figures['rows_failed']:,} failed, {figures['rows_pending']:,} pending",
        rate,
    ]


def report(run: JobRun) -> dict[str, Any]:
    job, ledger = run.job, run.ledger
    by_status: Counter[str] = Counter()
    host_status: dict[str, Counter[str]] = defaultdict(Counter)
    class_status: dict[str, Counter[str]] = defaultdict(Counter)
    host_ms: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for table in latest_outcomes(run, ["url", "class", "status", "elapsed_ms"]):
        table = table.append_column("host", pc.fill_null(hosts_of(table.column("url")), NO_HOST))
        for item in table.group_by(["host", "status"]).aggregate([("row", "count")]).to_pylist():
            host_status[item["host"]][item["status"]] += item["row_count"]
            by_status[item["status"]] += item["row_count"]
        for item in table.group_by(["class", "status"]).aggregate([("row", "count")]).to_pylist():
            class_status[item["class"]][item["status"]] += item["row_count"]
        fetched = table.filter(pc.equal(table.column("status"), Status.OK))
        for item in (
            fetched.group_by("host")
            .aggregate([("elapsed_ms", "sum"), ("row", "count")])
            .to_pylist()
        ):
            host_ms[item["host"]][0] += item["elapsed_ms_sum"] or 0.0
            host_ms[item["host"]][1] += item["row_count"]
    done = ledger.shards([DONE])
    rows = sum(by_status.values())
    ok = sum(by_status[s] for s in SUCCESSES)
    nbytes = sum(s.bytes or 0 for s in done)
    busy = busy_seconds(done)
    # Rates are of the work done while running: every round's rows, retried rows once per round.
    rows_run = sum(s.rows for s in done)
    images_run = sum(s.counts.get(Status.OK, 0) for s in done)
    images = {name: sum(c[s] for s in SUCCESSES) for name, c in class_status.items()}
    ranked = sorted(images.items(), key=lambda item: (-item[1], item[0]))
    return {
        "job": str(job.out),
        "status": status(ledger, job),
        "totals": {
            "rows": rows,
            "ok": by_status[Status.OK],
            "duplicate": by_status[Status.DUPLICATE],
            "failed": rows - ok,
            "failure_rate": (rows - ok) / rows if rows else 0.0,
            "bytes": nbytes,
            "busy_s": busy,
            "rows_per_s": rows_run / busy if busy else 0.0,
            "images_per_s": images_run / busy if busy else 0.0,
            "mb_per_s": nbytes / busy / 1e6 if busy else 0.0,
        },
        "by_status": dict(by_status.most_common()),
        "failures_by_host": _failures_by_host(host_status),
        "throttled_hosts": throttled_hosts(run),
        "classes": {
            "count": len(images),
            "top": [{"class": c, "images": n} for c, n in ranked[:TOP]],
            "bottom": [{"class": c, "images": n} for c, n in ranked[-TOP:][::-1]],
        },
        "filtered": _filtered(by_status),
        "stored_images": stored_images(run),
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
        failures = {s: n for s, n in counts.items() if s not in SUCCESSES}
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


def throttled_hosts(run: JobRun) -> list[ThrottledHost]:
    """The hosts that pushed back on the job (the shards' stats name them, each its top ones),
    most first: 429/503 answers, host-wide pauses and concurrency-limit halvings, summed over
    the committed shards (every round's)."""
    totals = ThrottleLog()
    malformed = 0
    for shard in run.ledger.shards([DONE]):
        try:
            stats = json.loads(run.files(shard.shard_id).stats.read_text())
        except (OSError, ValueError):  # gone since it was checked: the other shards still tell
            continue
        items = (stats.get("throttled_hosts") or []) if isinstance(stats, dict) else None
        if not isinstance(items, list):  # the file or its list is not what ldawt writes
            malformed += 1
            continue
        malformed += sum(not totals.add(item) for item in items)
    if malformed:
        log.warning(
            f"skipped {malformed} malformed throttled_hosts entries in the shards' stats files "
            "(written by another ldawt version?); the hosts that throttled the job may be "
            "incomplete"
        )
    return totals.top(TOP * 2)


def _filtered(by_status: Counter[str]) -> dict[str, Any]:
    """Rows the image stage refused (filters, undecodable images, hash mismatches), by status
    (most first; a duplicate of a refused row counts too, as in ``by_status``)."""
    counts = Counter({s: by_status[s] for s in IMAGE_CHECKS if by_status[s]})
    return {"rows": sum(counts.values()), "by_status": dict(counts.most_common())}


class Distribution:
    """Counts of non-negative integers to ``SIGNIFICANT_DIGITS`` significant digits, with the
    exact minimum and maximum; nearest-rank percentiles."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.low: int | None = None
        self.high: int | None = None

    def add(self, values: pa.Array | pa.ChunkedArray) -> None:
        values = pc.drop_null(values)
        if not len(values):
            return
        extremes = pc.min_max(values).as_py()
        self.low = extremes["min"] if self.low is None else min(self.low, extremes["min"])
        self.high = extremes["max"] if self.high is None else max(self.high, extremes["max"])
        for item in pc.value_counts(_significant(values)).to_pylist():
            self.counts[item["values"]] += item["counts"]

    def percentile(self, share: float) -> int | None:
        """The smallest value at least ``share`` of the values are not above."""
        total = sum(self.counts.values())
        if self.low is None or self.high is None or not total:
            return None
        rank, seen = max(1, math.ceil(share * total)), 0
        for value in sorted(self.counts):
            seen += self.counts[value]
            if seen >= rank:  # a rounded value may pass the exact extremes
                return min(max(value, self.low), self.high)
        raise AssertionError("unreachable: the counts add up to the total")

    def summary(self) -> dict[str, int | None]:
        return {
            "min": self.low,
            "median": self.percentile(0.5),
            "p95": self.percentile(0.95),
            "max": self.high,
        }


def _significant(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    as_float = pc.cast(values, pa.float64())
    digits = pc.floor(pc.log10(pc.max_element_wise(as_float, 1.0)))
    scale = pc.power(10.0, pc.max_element_wise(pc.subtract(digits, SIGNIFICANT_DIGITS - 1), 0.0))
    return pc.cast(pc.multiply(pc.round(pc.divide(as_float, scale)), scale), pa.int64())


def stored_images(run: JobRun) -> dict[str, Any] | None:
    """The sizes of the stored images (rows ``ok``) from the manifests' size columns: count,
    min / median / p95 / max of width, height and stored bytes, and the longer side in
    buckets. None when no committed manifest has the columns (written by an ldawt before
    them); ``not_recorded`` counts the images of manifests without them.

    Every manifest is read as it is: an ``ok`` row is never run again (retry rounds take
    failures only), so no later round replaces it."""
    widths, heights, stored = Distribution(), Distribution(), Distribution()
    longer_side = [0] * (len(LONGER_SIDE_BOUNDS) + 1)
    images = unmeasured = not_recorded = stored_total = downloaded_total = 0
    recorded = False
    for shard in run.ledger.shards([DONE]):
        path = run.files(shard.shard_id).manifest
        if not set(SIZE_COLUMNS) <= set(pq.read_schema(readable(path)).names):
            not_recorded += shard.counts.get(Status.OK, 0)
            continue
        recorded = True
        table = pq.read_table(readable(path), columns=["status", "bytes", *SIZE_COLUMNS])
        table = table.filter(pc.equal(table.column("status"), Status.OK))
        if not table.num_rows:
            continue
        images += table.num_rows
        stored_total += pc.sum(table.column("stored_bytes")).as_py() or 0
        downloaded_total += pc.sum(table.column("bytes")).as_py() or 0
        stored.add(table.column("stored_bytes"))
        measured = table.filter(
            pc.and_(pc.is_valid(table.column("width")), pc.is_valid(table.column("height")))
        )
        unmeasured += table.num_rows - measured.num_rows
        widths.add(measured.column("width"))
        heights.add(measured.column("height"))
        longer = pc.max_element_wise(measured.column("width"), measured.column("height"))
        below = 0
        for index, bound in enumerate(LONGER_SIDE_BOUNDS):
            within = pc.sum(pc.less_equal(longer, bound)).as_py() or 0
            longer_side[index] += within - below
            below = within
        longer_side[-1] += measured.num_rows - below
    if not recorded:
        return None
    lows = (1, *(bound + 1 for bound in LONGER_SIDE_BOUNDS))
    highs = (*LONGER_SIDE_BOUNDS, None)
    return {
        "images": images,
        "unmeasured": unmeasured,
        "not_recorded": not_recorded,
        "stored_bytes_total": stored_total,
        "downloaded_bytes_total": downloaded_total,
        "width": widths.summary(),
        "height": heights.summary(),
        "stored_bytes": stored.summary(),
        "longer_side": [
            {"min": low, "max": high, "images": n}
            for low, high, n in zip(lows, highs, longer_side, strict=True)
            if n
        ],
    }


def bucket_width(start: float, end: float, most: int = THROUGHPUT_BUCKETS) -> tuple[float, int]:
    """The narrowest "nice" width (1 s, 2 s, 5 s, ... 1 min, 2 min, ... 1 h, ... days) whose
    buckets, aligned to the width in local time, cover ``start``..``end`` in at most ``most``;
    returns (the first bucket's start, the width in seconds)."""
    offset = time.localtime(start).tm_gmtoff
    days = (DAY_S * n for n in (1, 2, 7))
    weeks = (DAY_S * 7 * 2**k for k in count(1))  # without end: 2, 4, 8 weeks...
    widths = chain(NICE_WIDTHS_S, days, weeks)
    for width in widths:
        first = math.floor((start + offset) / width) * width - offset
        if math.ceil((end - first) / width) <= most:
            return first, width
    raise AssertionError("unreachable: the widths grow without bound")


def _spread(
    started: float, finish: float, first: float, width: float, buckets: int
) -> Iterator[tuple[int, float]]:
    """(bucket, share of a shard's work) over the buckets its run time overlaps."""
    start = min(started, finish)  # the clock of the host that ran it may disagree with ours
    last = min(buckets - 1, int((finish - first) // width))
    if finish <= start:
        yield last, 1.0
        return
    for index in range(max(0, int((start - first) // width)), last + 1):
        low, high = first + index * width, first + (index + 1) * width
        overlap = min(high, finish) - max(low, start)
        if overlap > 0:
            yield index, overlap / (finish - start)


def _whole(shares: list[float]) -> list[int]:
    """Fractional amounts as whole numbers with the same running total (so the same sum)."""
    whole, total, before = [], 0.0, 0
    for share in shares:
        total += share
        whole.append(round(total) - before)
        before = round(total)
    return whole


def _throughput(done: list[ShardRecord]) -> list[dict[str, Any]]:
    """Rows, images (rows ``ok``) and bytes per interval, from the first shard start to the last
    commit, in at most THROUGHPUT_BUCKETS buckets of a nice width (``bucket_width``).

    Each shard's work is spread evenly over its own run time (started_at..finished_at) rather
    than put in the bucket where it was committed: shards commit in bursts, so counting them at
    commit makes a table of spikes and zeros whose rates no process ever reached. Amounts are
    whole numbers whose sums are the job's. Rates divide by the bucket's width, so the first and
    last buckets, which the job only partly fills, read lower."""
    timed = [
        (s, s.started_at, s.finished_at)
        for s in done
        if s.started_at is not None and s.finished_at is not None
    ]
    if not timed:
        return []
    start = min(min(started, finish) for _, started, finish in timed)
    end = max(finish for _, _, finish in timed)
    first, width = bucket_width(start, end)
    buckets = max(1, math.ceil((end - first) / width))
    shares = {name: [0.0] * buckets for name in ("rows", "images", "bytes")}
    for shard, started, finish in timed:
        amounts = {
            "rows": shard.rows,
            "images": shard.counts.get(Status.OK, 0),
            "bytes": shard.bytes or 0,
        }
        for index, share in _spread(started, finish, first, width, buckets):
            for name, amount in amounts.items():
                shares[name][index] += amount * share
    whole = {name: _whole(values) for name, values in shares.items()}
    return [
        {
            "from": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(first + i * width)),
            "seconds": width,
            **{name: values[i] for name, values in whole.items()},
        }
        for i in range(buckets)
    ]


def _format_width(seconds: float) -> str:
    for unit, size in (("d", DAY_S), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size:.0f} {unit}"
    return f"{seconds:g} s"


def format_report(figures: dict[str, Any]) -> str:
    totals = figures["totals"]
    lines = [f"job: {figures['job']}"]
    if not figures["status"]["shards"][DONE]:
        # Nothing committed yet (planned, running or interrupted): the ledger is all there is.
        lines += _status_lines(figures["status"])
        lines += ["no shard is committed yet: nothing to report beyond the status above"]
        return "\n".join(lines)
    lines += [
        f"rows: {totals['rows']:,} with an outcome: {totals['ok']:,} ok, "
        f"{totals['duplicate']:,} duplicate, {totals['failed']:,} failed "
        f"({100 * totals['failure_rate']:.1f}%)",
        f"bytes: {totals['bytes'] / 1e6:,.1f} MB in {format_duration(totals['busy_s'])} of "
        f"running: {totals['rows_per_s']:,.0f} rows/s, {totals['images_per_s']:,.0f} images/s, "
        f"{totals['mb_per_s']:,.1f} MB/s",
        "",
        "by status:",
        *(f"  {status:<16} {n:>12,}" for status, n in figures["by_status"].items()),
    ]
    filtered = figures["filtered"]
    if filtered["rows"]:
        lines += ["", f"refused by the image checks: {filtered['rows']:,} rows"]
        lines += [
            f"  {status:<16} {n:>12,}  {IMAGE_CHECKS[status]}"
            for status, n in filtered["by_status"].items()
        ]
    if figures["failures_by_host"]:
        lines += ["", "failures by host:"]
        for item in figures["failures_by_host"]:
            detail = ", ".join(f"{s}={n:,}" for s, n in item["by_status"].items())
            lines.append(
                f"  {item['host']:<40} {item['failed']:>10,} of {item['rows']:,}  {detail}"
            )
    if figures["throttled_hosts"]:
        lines += [
            "",
            "hosts that throttled the job (429/503 answers, pauses for their Retry-After, "
            "limit halvings; at least: each shard names its 20 most throttled hosts):",
            f"  {'host':<40} {'429/503':>10} {'pauses':>8} {'halvings':>9}",
        ]
        lines += [
            f"  {h['host']:<40} {h['throttled']:>10,} {h['pauses']:>8,} {h['halvings']:>9,}"
            for h in figures["throttled_hosts"]
        ]
    classes = figures["classes"]
    lines += ["", f"classes: {classes['count']:,}; most images:"]
    lines += [f"  {c['images']:>10,}  {c['class']}" for c in classes["top"]]
    lines += ["fewest images:"]
    lines += [f"  {c['images']:>10,}  {c['class']}" for c in classes["bottom"]]
    lines += _stored_lines(figures["stored_images"])
    if figures["slowest_hosts"]:
        lines += ["", "slowest hosts (mean time per image):"]
        lines += [
            f"  {h['mean_ms']:>9,.0f} ms  {h['host']} ({h['images']:,} images)"
            for h in figures["slowest_hosts"]
        ]
    if figures["throughput"]:
        width = _format_width(figures["throughput"][0]["seconds"])
        lines += ["", f"throughput per {width} (each shard's work spread over its run time):"]
        lines += [
            f"  {b['from'].replace('T', ' ')}  {b['rows'] / b['seconds']:>10,.0f} rows/s  "
            f"{b['images'] / b['seconds']:>10,.0f} images/s  "
            f"{b['bytes'] / b['seconds'] / 1e6:>8,.1f} MB/s"
            for b in figures["throughput"]
        ]
    return "\n".join(lines)


def _stored_lines(stored: dict[str, Any] | None) -> list[str]:
    """The stored images' sizes; nothing when no manifest records them."""
    if stored is None or not (stored["images"] or stored["not_recorded"]):
        return []
    lines = [
        "",
        f"stored images: {stored['images']:,}, {stored['stored_bytes_total'] / 1e6:,.1f} MB "
        f"stored of {stored['downloaded_bytes_total'] / 1e6:,.1f} MB downloaded",
    ]
    if stored["unmeasured"]:
        lines.append(f"  {stored['unmeasured']:,} stored as downloaded without a readable size")
    if stored["not_recorded"]:
        lines.append(
            f"  {stored['not_recorded']:,} more in manifests written before ldawt recorded sizes"
        )
    if not stored["images"]:
        return lines
    lines.append(f"  {'':<14}{'min':>10}{'median':>10}{'p95':>10}{'max':>10}")
    for name, label in (("width", "width px"), ("height", "height px"), ("stored_bytes", "bytes")):
        figures = stored[name]
        if figures["min"] is not None:
            values = [figures[k] for k in ("min", "median", "p95", "max")]
            lines.append(f"  {label:<14}" + "".join(f"{v:>10,}" for v in values))
    measured = sum(b["images"] for b in stored["longer_side"])
    if measured:
        lines.append("  longer side:")
        for bucket in stored["longer_side"]:
            low, high, n = bucket["min"], bucket["max"], bucket["images"]
            span = f"{low:,}-{high:,} px" if high else f"over {low - 1:,} px"
            lines.append(f"    {span:<16}{n:>10,}  {100 * n / measured:5.1f}%")
    return lines
