"""The daemon's metrics endpoint, scraped over real HTTP on 127.0.0.1."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from metrics_support import LOOPBACK, scrape
from prometheus_client import CollectorRegistry, Counter

from ldawt.daemon import metrics


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


def test_serves_registry_with_process_metrics(daemon_server: None) -> None:
    port = metrics.start_metrics_server(LOOPBACK, 0, 1)
    metrics.IMAGES.labels("ok").inc(3)
    metrics.DOWNLOAD_BYTES.inc(1234)
    metrics.REQUEST_DURATION.observe(0.2)
    samples = scrape(port)
    assert samples['ldawt_images_total{status="ok"}'] >= 3
    assert samples["ldawt_download_bytes_total"] >= 1234
    assert samples['ldawt_request_duration_seconds_bucket{le="0.25"}'] >= 1
    # Every status of the taxonomy is exported (at 0) from the first scrape on.
    assert 'ldawt_images_total{status="dns_error"}' in samples
    assert 'ldawt_shards_finished_total{outcome="failed"}' in samples
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        assert samples[name] > 0


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
    registry = CollectorRegistry()
    Counter("probe_things", "A probe.", registry=registry).inc(7)
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
    labeler = metrics.HostLabeler(max_hosts=1)
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
