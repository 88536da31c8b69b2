"""The manager's metrics and the relay of shard results, scraped over real HTTP on 127.0.0.1."""

from __future__ import annotations

import math
import socket
from collections.abc import Iterator

import pytest
from metrics_support import LOOPBACK, scrape

from ldawt.manager import metrics


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


def test_every_status_is_exported_before_the_first_result(port: int) -> None:
    samples = scrape(port)
    for status in ("ok", "duplicate", "http_503", "dns_error", "internal_error"):
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


def test_manager_gauges(port: int) -> None:
    metrics.set_job_eta(None)  # the registry is per process: an earlier job may have set it
    assert math.isnan(scrape(port)["ldawt_manager_job_eta_seconds"])
    metrics.set_shard_states(pending=7, running=3, done=40, failed=1)
    metrics.set_workers_connected(4)
    metrics.set_function_calls_in_flight(3)
    metrics.set_job_eta(95.0)
    metrics.mark_job_start(1_700_000_000.0)
    samples = scrape(port)
    assert samples['ldawt_manager_shards{state="pending"}'] == 7
    assert samples['ldawt_manager_shards{state="running"}'] == 3
    assert samples['ldawt_manager_shards{state="done"}'] == 40
    assert samples['ldawt_manager_shards{state="failed"}'] == 1
    assert samples["ldawt_manager_workers_connected"] == 4
    assert samples["ldawt_manager_function_calls_in_flight"] == 3
    assert samples["ldawt_manager_job_eta_seconds"] == 95
    assert samples["ldawt_manager_job_start_time_seconds"] == 1_700_000_000
    assert samples["process_resident_memory_bytes"] > 0
    metrics.set_job_eta(None)
    assert math.isnan(scrape(port)["ldawt_manager_job_eta_seconds"])


def test_manager_port_in_use_raises() -> None:
    metrics.stop_manager_metrics_server()
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        with pytest.raises(OSError):
            metrics.start_manager_metrics_server(LOOPBACK, busy.getsockname()[1])
