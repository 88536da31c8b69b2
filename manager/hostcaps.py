"""Job-wide per-host limits: ``--per-host`` and ``--host-rps`` hold for the whole job, all
workers of every engine together.

The planner records how many rows of each host every shard holds (``hosts``). At the start of a
run, a host is **heavy** when the shards of the run hold more of its rows than could break a
limit on their own: more than ``per_host`` (all of them in flight at once), or more than
``host_rps / (retries + 1)`` (every attempt of every row within one second). Light hosts need no
bookkeeping; only heavy ones are tracked, so the cost follows the few large hosts of a list, not
its millions of small ones.

A heavy host ``h`` has ``C = min(per_host, its rows in the run)`` units, numbered ``0..C-1``:
requests in flight across the fleet, and instants of the host's schedule (with ``host_rps``,
instant ``k`` is the wall-clock time ``k / host_rps`` and belongs to unit ``k % C``; see
``contract.HostShare``). An engine asks ``admit(spec, slots)`` before it starts a shard; a
shard holding heavy hosts gets ``u = max(1, min(its rows of h, free // k))`` of the free units
of each, by number, where ``k = min(slots not running a shard of h, shards of h not started
yet)`` spreads the free units over the shards that can run at once. It is refused (None) while
some host it holds has no unit free or runs a shard on every slot already (a shard admitted
past the slots would take every free unit), and the engine tries another shard. ``release``
gives the units back when the shard's run ends. The units of the running shards are disjoint,
so their in-flight caps never add up to more than ``per_host``, and no instant of a host's
schedule is anyone's but one shard's: together they send at most ``host_rps``, however many
start at once. With no shard running, every unit is free: a shard is always admitted then, so
a run cannot stall. A host whose shards outnumber its units, while its units are fewer than
the engine's slots, runs at most ``C`` of them at a time (one unit each): the first ``admit``
says so once, pointing to ``--group-by-host``.

A share is fixed when its shard starts: units freed later go to the shards that start later,
and a shard started with few units of a large host may reach its deadline (its unfinished rows
are ``cancelled``, to be fetched by a later run). A refused shard is looked at again at every
admission round. What the shares do not cover: a process's one robots.txt request per host
(it comes before that process's image requests to the host), the hops of a redirect chain
(one attempt, one unit), a shard that TaskVine runs again on another worker while the library
of a worker it lost still runs it, and the skew between the clocks of the workers' machines
(the schedule's instants move by as much).
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ldawt.daemon.contract import FetchOptions, HostShare, ShardSpec, describe_exception

from .errors import InputError
from .hosts import COUNTS_FOLDER, HostCounter, read_counts
from .job import JobRun
from .plan import spill_buckets

log = logging.getLogger(__name__)


def heavy_above(fetch: FetchOptions) -> int:
    """The most rows a host may have among the shards of a run and still be unable to break
    ``per_host`` or ``host_rps`` on its own."""
    above = fetch.per_host
    if fetch.host_rps:
        above = min(above, int(fetch.host_rps // (fetch.retries + 1)))
    return above


@dataclass
class _Host:
    capacity: int
    """Units: requests in flight across the fleet, numbered 0..capacity-1."""
    free: list[int]
    """The unit numbers no running shard holds, ascending."""
    shards: int
    """Shards of the run holding the host."""
    waiting: int
    """Of them, those not admitted yet."""
    running: int = 0


class HostShares:
    """The admission of shards under the job-wide per-host limits; see the module docstring.
    ``rows``: shard id -> heavy host -> the shard's rows of it."""

    def __init__(
        self, rows: dict[str, dict[str, int]], per_host: int, host_rps: float | None
    ) -> None:
        totals: Counter[str] = Counter()
        shards: Counter[str] = Counter()
        for hosts in rows.values():
            totals.update(hosts)
            shards.update(hosts.keys())
        self._rows = rows
        self._per_host = per_host
        self._host_rps = host_rps
        self._hosts: dict[str, _Host] = {}
        for host, total in totals.items():
            capacity = min(per_host, total)
            self._hosts[host] = _Host(capacity, list(range(capacity)), shards[host], shards[host])
        self._held: dict[str, dict[str, list[int]]] = {}
        self._admitted: set[str] = set()
        self._warned = False

    @classmethod
    def of_run(cls, run: JobRun, specs: list[ShardSpec]) -> HostShares:
        """The shares of the heavy hosts of ``specs``, from the job's host counts. Shards
        planned before the counts existed are counted here first (their inputs' URLs read
        once, the file kept for later runs)."""
        fetch = run.settings.options.fetch
        above = heavy_above(fetch)
        folder = run.job.shard_dir / COUNTS_FOLDER
        ids = {spec.shard_id for spec in specs}
        rows, covered = read_counts(folder, ids, above)
        missing = [spec for spec in specs if spec.shard_id not in covered]
        if missing:
            log.info(
                "counting the hosts of %d shard(s) planned without host counts, for the "
                "job-wide --per-host and --host-rps",
                len(missing),
            )
            _count_inputs(run, missing)
            rows, _ = read_counts(folder, ids, above)
        totals: Counter[str] = Counter()
        for hosts in rows.values():
            totals.update(hosts)
        heavy = {host for host, total in totals.items() if total > above}
        rows = {
            shard: kept
            for shard, hosts in rows.items()
            if (kept := {h: n for h, n in hosts.items() if h in heavy})
        }
        if heavy:
            log.info(
                "%d host(s) hold enough rows to reach --per-host %d%s: the running shards "
                "share their limits",
                len(heavy),
                fetch.per_host,
                f" or --host-rps {fetch.host_rps:g}" if fetch.host_rps else "",
            )
        return cls(rows, fetch.per_host, fetch.host_rps)

    def holds(self, shard_id: str) -> bool:
        """The shard holds a heavy host: ``admit`` gives it shares (or refuses it)."""
        return shard_id in self._rows

    def admit(self, spec: ShardSpec, slots: int) -> ShardSpec | None:
        """``spec`` with its shares of the heavy hosts it holds, or None while one of them has
        no unit free, or runs on every slot already. ``slots``: how many shards holding heavy
        hosts the engine can run at once."""
        if not self._warned:
            self._warned = True
            self._warn_serialised(slots)
        hosts = self._rows.get(spec.shard_id)
        if not hosts:
            return spec
        states = {host: self._hosts[host] for host in hosts}
        if any(not state.free or state.running >= slots for state in states.values()):
            return None
        first = spec.shard_id not in self._admitted
        held = {}
        for host, state in states.items():
            waiting = state.waiting if first else state.waiting + 1
            spread = max(1, min(slots - state.running, waiting))
            count = max(1, min(hosts[host], len(state.free) // spread))
            held[host], state.free = state.free[:count], state.free[count:]
            state.running += 1
            state.waiting -= first
        self._admitted.add(spec.shard_id)
        self._held[spec.shard_id] = held
        return spec.replace(
            host_shares={
                host: HostShare(tuple(units), self._hosts[host].capacity, self._host_rps)
                for host, units in held.items()
            }
        )

    def release(self, shard_id: str) -> None:
        """The shard's run ended (done, failed or lost): its units are free again. A shard
        that holds none is ignored."""
        for host, units in self._held.pop(shard_id, {}).items():
            state = self._hosts[host]
            state.free = sorted(state.free + units)
            state.running -= 1

    def _warn_serialised(self, slots: int) -> None:
        """One line when a heavy host's shards outnumber its units while its units are fewer
        than the engine's slots: at most ``capacity`` of them can run at once, however many
        workers there are."""
        crowded = {
            host: state
            for host, state in self._hosts.items()
            if state.shards > state.capacity < slots
        }
        if crowded:
            host, state = max(crowded.items(), key=lambda item: item[1].shards)
            log.warning(
                "%d host(s) span more shards than --per-host %d lets run at once (%s: %d "
                "shards, %d at a time, for %d slots); --group-by-host keeps a host's rows in "
                "fewer shards",
                len(crowded),
                self._per_host,
                host,
                state.shards,
                state.capacity,
                slots,
            )


def _count_inputs(run: JobRun, specs: list[ShardSpec]) -> None:
    """Write the host counts of shards planned before they existed."""
    job = run.job
    spill = job.spill_dir / "host-counts"
    shutil.rmtree(spill, ignore_errors=True)
    rows = sum(_input_rows(spec) for spec in specs)
    path = job.shard_dir / COUNTS_FOLDER / f"counted-{specs[0].shard_id}.parquet"
    counter = HostCounter(path, spill, spill_buckets(rows))
    try:
        for spec in specs:
            counter.add(spec.shard_id, _input_urls(spec))
        counter.finish()
    finally:
        shutil.rmtree(spill, ignore_errors=True)


def _input_rows(spec: ShardSpec) -> int:
    try:
        return pq.ParquetFile(spec.input_path).metadata.num_rows
    except (OSError, pa.ArrowException) as exc:
        raise _unreadable(spec, exc) from exc


def _input_urls(spec: ShardSpec) -> pa.ChunkedArray:
    try:
        return pq.read_table(Path(spec.input_path), columns=["url"]).column("url")
    except (OSError, pa.ArrowException, KeyError) as exc:
        raise _unreadable(spec, exc) from exc


def _unreadable(spec: ShardSpec, exc: Exception) -> InputError:
    return InputError(
        f"cannot count the hosts of shard {spec.shard_id} for --per-host/--host-rps: its "
        f"input {spec.input_path} is unreadable ({' '.join(describe_exception(exc).split())})"
    )


UNSHARED = HostShares({}, 1, None)
"""No heavy host: every shard is admitted as it is (engines run without a job's counts)."""
