"""The daemon's metrics endpoint, scraped over real HTTP on 127.0.0.1."""

from __future__ import annotations

import errno
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import prometheus_client
import psutil
import pyarrow.parquet as pq
import pytest
from fault_origin import FaultOrigin
from metrics_support import LOOPBACK, scrape
from shard_input import write_shard_input

from ldawt.daemon import metrics
from ldawt.daemon.contract import ALL_STATUSES
from ldawt.daemon.shard import run_shard
from ldawt.manager.demo import serve_in_background


def listening_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, port))
    sock.listen()
    return sock


def occupied_run(length: int) -> tuple[int, list[socket.socket]]:
    """``length`` consecutive ports, each held by a listening socket (bounded search)."""
    for _ in range(50):
        first = listening_socket()
        base = first.getsockname()[1]
        held = [first]
        try:
            for port in range(base + 1, base + length):
                held.append(listening_socket(port))
        except OSError:
            for sock in held:
                sock.close()
            continue
        return base, held
    pytest.skip("no run of consecutive free ports found")


@pytest.fixture
def daemon_server() -> Iterator[None]:
    metrics.stop_metrics_server()
    yield
    metrics.stop_metrics_server()


def test_a_real_shard_moves_the_counters_by_its_manifest(
    daemon_server: None, tmp_path: Path
) -> None:
    """One shard through ``run_shard`` against a loopback origin: every counter the daemon
    exports moves by exactly what the shard's manifest and result say."""
    port = metrics.start_metrics_server(LOOPBACK, 0, 1)
    origin = FaultOrigin()
    with serve_in_background(origin.app) as origin_port:
        base = f"http://{LOOPBACK}:{origin_port}"
        urls = [f"{base}/img/m{i}.jpg" for i in range(6)]
        urls += [f"{base}/status/404", f"{base}/flaky/429/1/late", None]
        write_shard_input(tmp_path / "in.parquet", urls, ["bird"] * len(urls), list("abcdefghi"))
        before = scrape(port)
        result = run_shard(
            {
                "shard_id": "m0",
                "input_path": str(tmp_path / "in.parquet"),
                "output_dir": str(tmp_path / "out"),
                "fetch": {"allow_private": True, "backoff_base": 0.01, "backoff_max": 0.02},
            }
        )
        after = scrape(port)
    assert result["ok"], result
    manifest = pq.read_table(result["manifest_path"]).to_pylist()
    statuses = Counter(row["status"] for row in manifest)
    assert statuses == {"ok": 7, "http_404": 1, "bad_url": 1} == result["counts"]
    attempts = sum(row["attempts"] for row in manifest)
    assert attempts == 9  # the 429 was retried once; a bad URL is never requested

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    def delta_sum(prefix: str) -> float:
        return sum(delta(key) for key in after if key.startswith(prefix))

    # Every status of the taxonomy is exported (at 0) from the first scrape on.
    assert 'ldawt_images_total{status="dns_error"}' in before
    assert 'ldawt_shards_finished_total{outcome="failed"}' in before
    for status in ALL_STATUSES:
        assert delta(f'ldawt_images_total{{status="{status}"}}') == statuses[status], status
    assert delta_sum("ldawt_images_total{") == len(manifest)
    ok_bytes = sum(row["bytes"] for row in manifest if row["status"] == "ok")
    assert delta("ldawt_download_bytes_total") == ok_bytes == result["bytes"]
    assert delta("ldawt_request_duration_seconds_count") == attempts
    assert delta('ldawt_request_duration_seconds_bucket{le="+Inf"}') == attempts
    assert delta("ldawt_time_to_first_byte_seconds_count") == attempts
    assert delta('ldawt_http_responses_total{code_class="2xx"}') == 7
    assert delta('ldawt_http_responses_total{code_class="4xx"}') == 2
    assert delta_sum("ldawt_host_responses_total{") == attempts
    assert delta_sum("ldawt_host_throttled_responses_total{") == 1
    # the 429 named no Retry-After: the host's limit halved, no pause
    assert delta_sum("ldawt_host_limit_halvings_total{") == 1
    assert delta_sum("ldawt_host_pauses_total{") == 0
    assert after["ldawt_hosts_paused"] == before["ldawt_hosts_paused"]
    # half of what was in flight (the 8 requests at most), not of 128; the 8 answers after
    # it raise it by one at most
    assert 1 <= after[f'ldawt_host_concurrency_limit{{host="{LOOPBACK}"}}'] <= 8 // 2 + 1
    assert result["throttled_hosts"] == [
        {"host": LOOPBACK, "throttled": 1, "pauses": 0, "halvings": 1}
    ]
    assert delta('ldawt_retries_total{reason="http_429"}') == 1
    assert delta_sum("ldawt_retries_total{") == 1
    assert delta('ldawt_connections_total{kind="new"}') == result["connections_new"]
    assert delta('ldawt_connections_total{kind="reused"}') == result["connections_reused"]
    assert result["connections_new"] + result["connections_reused"] >= attempts
    assert delta("ldawt_shards_started_total") == 1
    assert delta('ldawt_shards_finished_total{outcome="done"}') == 1
    assert delta('ldawt_shards_finished_total{outcome="failed"}') == 0
    assert delta("ldawt_shard_duration_seconds_count") == 1
    assert delta("ldawt_shard_duration_seconds_sum") == pytest.approx(result["elapsed_s"])
    assert delta("ldawt_library_calls_total") == 1
    assert after["ldawt_requests_in_flight"] == 0
    # the shard pointed the workspace gauges at its output folder
    assert after["ldawt_workspace_size_bytes"] == psutil.disk_usage(str(tmp_path / "out")).total
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        assert after[name] > 0


def test_second_start_returns_the_same_port(daemon_server: None) -> None:
    port = metrics.start_metrics_server(LOOPBACK, 0, 1)
    assert metrics.start_metrics_server(LOOPBACK, 0, 1) == port


def test_port_in_use_moves_to_the_next_port(daemon_server: None) -> None:
    base, held = occupied_run(2)
    try:
        port = metrics.start_metrics_server(LOOPBACK, base, 5)
        assert base + 2 <= port < base + 5
        assert "ldawt_library_calls_total" in scrape(port)
    finally:
        for sock in held:
            sock.close()


def test_every_port_in_use_raises(daemon_server: None) -> None:
    base, held = occupied_run(3)
    try:
        with pytest.raises(OSError) as info:
            metrics.start_metrics_server(LOOPBACK, base, 3)
        assert info.value.errno == errno.EADDRINUSE
    finally:
        for sock in held:
            sock.close()


def test_serve_registry_serves_any_registry_and_stops() -> None:
    registry = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("probe_things", "A probe.", registry=registry).inc(7)
    httpd = metrics.serve_registry(registry, LOOPBACK, 0)
    port = httpd.server_port
    try:
        assert scrape(port)["probe_things_total"] == 7
    finally:
        metrics.stop_server(httpd)
    with pytest.raises(OSError):
        scrape(port)


def test_workspace_gauges_follow_the_file_system(daemon_server: None, tmp_path: Path) -> None:
    port = metrics.start_metrics_server(LOOPBACK, 0, 1)
    metrics.watch_workspace(tmp_path)
    samples = scrape(port)
    usage = psutil.disk_usage(str(tmp_path))
    assert samples["ldawt_workspace_size_bytes"] == usage.total
    # Other processes write too: allow 256 MiB of drift between the two statvfs calls.
    assert abs(samples["ldawt_workspace_free_bytes"] - usage.free) < 256 * 2**20
    gone = tmp_path / "gone"
    gone.mkdir()
    metrics.watch_workspace(gone)
    gone.rmdir()
    samples = scrape(port)  # a vanished workspace must not break the scrape
    assert samples["ldawt_workspace_free_bytes"] != samples["ldawt_workspace_free_bytes"]  # NaN


def test_observe_response_counts_classes_and_throttling(daemon_server: None) -> None:
    port = metrics.start_metrics_server(LOOPBACK, 0, 1)
    labeler = metrics.BoundedHostLabels(max_hosts=1)
    first, second = labeler("a.test"), labeler("b.test")
    assert (first, second) == ("a.test", metrics.OTHER_HOST)
    before = scrape(port)
    metrics.observe_response(first, 429)
    metrics.observe_response(second, 503)
    metrics.observe_response(second, 200)
    after = scrape(port)

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta('ldawt_host_throttled_responses_total{host="a.test"}') == 1
    assert delta('ldawt_host_responses_total{code_class="4xx",host="a.test"}') == 1
    assert delta('ldawt_host_responses_total{code_class="5xx",host="other"}') == 1
    assert delta('ldawt_http_responses_total{code_class="2xx"}') == 1
    assert delta('ldawt_host_throttled_responses_total{host="other"}') == 0
