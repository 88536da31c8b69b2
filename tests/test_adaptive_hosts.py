"""Adaptive per-host control against real origins on 127.0.0.1: a host that asks for pauses
with Retry-After (submit and report, as users run them), a host that refuses more than four
requests at a time (one shard), and the limiter's memory for many hosts."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fault_origin import FaultOrigin
from manager_support import url_table
from shard_input import write_shard_input

from ldawt.daemon import metrics
from ldawt.daemon.fetcher import politeness
from ldawt.daemon.fetcher.errors import FetchFailure
from ldawt.daemon.fetcher.politeness import HostLimiter
from ldawt.daemon.fetcher.throttles import CURRENT_LOG, ThrottleLog
from ldawt.daemon.shard import run_shard
from ldawt.manager.cli import main
from ldawt.manager.demo import serve_in_background

HOST = "127.0.0.1"
# A request the client sent just before the 429 reached it may arrive this much later.
IN_FLIGHT_SLACK_S = 0.1
# asyncio may wake a sleeper up to a clock tick early; the origin's clock is the fetcher's.
CLOCK_SLACK_S = 0.05
PER_HOST = 12


@pytest.fixture
def origin() -> Iterator[tuple[FaultOrigin, str]]:
    fault_origin = FaultOrigin()
    with serve_in_background(fault_origin.app) as port:
        yield fault_origin, f"http://{HOST}:{port}"


def _sample(name: str, host: str = HOST) -> float:
    return metrics.REGISTRY.get_sample_value(name, {"host": host}) or 0.0


def test_retry_after_pauses_the_whole_host(
    tmp_path: Path, capsys, origin: tuple[FaultOrigin, str]
) -> None:
    """429 with ``Retry-After: 2`` to every request of the origin's first 3 s: after each 429
    no request reaches the origin for the two seconds it asked for (without the host-wide
    pause the queued rows would go on at once), and every row ends ok."""
    fault_origin, base = origin
    rows = 40
    source = url_table(tmp_path / "in.parquet", [f"{base}/throttle/t{i}.jpg" for i in range(rows)])
    out = tmp_path / "out"
    pauses_before = _sample("ldawt_host_pauses_total")
    paused_before = metrics.HOSTS_PAUSED._value.get()
    run = ["--engine", "local", "--workers", "1", "--allow-private", "-q"]
    status = main(["submit", str(source), "--out", str(out), *run, "--per-host", str(PER_HOST)])
    capsys.readouterr()
    assert status == 0

    refusals = _assert_quiet_during_pauses(fault_origin)

    figures = json.loads(_command(capsys, "report", out, "--json"))
    assert figures["by_status"] == {"ok": rows}
    (throttled,) = figures["throttled_hosts"]
    assert throttled["host"] == HOST
    assert throttled["throttled"] == len(refusals)
    assert throttled["pauses"] >= 2 and throttled["halvings"] == 0
    assert _sample("ldawt_host_pauses_total") - pauses_before == throttled["pauses"]
    assert metrics.HOSTS_PAUSED._value.get() == paused_before  # the pauses are over
    text = _command(capsys, "report", out)
    assert "hosts that throttled the job" in text
    line = next(line for line in text.splitlines() if line.strip().startswith(HOST))
    assert line.split()[1:] == [f"{len(refusals):,}", str(throttled["pauses"]), "0"]


def _assert_quiet_during_pauses(fault_origin: FaultOrigin) -> list[float]:
    """No request reaches the origin during the 2 s each of its 429s asked for, but those sent
    before the 429 came back; returns the times of the 429s."""
    refusals = [when for when, code in fault_origin.answered if code == 429]
    assert refusals and max(refusals) - min(refusals) > 1.5  # two rounds of pauses at least
    arrivals = sorted(when for times in fault_origin.arrivals.values() for when in times)
    for refused in refusals:
        quiet_to = refused + 2 - CLOCK_SLACK_S
        early = [
            when - refused for when in arrivals if refused + IN_FLIGHT_SLACK_S < when < quiet_to
        ]
        assert not early, f"requests {early} s after a 429 asking for 2 s"
        # only requests sent before the 429 came back, at most the per-host limit, arrive later
        assert sum(1 for when in arrivals if refused < when < quiet_to) < PER_HOST
    return refusals


def test_retry_after_pauses_rows_asleep_for_a_host_rps_token(
    tmp_path: Path, origin: tuple[FaultOrigin, str]
) -> None:
    """The same origin, with ``host_rps`` 8: rows that hold a slot and sleep for their token
    when a 429 comes back do not start before the pause ends either; every row ends ok."""
    fault_origin, base = origin
    rows = 24
    urls = [f"{base}/throttle/r{i}.jpg" for i in range(rows)]
    keys = [f"k{i}" for i in range(rows)]
    write_shard_input(tmp_path / "in.parquet", urls, ["bird"] * rows, keys)
    result = run_shard(
        {
            "shard_id": "rps",
            "input_path": str(tmp_path / "in.parquet"),
            "output_dir": str(tmp_path / "out"),
            "fetch": {"allow_private": True, "per_host": PER_HOST, "host_rps": 8.0},
        }
    )
    assert result["ok"], result
    assert result["counts"] == {"ok": rows}
    _assert_quiet_during_pauses(fault_origin)


def _command(capsys, *args: str | Path) -> str:
    assert main([str(arg) for arg in args]) == 0
    return capsys.readouterr().out


def test_report_skips_malformed_throttled_hosts_in_stats_files(
    tmp_path: Path, capsys, origin: tuple[FaultOrigin, str]
) -> None:
    """Stats files from another ldawt version, with ``throttled_hosts`` items that are not
    what this one writes: ``report`` sums the well-formed ones and names the others in one
    warning line, instead of a traceback."""
    _, base = origin
    source = url_table(tmp_path / "in.parquet", [f"{base}/img/i{i}.jpg" for i in range(20)])
    out = tmp_path / "out"
    run = ["--engine", "local", "--workers", "1", "--allow-private", "-q", "--shard-size", "10"]
    assert main(["submit", str(source), "--out", str(out), *run]) == 0
    capsys.readouterr()
    first, second = sorted(out.glob("*_stats.json"))
    counted = {"host": "a.test", "throttled": 3, "pauses": 1, "halvings": 0}
    malformed = [
        {"host": "b.test", "throttled": 2},  # counts missing
        "c.test",
        {"host": "d.test", "throttled": "4", "pauses": 0, "halvings": 0},
        {"host": None, "throttled": 1, "pauses": 0, "halvings": 1},
        None,
    ]
    _rewrite_throttled_hosts(first, [counted, *malformed])
    _rewrite_throttled_hosts(second, {"host": "e.test"})  # not a list: one more

    status = main(["report", str(out), "--json"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert json.loads(captured.out)["throttled_hosts"] == [counted]
    (warning,) = captured.err.splitlines()
    assert warning.startswith("ldawt: warning: ") and f" {len(malformed) + 1} " in warning


def _rewrite_throttled_hosts(stats_path: Path, value: object) -> None:
    stats = json.loads(stats_path.read_text())
    stats["throttled_hosts"] = value
    stats_path.write_text(json.dumps(stats))


def test_refusals_without_retry_after_halve_the_host_s_limit(
    tmp_path: Path, origin: tuple[FaultOrigin, str]
) -> None:
    """An origin answering 503 (no Retry-After) whenever more than 4 requests are in flight,
    to a shard allowed 16 per host: after the first 503s at least three requests in four arrive
    with at most 4 in flight (at 16 in flight most would be refused, and rows would run out of
    retries), and every row ends ok."""
    fault_origin, base = origin
    rows = 300
    urls = [f"{base}/busy/b{i}.jpg" for i in range(rows)]
    keys = [f"k{i}" for i in range(rows)]
    write_shard_input(tmp_path / "in.parquet", urls, ["bird"] * rows, keys)
    halvings_before = _sample("ldawt_host_limit_halvings_total")
    result = run_shard(
        {
            "shard_id": "busy",
            "input_path": str(tmp_path / "in.parquet"),
            "output_dir": str(tmp_path / "out"),
            "fetch": {
                "allow_private": True,
                "per_host": 16,
                "concurrency": 64,
                "retries": 6,
                "backoff_base": 0.05,
                "backoff_max": 0.2,
            },
        }
    )
    assert result["ok"], result
    manifest = pq.read_table(result["manifest_path"]).to_pylist()
    assert [row["status"] for row in manifest] == ["ok"] * rows

    first_refusal = min(when for when, code in fault_origin.answered if code == 503)
    seen = [in_flight for when, in_flight in fault_origin.seen_in_flight if when > first_refusal]
    within = sum(1 for in_flight in seen if in_flight <= fault_origin.busy_limit)
    assert len(seen) >= rows // 2
    assert within / len(seen) >= 0.75, f"{within} of {len(seen)} requests within the limit"
    (throttled,) = result["throttled_hosts"]
    assert throttled["host"] == HOST and throttled["pauses"] == 0
    assert throttled["throttled"] == len(fault_origin.answered)
    assert throttled["halvings"] >= 2  # 16 -> 8 -> 4 at least
    assert _sample("ldawt_host_limit_halvings_total") - halvings_before == throttled["halvings"]
    assert 1 <= _sample("ldawt_host_concurrency_limit") < 16


async def _through(limiter: HostLimiter, host: str, outcome: BaseException | None = None) -> None:
    """One request to ``host`` through the limiter, ending with ``outcome`` (None: answered)."""
    with contextlib.suppress(Exception):
        async with limiter.slot(host):
            if outcome is not None:
                raise outcome


def _refusal(code: int, retry_after: float | None = None) -> FetchFailure:
    failure = FetchFailure(f"http_{code}", f"HTTP {code}", code)
    failure.retry_after = retry_after
    return failure


async def _together(limiter: HostLimiter, host: str, outcomes: list[BaseException | None]) -> None:
    """As many requests to ``host`` as ``outcomes`` (None: answered), started together: each
    holds its slot for a turn of the event loop at least, and those beyond the host's limit
    wait in line for a slot."""
    gate = asyncio.Event()

    async def request(outcome: BaseException | None) -> None:
        with contextlib.suppress(Exception):
            async with limiter.slot(host):
                await gate.wait()
                if outcome is not None:
                    raise outcome

    tasks = [asyncio.create_task(request(outcome)) for outcome in outcomes]
    await asyncio.sleep(0)  # every task has its slot or its place in line
    gate.set()
    await asyncio.gather(*tasks)


def test_runs_of_connection_failures_halve_and_answers_raise_the_limit() -> None:
    async def scenario() -> None:
        limiter = HostLimiter(8, None, metrics.BoundedHostLabels(), retry_after_max=5.0)
        log = ThrottleLog()
        CURRENT_LOG.set(log)
        for _ in range(2):
            await _through(limiter, "a.test", ConnectionResetError("reset"))
        await _through(limiter, "a.test")  # an answer ends the run
        assert limiter._hosts == {}  # nothing to remember: full limit, no pause, no run
        for _ in range(2):
            await _through(limiter, "a.test", TimeoutError())
        assert limiter._hosts["a.test"].limit == 8  # a run under way is remembered
        # the third in a row, with 6 requests in flight: half of those
        await _together(limiter, "a.test", [TimeoutError()] * 3 + [None] * 3)
        assert limiter._hosts["a.test"].limit == 3
        for _ in range(10):  # one at a time: a limit the host does not use does not grow
            await _through(limiter, "a.test")
        assert limiter._hosts["a.test"].limit == 3
        # a backlog keeps the host at its limit: one more slot after as many answers as the
        # limit, 3 + 4 + 5 + 6 + 7 of them back to 8 (8 more keep the line full until then)
        await _together(limiter, "a.test", [None] * (3 + 4 + 5 + 6 + 7 + 8))
        assert "a.test" not in limiter._hosts  # back at 8, idle: forgotten
        assert log.top() == [{"host": "a.test", "throttled": 0, "pauses": 0, "halvings": 1}]

    asyncio.run(scenario())


def test_a_halving_bites_what_is_in_flight_and_an_unused_limit_does_not_grow() -> None:
    """A 503 with 4 requests in flight under a limit of 128 brings the limit to 2 (halving
    128 would change nothing), once for the requests sent together; answers grow the limit
    only while the host uses all of it."""

    async def scenario() -> None:
        limiter = HostLimiter(128, None, metrics.BoundedHostLabels(), retry_after_max=5.0)
        await _together(limiter, "h.test", [_refusal(503), None, _refusal(503), None])
        assert limiter._hosts["h.test"].limit == 2  # one halving, of the 4 in flight

        for _ in range(20):  # one at a time: the host never uses its limit of 2
            await _through(limiter, "h.test")
        assert limiter._hosts["h.test"].limit == 2

        await _together(limiter, "h.test", [None] * 20)  # a backlog: the limit is used
        assert limiter._hosts["h.test"].limit > 2

    asyncio.run(scenario())


def test_host_state_stays_bounded_and_pauses_end() -> None:
    """More throttled hosts than the limiter remembers: the least recently used are forgotten;
    a paused host is remembered until its pause ends, then forgotten with its full limit."""

    async def scenario() -> None:
        limiter = HostLimiter(4, None, metrics.BoundedHostLabels(), retry_after_max=0.2)
        extra = 50
        for index in range(politeness.REMEMBERED_HOSTS + extra):
            await _through(limiter, f"h{index}.test", _refusal(503))
        assert len(limiter._hosts) == politeness.REMEMBERED_HOSTS
        assert "h0.test" not in limiter._hosts and f"h{extra}.test" in limiter._hosts
        paused_before = metrics.HOSTS_PAUSED._value.get()
        await _through(limiter, "p.test", _refusal(429, retry_after=30.0))  # capped at 0.2 s
        assert limiter._hosts["p.test"].resume is not None
        assert metrics.HOSTS_PAUSED._value.get() == paused_before + 1
        started = asyncio.get_running_loop().time()
        await _through(limiter, "p.test")  # waits for the pause
        assert asyncio.get_running_loop().time() - started >= 0.2 - CLOCK_SLACK_S
        assert "p.test" not in limiter._hosts
        assert metrics.HOSTS_PAUSED._value.get() == paused_before

    asyncio.run(scenario())


def test_cancelled_waiters_leave_no_slot_behind() -> None:
    """Rows cancelled (a shard's deadline) while queued for a paused host, or just after being
    handed a slot, give everything back: the others get through and the host is forgotten."""

    async def scenario() -> None:
        limiter = HostLimiter(1, None, metrics.BoundedHostLabels(), retry_after_max=0.3)
        await _through(limiter, "c.test", _refusal(503, retry_after=0.3))
        queued = [asyncio.create_task(_through(limiter, "c.test")) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert limiter._hosts["c.test"].users == 5 and limiter._hosts["c.test"].active == 0
        for task in queued[:3]:
            task.cancel()
        await asyncio.gather(*queued[:3], return_exceptions=True)
        await asyncio.wait_for(asyncio.gather(*queued[3:]), timeout=5)
        assert "c.test" not in limiter._hosts

        gate = asyncio.Event()

        async def hold() -> None:
            async with limiter.slot("d.test"):
                await gate.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0)
        first = asyncio.create_task(_through(limiter, "d.test"))
        second = asyncio.create_task(_through(limiter, "d.test"))
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.sleep(0)  # the holder leaves and hands its slot to the first waiter...
        first.cancel()  # ... which is cancelled before it runs
        await asyncio.gather(holder, first, return_exceptions=True)
        await asyncio.wait_for(second, timeout=5)
        assert first.cancelled() and "d.test" not in limiter._hosts

    asyncio.run(scenario())


def test_a_pause_stops_requests_waiting_for_a_token() -> None:
    """At 4 requests/s, 8 requests start together: 4 on the bucket's burst, 4 hold a slot and
    sleep for their token (0.25 s apart). A 429 asking for 0.6 s comes back at once: no request
    starts during the pause, not even those already asleep in the bucket, and all get through."""

    async def scenario() -> None:
        limiter = HostLimiter(8, 4.0, metrics.BoundedHostLabels(), retry_after_max=5.0)
        loop = asyncio.get_running_loop()
        starts: list[float] = []
        refused_at: list[float] = []

        async def request(index: int) -> None:
            with contextlib.suppress(FetchFailure):
                async with limiter.slot("r.test"):
                    starts.append(loop.time())
                    await asyncio.sleep(0.01)
                    if index == 0:
                        refused_at.append(loop.time())
                        raise _refusal(429, retry_after=0.6)

        await asyncio.wait_for(asyncio.gather(*(request(i) for i in range(8))), timeout=10)
        assert len(starts) == 8 and len(refused_at) == 1
        during = [s - refused_at[0] for s in starts if 0 < s - refused_at[0] < 0.6 - CLOCK_SLACK_S]
        assert not during, f"requests started {during} s into a 0.6 s pause"
        assert "r.test" not in limiter._hosts  # the pause is over, the host forgotten

    asyncio.run(scenario())
