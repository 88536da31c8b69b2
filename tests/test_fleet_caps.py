"""Job-wide per-host limits (``--per-host``, ``--host-rps`` for the whole job): the planner's
host counts, the manager's shares (``hostcaps``), a shard's own pacing (``shares``), and the
limits as a real origin sees them under the local engine's worker processes."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from fleet_caps import check_caps, recording_origin, run_capped_job
from manager_support import run_manager, url_table
from shard_input import write_shard_input
from yarl import URL

from ldawt.daemon.contract import FetchOptions, ShardSpec
from ldawt.daemon.shard import run_shard
from ldawt.manager import plan as plan_module
from ldawt.manager.hostcaps import HostShares
from ldawt.manager.inputs import (
    ClassLabels,
    estimate_rows,
    list_input_files,
    read_schema,
    resolve_columns,
    shard_tables,
)
from ldawt.manager.job import Job, JobRun, JobSettings
from ldawt.manager.plan import PlanOptions, ShardWriter


def test_local_worker_processes_share_the_per_host_limits(tmp_path: Path) -> None:
    with recording_origin() as (origin, base):
        stats = run_capped_job(tmp_path, base, "--engine", "local", "--workers", "3")
    check_caps(origin, stats)


# --- the manager's shares ---------------------------------------------------------------------


def _spec(shard_id: str) -> ShardSpec:
    return ShardSpec(shard_id=shard_id, input_path=f"/in/{shard_id}.parquet", output_dir="/out")


def _sums(running: dict[str, ShardSpec]) -> tuple[Counter[str], Counter[str]]:
    slots: Counter[str] = Counter()
    rates: Counter[str] = Counter()
    for spec in running.values():
        for host, (units, rate) in spec.host_shares.items():
            slots[host] += units
            rates[host] += rate
    return slots, rates


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
            for host, (units, _) in admitted.host_shares.items():
                assert 1 <= units <= rows[spec.shard_id][host]
            waiting.remove(spec)
            running[spec.shard_id] = admitted
            slots, rates = _sums(running)
            assert all(n <= 6 for n in slots.values()), slots
            assert all(r <= 100.0 + 1e-9 for r in rates.values()), rates
        assert running, "nothing admitted with nothing running"
        ended = rng.choice(sorted(running))
        shares.release(ended)
        del running[ended]
    assert refusals  # the caps did bind: some shards had to wait
    # every unit came back: one shard of the big host alone gets all it can use
    assert shares.admit(_spec("s0"), slots=1).host_shares["big"][0] == min(6, rows["s0"]["big"])


def _planned(tmp_path: Path, urls: list[str], fetch: FetchOptions, **plan: Any) -> JobRun:
    """A job folder planned by the real planner, with shards of 10 rows."""
    source = url_table(tmp_path / "urls.parquet", urls)
    files = list_input_files(source)
    columns = resolve_columns(read_schema(files[0]), None, None, None, ())
    job = Job(tmp_path / "out")
    options = PlanOptions(shard_size=10, fetch=fetch, **plan)
    writer = ShardWriter(job.shard_dir, job.spill_dir, options)
    shards = writer.write(shard_tables(files, columns, ClassLabels()), estimate_rows(files))
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
    shares = HostShares({"a": {"big": 50}, "b": {"big": 50}}, per_host=2, host_rps=None)
    first = shares.admit(_spec("a"), slots=1)
    assert first is not None and first.host_shares == {"big": (2, None)}
    assert shares.admit(_spec("b"), slots=1) is None
    light = _spec("c")
    assert shares.admit(light, slots=1) is light  # holds no heavy host: no bookkeeping
    shares.release("a")
    assert shares.admit(_spec("b"), slots=1).host_shares == {"big": (2, None)}


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
            host_shares={"127.0.0.1": (2, 20.0), "elsewhere.example": (1, 1.0)},
        )
        # through JSON, as a TaskVine call carries it
        result = run_shard(ShardSpec.from_dict(json.loads(json.dumps(spec.to_dict()))))
    assert result["ok"] and result["counts"] == {"ok": 40}
    assert origin.max_in_flight <= 2
    # no burst: 20/s and at most one request saved up, in any second
    assert origin.max_in_window(1.0) <= 21
