"""Job-wide per-host limits (``--per-host``, ``--host-rps`` for the whole job): the planner's
host counts, the manager's shares (``hostcaps``), a shard's own pacing (``shares``), and the
limits as a real origin sees them under the local engine's worker processes."""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from fleet_caps import check_caps, recording_origin, run_capped_job
from manager_support import plan_source, run_manager, url_table
from shard_input import write_shard_input
from yarl import URL

from ldawt.daemon.contract import FetchOptions, HostShare, ShardSpec
from ldawt.daemon.shard import run_shard
from ldawt.manager import plan as plan_module
from ldawt.manager.engines.local import LocalEngine
from ldawt.manager.errors import InputError
from ldawt.manager.hostcaps import HostShares
from ldawt.manager.job import Job, JobRun, JobSettings
from ldawt.manager.plan import PlanOptions


def test_local_worker_processes_share_the_per_host_limits(tmp_path: Path) -> None:
    with recording_origin() as (origin, base):
        stats = run_capped_job(tmp_path, base, "--engine", "local", "--workers", "3")
    check_caps(origin, stats)


# --- the manager's shares ---------------------------------------------------------------------


def _spec(shard_id: str) -> ShardSpec:
    return ShardSpec(shard_id=shard_id, input_path=f"/in/{shard_id}.parquet", output_dir="/out")


def _units(running: dict[str, ShardSpec]) -> dict[str, list[int]]:
    """Host -> the unit numbers the running shards hold, all together."""
    held: dict[str, list[int]] = {}
    for spec in running.values():
        for host, share in spec.host_shares.items():
            held.setdefault(host, []).extend(share.units)
    return held


def test_shares_never_add_up_past_the_caps_and_come_back_when_shards_end() -> None:
    rng = random.Random(7)
    rows = {
        f"s{i}": {"big": rng.randint(1, 40), **({"mid": rng.randint(1, 5)} if i % 3 else {})}
        for i in range(40)
    }
    shares = HostShares(rows, per_host=6, host_rps=100.0)
    waiting = [_spec(shard_id) for shard_id in rows]
    running: dict[str, ShardSpec] = {}
    refusals = 0
    while waiting or running:
        for spec in list(waiting):
            if len(running) == 8:  # more slots than units: the caps must bind
                break
            admitted = shares.admit(spec, slots=8)
            if admitted is None:
                refusals += 1
                continue
            assert set(admitted.host_shares) == set(rows[spec.shard_id])
            for host, share in admitted.host_shares.items():
                assert 1 <= len(share.units) <= rows[spec.shard_id][host]
                assert share.host_rps == 100.0 and share.capacity == 6
            waiting.remove(spec)
            running[spec.shard_id] = admitted
            # no unit held twice, so no instant of a host's schedule used twice
            for units in _units(running).values():
                assert len(set(units)) == len(units) and set(units) <= set(range(6))
        assert running, "nothing admitted with nothing running"
        ended = rng.choice(sorted(running))
        shares.release(ended)
        del running[ended]
    assert refusals  # the caps did bind: some shards had to wait
    # every unit came back: one shard of the big host alone gets all it can use
    alone = shares.admit(_spec("s0"), slots=1).host_shares["big"]
    assert alone.units == tuple(range(min(6, rows["s0"]["big"])))


def _planned(tmp_path: Path, urls: list[str], fetch: FetchOptions, **plan: Any) -> JobRun:
    """A job folder planned by the real planner, with shards of 10 rows."""
    source = url_table(tmp_path / "urls.parquet", urls)
    job = Job(tmp_path / "out")
    options = PlanOptions(shard_size=10, fetch=fetch, **plan)
    _, shards = plan_source(source, job.shard_dir, job.spill_dir, options)
    ledger = job.open_ledger()
    ledger.add_shards(
        ((s.shard_id, str(s.input_path.relative_to(job.out)), s.rows) for s in shards), 0, {}
    )
    return JobRun(job, ledger, JobSettings(options))


def _mixed_hosts() -> list[str]:
    """30 rows of big, 4 of mid, 1 of solo, 66 on hosts of 2 rows; shuffled."""
    urls = [f"http://BIG.example:8080/{i}.jpg" for i in range(30)]
    urls += [f"http://mid.example/{i}.jpg" for i in range(4)] + ["http://solo.example/0.jpg"]
    urls += [f"http://pair{i // 2}.example/{i}.jpg" for i in range(66)]
    order = random.Random(3).sample(range(len(urls)), len(urls))
    return [urls[i] for i in order]


def _shared_hosts(run: JobRun) -> dict[str, set[str]]:
    """Host -> the shards that got a share of it, each admitted alone."""
    specs = [run.spec(shard) for shard in run.ledger.shards()]
    shares = HostShares.of_run(run, specs)
    found: dict[str, set[str]] = {}
    for spec in specs:
        admitted = shares.admit(spec, slots=100)
        assert admitted is not None
        shares.release(spec.shard_id)
        for host in admitted.host_shares:
            found.setdefault(host, set()).add(spec.shard_id)
    return found


def test_only_hosts_that_could_break_a_limit_are_tracked(tmp_path: Path) -> None:
    urls = _mixed_hosts()
    single = {h for h, n in Counter(URL(u).host for u in urls).items() if n == 1}
    assert single == {"solo.example"}
    run = _planned(tmp_path / "a", urls, FetchOptions(per_host=4))
    counts = pq.read_table(run.job.shard_dir / "host-counts" / "plan.parquet")
    # the planner's counts are the shard inputs' hosts, lower case, no port; one-row hosts out
    assert "solo.example" not in counts["host"].to_pylist()
    for shard in run.ledger.shards():
        table = pq.read_table(run.job.out / shard.input_path)
        held = Counter(URL(u).host for u in table["url"].to_pylist())
        recorded = counts.filter(pc.equal(counts["shard"], shard.shard_id))
        assert dict(
            zip(recorded["host"].to_pylist(), recorded["rows"].to_pylist(), strict=True)
        ) == {h: n for h, n in held.items() if h != "solo.example"}
    big_shards = set(counts.filter(pc.equal(counts["host"], "big.example"))["shard"].to_pylist())
    assert _shared_hosts(run) == {"big.example": big_shards}  # mid's 4 rows fit --per-host 4
    # with a rate, every attempt counts: 4 rows x 2 attempts could pass --host-rps 6 in a second
    rated = _planned(tmp_path / "b", urls, FetchOptions(per_host=4, host_rps=6.0, retries=1))
    assert set(_shared_hosts(rated)) == {"big.example", "mid.example"}


def test_a_job_planned_without_counts_is_counted_when_it_runs(tmp_path: Path) -> None:
    run = _planned(tmp_path, _mixed_hosts(), FetchOptions(per_host=4))
    expected = _shared_hosts(run)
    shutil.rmtree(run.job.shard_dir / "host-counts")  # as planned before they existed
    assert _shared_hosts(run) == expected
    assert [p.name for p in (run.job.shard_dir / "host-counts").iterdir()] == [
        "counted-00000.parquet"
    ]


def test_a_light_shard_is_admitted_while_a_heavy_host_is_full(tmp_path: Path) -> None:
    rows = {"a": {"big": 50}, "b": {"big": 50}, "b2": {"big": 50}}
    shares = HostShares(rows, per_host=2, host_rps=None)
    first = shares.admit(_spec("a"), slots=2)
    assert first is not None and first.host_shares == {"big": HostShare((0,), 2, None)}
    second = shares.admit(_spec("b"), slots=2)
    assert second is not None and second.host_shares == {"big": HostShare((1,), 2, None)}
    assert shares.admit(_spec("b2"), slots=3) is None  # both units held
    light = _spec("c")
    assert shares.admit(light, slots=3) is light  # holds no heavy host: no bookkeeping
    shares.release("a")
    assert shares.admit(_spec("b2"), slots=3).host_shares == {"big": HostShare((0,), 2, None)}


def test_a_shard_past_the_slots_is_refused_rather_than_given_every_free_unit() -> None:
    """Two shards fill the engine's two slots; a third (TaskVine queues calls beyond the cores)
    would once have taken all 8 units left, starving the shards that start after the first two
    end. It waits for a slot instead, and then gets the units free."""
    rows = {"a": {"big": 2}, "b": {"big": 2}, "c": {"big": 50}, "d": {"big": 50}}
    shares = HostShares(rows, per_host=12, host_rps=None)
    assert len(shares.admit(_spec("a"), slots=2).host_shares["big"].units) == 2
    assert len(shares.admit(_spec("b"), slots=2).host_shares["big"].units) == 2
    assert shares.admit(_spec("c"), slots=2) is None
    shares.release("a")
    assert len(shares.admit(_spec("c"), slots=2).host_shares["big"].units) == 10


# --- planning with --group-by-host ------------------------------------------------------------


def test_group_by_host_keeps_each_hosts_rows_in_few_shards(tmp_path: Path, monkeypatch) -> None:
    # 20 hosts of 37 rows, interleaved; every fifth URL repeated (duplicates share a shard)
    urls = [f"http://h{i % 20}.example/{i}.jpg" for i in range(740)]
    urls += urls[::5]
    fetch = FetchOptions()
    spread = _host_shards(_planned(tmp_path / "input-order", urls, fetch))
    assert min(len(s) for s in spread.values()) > 10  # in input order, every host everywhere
    results = []
    for spill_rows in (200_000, 100):  # one partition, and many
        monkeypatch.setattr(plan_module, "SPILL_ROWS", spill_rows)
        run = _planned(tmp_path / f"by-host-{spill_rows}", urls, fetch, group_by_host=True)
        grouped = _host_shards(run)
        # 37 rows (+ their duplicates) in shards of 10: never more than 6 shards
        assert len(grouped) == 20 and max(len(s) for s in grouped.values()) <= 6
        tables = [pq.read_table(run.job.out / s.input_path) for s in run.ledger.shards()]
        rows = pa.concat_tables(tables)
        assert sorted(rows["row"].to_pylist()) == list(range(len(urls)))
        for table in tables:
            originals = {d for d in table["dup_of"].to_pylist() if d is not None}
            assert originals <= set(table["row"].to_pylist())
        results.append([t.to_pylist() for t in tables])
    assert results[0] == results[1]  # the same shards whatever the partitioning


def _host_shards(run: JobRun) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for shard in run.ledger.shards():
        for url in pq.read_table(run.job.out / shard.input_path)["url"].to_pylist():
            found.setdefault(URL(url).host, set()).add(shard.shard_id)
    return found


def test_group_by_host_is_refused_with_the_class_strategy(tmp_path: Path) -> None:
    source = url_table(tmp_path / "urls.parquet", ["http://h/1.jpg"])
    done = run_manager(
        "submit", source, "--out", tmp_path / "out", "--group-by-host", "--strategy", "class"
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--group-by-host" in done.stderr


@pytest.mark.parametrize("value", ["0", "-1", "fast", "inf"])
def test_host_rps_must_be_a_positive_number(tmp_path: Path, value: str) -> None:
    done = run_manager("submit", "urls.parquet", "--out", tmp_path, "--host-rps", value)
    assert done.returncode == 2 and "--host-rps" in done.stderr


def test_help_says_the_host_limits_are_job_wide() -> None:
    text = " ".join(run_manager("submit", "--help").stdout.split())
    assert "requests in flight per host, for the whole job" in text
    assert "requests per second per host, for the whole job" in text


# --- a shard's own share ----------------------------------------------------------------------


def test_a_shard_keeps_to_its_share(tmp_path: Path) -> None:
    with recording_origin() as (origin, base):
        urls = [f"{base}/img/s{i}.jpg?slow=0.05" for i in range(40)]
        input_path = tmp_path / "in.parquet"
        write_shard_input(input_path, urls, ["c"] * 40, [f"k{i}" for i in range(40)])
        spec = ShardSpec(
            shard_id="s0",
            input_path=str(input_path),
            output_dir=str(tmp_path / "out"),
            fetch=FetchOptions(allow_private=True, robots="ignore"),
            host_shares={
                "127.0.0.1": HostShare((0, 1), 2, 20.0),
                "elsewhere.example": HostShare((3,), 8, 1.0),
            },
        )
        # through JSON, as a TaskVine call carries it
        result = run_shard(ShardSpec.from_dict(json.loads(json.dumps(spec.to_dict()))))
    assert result["ok"] and result["counts"] == {"ok": 40}
    assert origin.max_in_flight <= 2
    # its two units are the host's every instant: 20/s, one more at a window's edges
    assert origin.max_in_window(1.0) <= 21


# --- review findings: host names, old jobs, crowded hosts, the local engine --------------------


def test_hosts_are_named_as_the_daemon_names_them(tmp_path: Path) -> None:
    """A unicode host name and an IPv6 literal: the manager's shares name them as yarl's
    ``URL.raw_host`` does (the daemon's key), punycode and without brackets, so they apply."""
    urls = [f"http://Bücher.Example:8080/{i}.jpg" for i in range(8)]
    urls += [f"http://[::1]:8080/{i}.jpg" for i in range(8)]
    urls += [f"http://[2001:DB8::1]/{i}.jpg" for i in range(8)]
    run = _planned(tmp_path, urls, FetchOptions(per_host=4))
    assert set(_shared_hosts(run)) == {URL(u).raw_host for u in urls}
    assert set(_shared_hosts(run)) == {"xn--bcher-kva.example", "::1", "2001:db8::1"}


def test_the_report_names_hosts_as_the_shares_do(tmp_path: Path) -> None:
    """Rows refused without a network request (loopback without --allow-private): the report
    names their hosts lower case and without brackets, as ``hosts_of`` does."""
    urls = [f"http://[::1]:9/{i}.jpg" for i in range(3)] + ["http://LOCALHOST:9/x.jpg"]
    source = url_table(tmp_path / "urls.parquet", urls)
    out = tmp_path / "out"
    run = ["--engine", "local", "--workers", "1", "--robots", "ignore", "--retries", "0", "-q"]
    assert run_manager("submit", source, "--out", out, *run).returncode == 0
    done = run_manager("report", out, "--json")
    assert done.returncode == 0, done.stderr
    hosts = {item["host"] for item in json.loads(done.stdout)["failures_by_host"]}
    assert hosts == {"::1", "localhost"}


def test_a_host_split_between_count_files_is_still_heavy(tmp_path: Path) -> None:
    """A job planned without counts, run in two steps: each step counts its shards into its own
    file, where the host has 3 rows; over both it has 6, more than --per-host 4 allows."""
    urls = []
    for shard in range(2):
        urls += [f"http://split.example/{shard}-{i}.jpg" for i in range(3)]
        urls += [f"http://pair{shard}-{i // 2}.example/{i}.jpg" for i in range(7)]
    run = _planned(tmp_path, urls, FetchOptions(per_host=4))
    shutil.rmtree(run.job.shard_dir / "host-counts")
    specs = [run.spec(shard) for shard in run.ledger.shards()]
    assert len(specs) == 2
    HostShares.of_run(run, specs[:1])
    shares = HostShares.of_run(run, specs)
    assert len(list((run.job.shard_dir / "host-counts").iterdir())) == 2
    for spec in specs:
        assert set(shares.admit(spec, slots=2).host_shares) == {"split.example"}


def test_an_unreadable_shard_input_is_one_line(tmp_path: Path) -> None:
    run = _planned(tmp_path, _mixed_hosts(), FetchOptions(per_host=4))
    shutil.rmtree(run.job.shard_dir / "host-counts")
    specs = [run.spec(shard) for shard in run.ledger.shards()]
    Path(specs[1].input_path).write_bytes(b"not parquet")
    with pytest.raises(InputError) as raised:
        HostShares.of_run(run, specs)
    message = str(raised.value)
    assert "\n" not in message and specs[1].shard_id in message and "unreadable" in message
    Path(specs[1].input_path).unlink()
    with pytest.raises(InputError, match=f"shard {specs[1].shard_id}.*unreadable"):
        HostShares.of_run(run, specs)


def test_a_host_in_more_shards_than_units_is_warned_of_once(caplog) -> None:
    rows = {f"s{i}": {"big": 10} for i in range(20)}
    shares = HostShares(rows, per_host=4, host_rps=None)
    with caplog.at_level("WARNING", logger="ldawt.manager.hostcaps"):
        for shard_id in rows:
            shares.admit(_spec(shard_id), slots=8)
    (record,) = caplog.records
    assert "--group-by-host" in record.getMessage() and "big: 20 shards" in record.getMessage()


def test_a_host_with_a_unit_per_slot_is_not_warned_of(caplog) -> None:
    shares = HostShares({f"s{i}": {"big": 10} for i in range(20)}, per_host=32, host_rps=None)
    with caplog.at_level("WARNING", logger="ldawt.manager.hostcaps"):
        shares.admit(_spec("s0"), slots=8)
    assert not caplog.records


def test_a_local_worker_starts_its_next_shard_before_the_caller_takes_the_result(
    tmp_path: Path,
) -> None:
    """The caller records a result (ledger, files) before it asks for the next: meanwhile the
    worker that finished runs the next shard already."""
    with recording_origin() as (origin, base):
        specs = []
        for n in range(2):
            urls = [f"{base}/img/{n}-{i}.jpg" for i in range(3)]
            path = tmp_path / f"{n}.parquet"
            write_shard_input(path, urls, ["c"] * 3, [f"{n}-{i}" for i in range(3)])
            specs.append(
                ShardSpec(
                    shard_id=f"s{n}",
                    input_path=str(path),
                    output_dir=str(tmp_path / "out"),
                    fetch=FetchOptions(allow_private=True, robots="ignore"),
                )
            )
        results = LocalEngine(workers=1).run(specs, lambda _: None)
        try:
            assert next(results)["shard_id"] == "s0"
            deadline = time.monotonic() + 30
            while not any(path.startswith("/img/1-") for path in origin.hits):
                assert time.monotonic() < deadline, "the next shard waited for the caller"
                time.sleep(0.05)
            assert next(results)["ok"]
        finally:
            results.close()
