"""The manager's metrics and the relay of shard results, scraped over real HTTP on 127.0.0.1."""

from __future__ import annotations

import math
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from manager_support import running_origin, url_table
from metrics_support import LOOPBACK, free_port, scrape
from shard_input import write_shard_input

from ldawt.daemon.contract import ALL_STATUSES, DUPLICATE_OF, failure_result
from ldawt.daemon.shard import run_shard
from ldawt.manager import cli, metrics


@pytest.fixture
def port() -> Iterator[int]:
    metrics.stop_manager_metrics_server()
    yield metrics.start_manager_metrics_server(LOOPBACK, 0)
    metrics.stop_manager_metrics_server()


def result(shard_id: str, ok: bool, counts: dict[str, int], **extra: object) -> dict[str, object]:
    base: dict[str, object] = {
        "shard_id": shard_id,
        "ok": ok,
        "error": None if ok else "deadline",
        "rows": sum(counts.values()),
        "counts": counts,
        "bytes": 1000,
        "elapsed_s": 12.5,
        "connections_new": 2,
        "connections_reused": 8,
        "host": "w1",
        "pid": 1,
    }
    base.update(extra)
    return base


def test_relay_sums_shard_results_into_fleet_totals(port: int) -> None:
    before = scrape(port)
    metrics.record_shard_result(result("00001", True, {"ok": 5, "http_404": 2, "duplicate": 1}))
    metrics.record_shard_result(result("00002", True, {"ok": 3, "timeout": 1}))
    metrics.record_shard_result(result("00003", False, {"ok": 4, "http_429": 6}))
    after = scrape(port)

    def delta(key: str) -> float:
        return after[key] - before.get(key, 0.0)

    assert delta('ldawt_fleet_images_total{status="ok"}') == 12
    assert delta('ldawt_fleet_images_total{status="http_404"}') == 2
    assert delta('ldawt_fleet_images_total{status="http_429"}') == 6
    assert delta('ldawt_fleet_images_total{status="duplicate"}') == 1
    assert delta("ldawt_fleet_download_bytes_total") == 3000
    assert delta('ldawt_fleet_connections_total{kind="new"}') == 6
    assert delta('ldawt_fleet_connections_total{kind="reused"}') == 24
    assert delta('ldawt_fleet_shards_finished_total{outcome="done"}') == 2
    assert delta('ldawt_fleet_shards_finished_total{outcome="failed"}') == 1
    assert delta("ldawt_fleet_shard_duration_seconds_count") == 3
    assert delta("ldawt_fleet_shard_duration_seconds_sum") == 37.5
    # Rows of the job only count committed shards.
    assert delta('ldawt_manager_rows_total{outcome="ok"}') == 8
    assert delta('ldawt_manager_rows_total{outcome="duplicate"}') == 1
    assert delta('ldawt_manager_rows_total{outcome="failed"}') == 3


def test_relay_of_a_real_shard_result(port: int, tmp_path: Path) -> None:
    """The relay reads what ``run_shard`` really returns (not a hand-made dict): the fleet
    series move by the shard's manifest and result."""
    with running_origin() as origin:
        urls = [origin.url("img", i) for i in range(4)] + [origin.url("gone", 0)]
        urls.append(urls[0])  # a duplicate of row 0: not fetched, shares its member
        input_path = tmp_path / "in.parquet"
        write_shard_input(input_path, urls, ["bird"] * 6, [f"k{i}" for i in range(6)])
        table = pq.read_table(input_path)
        dup_of = pa.array([None] * 5 + [0], pa.int64())
        pq.write_table(table.append_column(DUPLICATE_OF, dup_of), input_path)
        result = run_shard(
            {
                "shard_id": "00007",
                "input_path": str(input_path),
                "output_dir": str(tmp_path / "out"),
                "fetch": {"allow_private": True},
            }
        )
    assert result["ok"], result
    manifest = pq.read_table(result["manifest_path"]).to_pylist()
    statuses = Counter(row["status"] for row in manifest)
    assert statuses == {"ok": 4, "http_404": 1, "duplicate": 1}

    before = scrape(port)
    metrics.record_shard_result(result)
    after = scrape(port)

    def delta(key: str) -> float:
        return after[key] - before.get(key, 0.0)

    for status in ALL_STATUSES:
        assert delta(f'ldawt_fleet_images_total{{status="{status}"}}') == statuses[status]
    ok_bytes = sum(row["bytes"] for row in manifest if row["status"] == "ok")
    assert ok_bytes > 0
    assert delta("ldawt_fleet_download_bytes_total") == ok_bytes
    assert delta('ldawt_fleet_connections_total{kind="new"}') == result["connections_new"]
    assert delta('ldawt_fleet_connections_total{kind="reused"}') == result["connections_reused"]
    assert result["connections_new"] + result["connections_reused"] >= 5
    assert delta('ldawt_fleet_shards_finished_total{outcome="done"}') == 1
    assert delta('ldawt_fleet_shards_finished_total{outcome="failed"}') == 0
    assert delta("ldawt_fleet_shard_duration_seconds_count") == 1
    assert delta("ldawt_fleet_shard_duration_seconds_sum") == pytest.approx(result["elapsed_s"])
    assert delta('ldawt_manager_rows_total{outcome="ok"}') == 4
    assert delta('ldawt_manager_rows_total{outcome="duplicate"}') == 1
    assert delta('ldawt_manager_rows_total{outcome="failed"}') == 1


def test_every_status_is_exported_before_the_first_result(port: int) -> None:
    samples = scrape(port)
    # a few by name, and the whole closed set of the shard contract
    for status in {"ok", "duplicate", "http_503", "dns_error", "internal_error", *ALL_STATUSES}:
        assert f'ldawt_fleet_images_total{{status="{status}"}}' in samples


def test_relay_never_raises_and_bounds_labels(port: int) -> None:
    before = scrape(port)
    metrics.record_shard_result({"ok": True, "counts": {"made_up": 3, "ok": -4, "timeout": "x"}})
    metrics.record_shard_result({"ok": False, "counts": None, "bytes": -5, "elapsed_s": math.inf})
    metrics.record_shard_result({})
    metrics.record_shard_result(result("00004", True, {}, bytes=None, elapsed_s=True))
    after = scrape(port)
    assert after['ldawt_fleet_images_total{status="other"}'] == 3
    assert (
        after['ldawt_fleet_images_total{status="ok"}']
        == before['ldawt_fleet_images_total{status="ok"}']
    )
    assert after["ldawt_fleet_download_bytes_total"] == before["ldawt_fleet_download_bytes_total"]
    assert not any('status="made_up"' in key for key in after)


def shard_states(samples: dict[str, float]) -> dict[str, float]:
    return {
        state: samples[f'ldawt_manager_shards{{state="{state}"}}']
        for state in ("pending", "running", "done", "failed")
    }


class FirstShardLost:
    """Wraps the engine the command line made: scrapes the manager's endpoint before handing
    over each result, and turns the first result into what an engine reports when a shard's
    worker died."""

    def __init__(self, engine: Any, port: int) -> None:
        self.engine = engine
        self.port = port
        self.seen: list[dict[str, float]] = []

    def describe(self) -> str:
        return self.engine.describe()

    def run(self, specs: list[Any], progress: Any, shares: Any) -> Iterator[Any]:
        results = self.engine.run(specs, progress, shares)
        try:
            for index, result in enumerate(results):
                self.seen.append(scrape(self.port))
                if index == 0:
                    result = failure_result(result["shard_id"], "worker lost (injected)")
                yield result
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()


def test_the_job_loop_publishes_shard_states_eta_and_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real ``submit`` (local engine, one shard's worker lost, no shard retries): the
    manager's gauges follow the job as its loop sees it, while it runs and at the end."""
    metrics.stop_manager_metrics_server()
    metrics.set_job_eta(None)  # the registry is per process: an earlier job may have set it
    port = free_port()
    engines: list[FirstShardLost] = []
    make_engine = cli.make_engine

    def wrapped_engine(args: Any) -> FirstShardLost:
        engines.append(FirstShardLost(make_engine(args), port))
        return engines[-1]

    monkeypatch.setattr(cli, "make_engine", wrapped_engine)
    with running_origin() as origin:
        table = url_table(tmp_path / "in.parquet", [origin.url("img", i) for i in range(20)])
        started = time.time()
        try:
            status = cli.main(
                [
                    "submit",
                    str(table),
                    "--out",
                    str(tmp_path / "out"),
                    "--allow-private",
                    "--shard-size",
                    "5",
                    "--engine",
                    "local",
                    "--workers",
                    "1",
                    "--shard-retries",
                    "0",
                    "--metrics-port",
                    str(port),
                    "--metrics-address",
                    LOOPBACK,
                ]
            )
            finished = time.time()
            samples = scrape(port)
        finally:
            metrics.stop_manager_metrics_server()
    assert status == 1  # a shard failed for good
    [engine] = engines
    # As published before each result was handed over: all four submitted, then one by one
    # failed (the lost one) or done.
    assert [shard_states(seen) for seen in engine.seen] == [
        {"pending": 0, "running": 4, "done": 0, "failed": 0},
        {"pending": 0, "running": 3, "done": 0, "failed": 1},
        {"pending": 0, "running": 2, "done": 1, "failed": 1},
        {"pending": 0, "running": 1, "done": 2, "failed": 1},
    ]
    assert shard_states(samples) == {"pending": 0, "running": 0, "done": 3, "failed": 1}
    # NaN before the job (set above); an estimate once a shard was committed
    for seen in [*engine.seen[2:], samples]:
        assert 0 <= seen["ldawt_manager_job_eta_seconds"] < math.inf
    assert started <= samples["ldawt_manager_job_start_time_seconds"] <= finished
    assert samples["process_resident_memory_bytes"] > 0
    metrics.set_job_eta(None)
    assert math.isnan(metrics.REGISTRY.get_sample_value("ldawt_manager_job_eta_seconds"))


def test_manager_port_in_use_raises() -> None:
    metrics.stop_manager_metrics_server()
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        with pytest.raises(OSError):
            metrics.start_manager_metrics_server(LOOPBACK, busy.getsockname()[1])
