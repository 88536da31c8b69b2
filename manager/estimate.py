"""`ldawt-manager estimate INPUT`: how big a job would be, how much of it would fail and how
long it would take, from the headers of a sample of its URLs.

Method
------
1. **Count.** The URL column is read once, in batches, with the functions ``submit`` uses
   (``inputs``): rows per host (the host as the per-host limits see it: lower case, no port),
   and the rows without an http(s) URL with a host, which a job records as ``bad_url``: those
   are counted exactly, never sampled.
2. **Stratify.** Each host expected to receive at least ``MIN_STRATUM_SAMPLE`` rows of a sample
   allocated in proportion to rows is a stratum of its own; the rest of the hosts (the long tail
   of a LAION-style list) together form one more stratum, "other hosts". The ``--sample`` rows
   are allocated to the strata in proportion to their rows (largest remainders, at least two per
   stratum that has two rows).
3. **Sample.** Every row gets a pseudo-random key from its row number and ``--seed``
   (splitmix64), so the sample does not depend on batch sizes; a second read of the URL column
   takes, in each stratum, the rows with the smallest keys: a simple random sample without
   replacement within each stratum, the same for the same input and seed.
4. **Probe.** The sampled URLs are asked for their size with headers only (``HEAD``, or a
   ``GET`` of the first byte where HEAD is refused or names no size; see
   ``ldawt.daemon.fetcher.probe``), under the job's rules: ``--concurrency``, ``--per-host``,
   ``--host-rps``, retries, time limits, the address guard and ``--allow-private``. Each sampled
   row ends with the status a download would give it, and the size the server names.
5. **Estimate.** A row's bytes ``y`` are its size when it would download (status ok, size
   known, not above ``--max-bytes``) and 0 otherwise: failed rows and rows whose size is unknown
   count as failures, with 0 bytes. The stratified estimator of the total is
   ``T = sum_h N_h * mean_h(y)`` over the strata (``N_h`` rows, ``n_h`` sampled), with variance
   ``V = sum_h N_h^2 * (1 - n_h/N_h) * s_h^2 / n_h`` (``s_h^2`` the stratum's sample variance;
   the finite-population factor makes a full census exact), and the 95% interval is
   ``T +- t * sqrt(V)`` with Student's t at the Welch-Satterthwaite degrees of freedom, clipped
   at 0. Failure rates by status are the stratified means of each status's indicator, weighted
   by ``N_h / N`` (``bad_url`` rows with their exact share).

What the estimate cannot see: an image the job would refuse from its bytes (``not_image``,
the image checks; the share answered with a non-image Content-Type is shown as a hint), and
duplicate URLs, which a job fetches once but which count once per row here. The time is rows
divided by ``--rate``, the rate a job runs at.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from ldawt.daemon.contract import FetchOptions, Status

from .argtypes import at_least
from .console import LOG_INTERVAL_S
from .errors import InputError
from .formats import InputSource
from .hosts import hosts_of
from .inputs import (
    ColumnMap,
    check_files,
    iter_batches,
    list_input_files,
    read_schema,
    resolve_columns,
)

if TYPE_CHECKING:  # the prober itself is imported by estimate(), where it runs
    from ldawt.daemon.fetcher.probe import Probe

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Estimate what a job of INPUT would download, before running it: sample its rows "
    "(stratified by host), ask their URLs for their size with headers only (HEAD, or a GET of "
    "the first byte where HEAD is refused or names no size) under the same limits as a job "
    "(the downloading options below), and print the total bytes with a 95% interval, the rows "
    "that would fail by status, the rows per host and the time at --rate. Reads INPUT like "
    "submit; downloads no image."
)
EXIT_HELP = (
    "exit status: 0 when the estimate was printed; 2 for a usage or input error (nothing was "
    "probed); 130 when interrupted."
)

SAMPLE_DEFAULT = 1000
RATE_DEFAULT = 2000.0
"""Images per second: about what one machine's local engine does (bench/RESULTS.md: 2,154 to
3,066 images/s on 2 CPUs, over loopback)."""
TOP_DEFAULT = 10
CONFIDENCE = 0.95
MIN_STRATUM_SAMPLE = 2
"""Sampled rows a host must be expected to receive to be a stratum of its own (a stratum's
variance needs two)."""
MAX_TRACKED_HOSTS = 500_000
"""Distinct hosts counted exactly; past it the hosts with the fewest rows so far are dropped
from the count (they stay in "other hosts"), so memory does not grow with the input."""
OTHER_HOSTS = "(other hosts)"
SIZE_UNKNOWN = "size_unknown"
"""A sampled row that answered but named no size (not a job status: counted as 0 bytes)."""
# Candidates kept per stratum in the sampling read: n + MARGIN_SIGMAS * sqrt(n) + MARGIN_ROWS
# expected, so that a stratum ends with fewer than n only with negligible probability.
MARGIN_SIGMAS = 5.0
MARGIN_ROWS = 10.0
_U64 = pa.uint64()
_MASK64 = (1 << 64) - 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``estimate`` beyond INPUT, the URL column and the downloading options."""
    parser.add_argument(
        "--sample",
        type=at_least(1),
        default=SAMPLE_DEFAULT,
        help="rows to probe, spread over the hosts in proportion to their rows; all rows when "
        "the input has fewer (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="chooses the sample: the same input and seed probe the same rows (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=_positive,
        default=RATE_DEFAULT,
        help="images per second the job would run at, for its time: about 2000 is what one "
        "machine's local engine did in bench/RESULTS.md (2,154-3,066 images/s on 2 CPUs over "
        "loopback); give the sum over your workers (default: %(default)s)",
    )
    parser.add_argument(
        "--top",
        type=at_least(1),
        default=TOP_DEFAULT,
        help="hosts listed, most rows first (default: %(default)s)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print JSON instead of text (default: off)"
    )


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0 or math.isinf(number):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return number


@dataclass(frozen=True)
class EstimateRequest:
    input: InputSource | str | Path
    """What ``inputs.list_input_files`` takes: with ``--input-format``, an ``InputSource``."""
    url_col: str | None = None
    sample: int = SAMPLE_DEFAULT
    seed: int = 0
    rate: float = RATE_DEFAULT
    top: int = TOP_DEFAULT
    fetch: FetchOptions = field(default_factory=FetchOptions)


# --- reading the input -----------------------------------------------------------------------


def _splitmix(values: pa.Array) -> pa.Array:
    """splitmix64's finaliser on uint64 values (arithmetic wraps, as it should)."""

    def mix(z: pa.Array, shift: int, factor: int | None) -> pa.Array:
        z = pc.bit_wise_xor(z, pc.shift_right(z, pa.scalar(shift, _U64)))
        return z if factor is None else pc.multiply(z, pa.scalar(factor, _U64))

    z = pc.add(values, pa.scalar(0x9E3779B97F4A7C15, _U64))
    return mix(mix(mix(z, 30, 0xBF58476D1CE4E5B9), 27, 0x94D049BB133111EB), 31, None)


def _seed_mask(seed: int) -> int:
    z = _splitmix(pa.array([seed & _MASK64], _U64))
    return z[0].as_py()


def row_keys(first_row: int, count: int, seed: int) -> pa.Array:
    """Uniform keys in [0, 1) for rows ``first_row ..``: a bijection of the row number and the
    seed, so the same rows get the same keys however the input is batched."""
    rows = pc.add(_counting(count), pa.scalar(first_row, _U64))
    z = _splitmix(pc.bit_wise_xor(rows, pa.scalar(_seed_mask(seed), _U64)))
    return pc.divide(pc.cast(pc.shift_right(z, pa.scalar(11, _U64)), pa.float64()), 2.0**53)


_COUNTING: list[pa.Array] = [pa.array([], _U64)]


def _counting(count: int) -> pa.Array:
    """0, 1, .. count - 1 as uint64 (kept: building it from Python ints is the slow part)."""
    if len(_COUNTING[0]) < count:
        _COUNTING[0] = pa.array(range(max(count, 2 * len(_COUNTING[0]))), _U64)
    return _COUNTING[0].slice(0, count)


@dataclass
class Source:
    """The input's files and URL column, checked as ``submit`` checks them."""

    files: list[Any]
    """What ``inputs.list_input_files`` returns (paths, or the files of any input format)."""
    url: str

    @classmethod
    def open(cls, source: InputSource | str | Path, url_col: str | None) -> Source:
        files = list_input_files(source)
        url = resolve_columns(read_schema(files[0]), url_col, None, None).url
        check_files(files, ColumnMap(url, None, None))
        return cls(files, url)

    def batches(self) -> Iterator[tuple[int, pa.Array]]:
        """(first row number, URLs) per batch, rows numbered across the files as in a job."""
        first = 0
        for path in self.files:
            for batch in iter_batches(path, [self.url]):
                yield first, batch.column(0)
                first += batch.num_rows


@dataclass
class HostCounts:
    rows: int = 0
    bad: int = 0
    hosts: Counter[str] = field(default_factory=Counter)
    dropped: bool = False
    """Some hosts with few rows were dropped from ``hosts`` (``MAX_TRACKED_HOSTS``)."""

    def add(self, hosts: pa.Array) -> None:
        self.rows += len(hosts)
        self.bad += hosts.null_count
        found = pc.value_counts(hosts.drop_null())
        counted = self.hosts
        for host, rows in zip(found.field(0).to_pylist(), found.field(1).to_pylist(), strict=True):
            counted[host] += rows
        if len(self.hosts) > MAX_TRACKED_HOSTS:
            self._drop_smallest()

    def _drop_smallest(self) -> None:
        counts = sorted(self.hosts.values())
        below = counts[len(counts) // 2]
        self.hosts = Counter({h: n for h, n in self.hosts.items() if n > below})
        self.dropped = True


def count_hosts(source: Source) -> HostCounts:
    counts = HostCounts()
    for _, urls in source.batches():
        counts.add(hosts_of(urls))
    return counts


# --- the sample -------------------------------------------------------------------------------


@dataclass
class Stratum:
    name: str
    """A host, or ``OTHER_HOSTS``."""
    rows: int
    """Rows in the stratum (from the count; the sampling read recounts it exactly)."""
    sample: int = 0
    chosen: list[Candidate] = field(default_factory=list)
    """The rows drawn, smallest keys first."""
    probes: list[Probe] = field(default_factory=list)
    """What each row of ``chosen`` answered."""


@dataclass(frozen=True, order=True)
class Candidate:
    key: float
    row: int
    url: str
    host: str


def plan_strata(counts: HostCounts, sample: int) -> list[Stratum]:
    """The strata and their sample sizes (see the module's docstring)."""
    valid = counts.rows - counts.bad
    if valid <= 0:
        return []
    want = min(sample, valid)
    strata = [
        Stratum(host, n)
        for host, n in sorted(counts.hosts.items(), key=lambda item: (-item[1], item[0]))
        if want * n / valid >= MIN_STRATUM_SAMPLE
    ]
    others = valid - sum(s.rows for s in strata)
    if others > 0:
        strata.append(Stratum(OTHER_HOSTS, others))
    quotas = [want * s.rows / valid for s in strata]
    for stratum, quota in zip(strata, quotas, strict=True):
        stratum.sample = math.floor(quota)
    left = want - sum(s.sample for s in strata)
    by_remainder = sorted(range(len(strata)), key=lambda i: (strata[i].sample - quotas[i], i))
    for i in by_remainder[:left]:
        strata[i].sample += 1
    # Only "other hosts" can fall short of the two a variance needs: take them from the
    # largest stratum while it can spare them, else sample a row or two more than asked.
    for stratum in strata:
        for _ in range(min(MIN_STRATUM_SAMPLE, stratum.rows) - stratum.sample):
            donor = max(strata, key=lambda s: s.sample)
            if donor.sample > MIN_STRATUM_SAMPLE:
                donor.sample -= 1
            stratum.sample += 1
    return strata


def draw_sample(source: Source, strata: list[Stratum], seed: int) -> None:
    """The sampling read: each stratum's rows with the smallest keys; recounts ``rows``."""
    if not strata:
        return
    names = pa.array([s.name for s in strata if s.name != OTHER_HOSTS], pa.string())
    other = len(names)  # the code of OTHER_HOSTS (whether there are other hosts or not)
    bad = other + 1  # the code of rows without a host
    thresholds = [_threshold(s) for s in strata]
    if strata[-1].name != OTHER_HOSTS:
        thresholds.append(-1.0)
    limit = pa.array([*thresholds, -1.0], pa.float64())
    kept: list[list[Candidate]] = [[] for _ in range(bad + 1)]
    exact: Counter[int] = Counter()
    for first, urls in source.batches():
        hosts = hosts_of(urls)
        codes = pc.if_else(
            pc.is_null(hosts),
            pa.scalar(bad, pa.int32()),
            pc.fill_null(pc.index_in(hosts, value_set=names), pa.scalar(other, pa.int32())),
        )
        for item in pc.value_counts(codes).to_pylist():
            exact[item["values"]] += item["counts"]
        keys = row_keys(first, len(urls), seed)
        picked = pc.indices_nonzero(pc.less(keys, pc.take(limit, codes)))
        columns = [pc.take(column, picked).to_pylist() for column in (keys, codes, urls, hosts)]
        for index, key, code, url, host in zip(picked.to_pylist(), *columns, strict=True):
            kept[code].append(Candidate(key, first + index, url, host))
    for code, stratum in enumerate(strata):
        stratum.rows = exact[code]
        stratum.chosen = sorted(kept[code])[: stratum.sample]
        if len(stratum.chosen) < min(stratum.sample, stratum.rows):
            log.debug(f"stratum {stratum.name}: {len(stratum.chosen)} of {stratum.sample} drawn")


def _threshold(stratum: Stratum) -> float:
    """The key below which a row of the stratum is kept as a candidate."""
    if stratum.sample >= stratum.rows:
        return 2.0  # every row
    expected = stratum.sample + MARGIN_SIGMAS * math.sqrt(stratum.sample) + MARGIN_ROWS
    return min(2.0, expected / stratum.rows)


# --- the estimate -----------------------------------------------------------------------------


def outcome(probe: Probe) -> str:
    """A sampled row's status, or ``SIZE_UNKNOWN`` for an ok answer that named no size."""
    if probe.status == Status.OK and probe.size is None:
        return SIZE_UNKNOWN
    return probe.status


def image_bytes(probe: Probe) -> int:
    """The bytes the row would download: its size when ok, else 0."""
    return probe.size if probe.status == Status.OK and probe.size is not None else 0


def t_quantile(confidence: float, df: float) -> float:
    """Student's t: the ``t`` with P(|T| <= t) = ``confidence`` at ``df`` degrees of freedom."""
    if df > 1e7:
        return statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    tail = 1.0 - confidence
    low, high = 0.0, 1.0
    while _t_two_tail(high, df) > tail:
        high *= 2.0
    for _ in range(100):
        middle = (low + high) / 2
        if _t_two_tail(middle, df) > tail:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def _t_two_tail(t: float, df: float) -> float:
    """P(|T| > t) = I_{df/(df+t^2)}(df/2, 1/2)."""
    return _regularized_beta(df / (df + t * t), df / 2, 0.5)


def _regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) by its continued fraction (modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _regularized_beta(1.0 - x, b, a)
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return front * result / a


def total_bytes(strata: list[Stratum]) -> dict[str, Any]:
    """The stratified estimate of the bytes, its 95% interval and how it was made."""
    every = [float(image_bytes(p)) for s in strata for p in s.probes]
    pooled = statistics.variance(every) if len(every) > 1 else 0.0
    total = variance = 0.0
    df_terms = 0.0
    for stratum in strata:
        sizes = [float(image_bytes(p)) for p in stratum.probes]
        n, rows = len(sizes), stratum.rows
        if rows == 0:
            continue
        if n == 0:  # nothing could be drawn: the sample's overall mean stands in
            mean, spread, n = (statistics.fmean(every) if every else 0.0), pooled, 1
        else:
            mean = statistics.fmean(sizes)
            spread = statistics.variance(sizes) if n > 1 else pooled
        total += rows * mean
        weight = rows * (rows - n) / n  # N^2 (1 - n/N) / n
        variance += weight * spread
        if weight * spread > 0:
            df_terms += (weight * spread) ** 2 / max(1, n - 1)
    if variance > 0:
        df = variance**2 / df_terms
        half = t_quantile(CONFIDENCE, max(1.0, df)) * math.sqrt(variance)
    else:
        df, half = math.inf, 0.0
    return {
        "estimate": round(total),
        "low": round(max(0.0, total - half)),
        "high": round(total + half),
        "confidence": CONFIDENCE,
        "standard_error": math.sqrt(variance),
        "degrees_of_freedom": None if math.isinf(df) else df,
        "method": "stratified by host: rows per stratum x mean bytes of its sampled rows (0 for "
        "failed rows and unknown sizes); t-interval at Welch-Satterthwaite degrees of freedom",
    }


def failure_rates(strata: list[Stratum], counts: HostCounts) -> dict[str, Any]:
    """Stratified shares of the rows by outcome: ``bad_url`` rows exactly, the rest from the
    sample."""
    rows = counts.rows
    shares: Counter[str] = Counter()
    non_image = 0.0
    for stratum in strata:
        if not stratum.probes or not stratum.rows:
            continue
        weight = stratum.rows / rows / len(stratum.probes)
        for probe in stratum.probes:
            shares[outcome(probe)] += weight
            if image_bytes(probe) and not _image_type(probe.content_type):
                non_image += weight
    bad = rows - sum(s.rows for s in strata)  # the recount's rows outside every stratum
    if bad:
        shares[Status.BAD_URL] += bad / rows
    by_status = {
        status: share
        for status, share in sorted(shares.items(), key=lambda item: (-item[1], item[0]))
        if status not in (Status.OK, SIZE_UNKNOWN)
    }
    return {
        "rate": sum(by_status.values()) + shares[SIZE_UNKNOWN],
        "by_status": by_status,
        SIZE_UNKNOWN: float(shares[SIZE_UNKNOWN]),
        "bad_url_rows_exact": bad,
        "non_image_content_type": non_image,
    }


def _image_type(content_type: str | None) -> bool:
    """A Content-Type an image may come with (missing and generic binary ones included)."""
    kind = (content_type or "").split(";")[0].strip().lower()
    return kind in ("", "application/octet-stream", "binary/octet-stream") or kind.startswith(
        "image/"
    )


def top_hosts(strata: list[Stratum], counts: HostCounts, top: int) -> list[dict[str, Any]]:
    """The hosts with the most rows: rows, share, and what their sampled rows said."""
    exact = {s.name: s.rows for s in strata}
    sampled: dict[str, list[Probe]] = {}
    for stratum in strata:
        for candidate, probe in zip(stratum.chosen, stratum.probes, strict=True):
            sampled.setdefault(candidate.host, []).append(probe)
    ranked = sorted(
        ((exact.get(host, n), host) for host, n in counts.hosts.items()),
        key=lambda item: (-item[0], item[1]),
    )
    listed = []
    for rows, host in ranked[:top]:
        probes = sampled.get(host, [])
        sizes = [image_bytes(p) for p in probes if image_bytes(p)]
        listed.append(
            {
                "host": host,
                "rows": rows,
                "share": rows / counts.rows,
                "sampled": len(probes),
                "failed": len(probes) - len(sizes),
                "mean_bytes": round(statistics.fmean(sizes)) if sizes else None,
            }
        )
    return listed


def estimate(request: EstimateRequest) -> dict[str, Any]:
    """Count, sample, probe and estimate (see the module's docstring); the figures as a
    JSON-able dict, which ``format_estimate`` prints."""
    source = Source.open(request.input, request.url_col)
    log.debug(f"estimate: counting the rows of {request.input} by host")
    counts = count_hosts(source)
    if counts.rows == 0:
        raise InputError(f"{request.input} holds no rows: there is nothing to estimate")
    strata = plan_strata(counts, request.sample)
    draw_sample(source, strata, request.seed)
    chosen = sorted(
        ((c, stratum) for stratum in strata for c in stratum.chosen), key=lambda item: item[0]
    )
    urls = [candidate.url for candidate, _ in chosen]
    log.info(
        f"estimate: probing {len(urls):,} of {_count(counts.rows, 'row')} in "
        f"{_count(len(strata), 'stratum', 'strata')} (headers only)"
    )
    # here: the prober's aiohttp would cost every other command, submit among them, 0.2 s
    from ldawt.daemon.fetcher.probe import probe_urls

    started = time.monotonic()
    probes = probe_urls(urls, request.fetch, _progress(len(urls)))
    seconds = time.monotonic() - started
    for stratum in strata:
        stratum.probes = []
    for (_, stratum), probe in zip(chosen, probes, strict=True):
        stratum.probes.append(probe)
    return _figures(request, counts, strata, probes, seconds)


def _progress(total: int) -> Callable[[int, Probe], None]:
    state = {"done": 0, "logged": time.monotonic()}

    def done(_: int, __: Probe) -> None:
        state["done"] += 1
        now = time.monotonic()
        if now - state["logged"] >= LOG_INTERVAL_S:
            state["logged"] = now
            log.info(f"estimate: probed {state['done']:,} of {total:,} rows")

    return done


def _figures(
    request: EstimateRequest,
    counts: HostCounts,
    strata: list[Stratum],
    probes: list[Probe],
    seconds: float,
) -> dict[str, Any]:
    nbytes = total_bytes(strata)
    failures = failure_rates(strata, counts)
    requests: Counter[str] = Counter()
    sizes_from: Counter[str] = Counter()
    for probe in probes:
        requests.update(probe.requests)
        if probe.method and image_bytes(probe):
            sizes_from[probe.method] += 1
    images = counts.rows * (1.0 - failures["rate"])
    job_s = counts.rows / request.rate
    timing: dict[str, Any] = {
        "rate": request.rate,
        "seconds": job_s,
        "mb_per_s": nbytes["estimate"] / job_s / 1e6,
    }
    if request.fetch.host_rps:
        exact = {s.name: s.rows for s in strata}
        largest = max((exact.get(h, n) for h, n in counts.hosts.items()), default=0)
        timing["host_rps"] = request.fetch.host_rps
        timing["largest_host_seconds"] = largest / request.fetch.host_rps
    return {
        "input": str(request.input),
        "rows": counts.rows,
        "hosts": len(counts.hosts),
        "hosts_exact": not counts.dropped,
        "sample": {
            "rows": len(probes),
            "requested": request.sample,
            "seed": request.seed,
            "strata": [{"name": s.name, "rows": s.rows, "sampled": len(s.probes)} for s in strata],
            "requests": dict(requests),
            "sizes_from": dict(sizes_from),
            "seconds": seconds,
        },
        "bytes": {
            **nbytes,
            "exact": nbytes["standard_error"] == 0 and all(len(s.probes) == s.rows for s in strata),
            "mean_per_image": nbytes["estimate"] / images if images > 0 else None,
        },
        "images": round(images),
        "failures": failures,
        "top_hosts": top_hosts(strata, counts, request.top),
        "time": timing,
    }


# --- text -------------------------------------------------------------------------------------


def human_bytes(value: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:,.1f} {unit}"
    return f"{value:,.0f} B"


def human_seconds(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:,.1f} s"


def _count(number: int, one: str, many: str | None = None) -> str:
    return f"{number:,} {one if number == 1 else many or one + 's'}"


def format_estimate(figures: dict[str, Any]) -> str:
    sample, nbytes, failures = figures["sample"], figures["bytes"], figures["failures"]
    hosts = f"{figures['hosts']:,}" if figures["hosts_exact"] else f"more than {figures['hosts']:,}"
    asked = ", ".join(
        f"{n:,} {method}" for method, n in sorted(sample["requests"].items(), reverse=True)
    )
    lines = [
        f"input: {figures['input']}: {_count(figures['rows'], 'row')}, {hosts} "
        f"host{'' if figures['hosts'] == 1 else 's'}",
        f"sample: {_count(sample['rows'], 'row')} (seed {sample['seed']}) in "
        f"{_count(len(sample['strata']), 'stratum', 'strata')}, probed with headers only "
        f"({asked or 'no requests'}) in "
        f"{human_seconds(sample['seconds'])}",
        "",
    ]
    if nbytes["exact"]:
        lines.append(f"total bytes: {human_bytes(nbytes['estimate'])} (every row probed: exact)")
    else:
        lines.append(
            f"total bytes: {human_bytes(nbytes['estimate'])}, 95% interval "
            f"{human_bytes(nbytes['low'])} to {human_bytes(nbytes['high'])}"
        )
    mean = nbytes["mean_per_image"]
    lines.append(
        f"images: about {figures['images']:,}"
        + (f", {human_bytes(mean)} each on average" if mean else "")
    )
    lines += ["", f"rows that would fail or have no known size: {100 * failures['rate']:.1f}%"]
    lines += [
        f"  {status:<18} {100 * share:6.2f}%" for status, share in failures["by_status"].items()
    ]
    if failures[SIZE_UNKNOWN]:
        lines.append(
            f"  {SIZE_UNKNOWN:<18} {100 * failures[SIZE_UNKNOWN]:6.2f}%  (answered without a "
            "size: counted as 0 bytes)"
        )
    if failures["non_image_content_type"]:
        lines.append(
            f"  and {100 * failures['non_image_content_type']:.2f}% answered with a Content-Type "
            "that is not an image (a job may find them not_image)"
        )
    lines += ["", f"rows per host (top {len(figures['top_hosts'])}):"]
    for host in figures["top_hosts"]:
        mean_host = host["mean_bytes"]
        lines.append(
            f"  {host['host']:<40} {host['rows']:>12,} {100 * host['share']:6.1f}%  sampled "
            f"{host['sampled']:,}, failed {host['failed']:,}"
            + (f", {human_bytes(mean_host)} each" if mean_host else "")
        )
    timing = figures["time"]
    lines += [
        "",
        f"time at {timing['rate']:,.0f} images/s: {human_seconds(timing['seconds'])} "
        f"({timing['mb_per_s']:,.1f} MB/s)",
    ]
    if "host_rps" in timing:
        lines.append(
            f"at --host-rps {timing['host_rps']:g}, the busiest host alone needs "
            f"{human_seconds(timing['largest_host_seconds'])} in one worker process"
        )
    return "\n".join(lines)
