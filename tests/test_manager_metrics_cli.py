"""`submit --metrics-port`: the manager's endpoint shows the job and the fleet totals."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from manager_support import running_origin, url_table
from metrics_support import free_port, scrape

from ldawt.daemon.contract import ALL_STATUSES
from ldawt.manager import metrics
from ldawt.manager.cli import main


def registry_samples() -> dict[str, float]:
    """The manager registry's samples, keyed as ``scrape`` keys them (no server needed)."""
    samples = {}
    for family in metrics.REGISTRY.collect():
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def test_submit_serves_job_and_fleet_metrics(tmp_path: Path) -> None:
    port = free_port()
    # The registry is per process and other tests add to it: compare with the values before.
    before = registry_samples()
    with running_origin() as origin:
        urls = [origin.url("img", i) for i in range(40)] + [origin.url("gone", i) for i in range(7)]
        table = url_table(tmp_path / "in.parquet", urls)
        started = time.time()
        try:
            status = main(
                [
                    "submit",
                    str(table),
                    "--out",
                    str(tmp_path / "out"),
                    "--allow-private",
                    "--shard-size",
                    "10",
                    "--workers",
                    "1",
                    "--engine",
                    "local",
                    "--metrics-port",
                    str(port),
                    "--metrics-address",
                    "127.0.0.1",
                ]
            )
            assert status == 0
            finished = time.time()
            samples = scrape(port)
        finally:
            metrics.stop_manager_metrics_server()

    def delta(key: str) -> float:
        return samples[key] - before.get(key, 0.0)

    manifests = Counter()
    ok_bytes = 0
    for path in (tmp_path / "out").glob("*.manifest.parquet"):
        rows = pq.read_table(path, columns=["status", "bytes"]).to_pylist()
        manifests.update(row["status"] for row in rows)
        ok_bytes += sum(row["bytes"] for row in rows if row["status"] == "ok")
    assert manifests == {"ok": 40, "http_404": 7}
    # exactly this job's rows, by status, and nothing under any other status
    for status in ALL_STATUSES:
        assert delta(f'ldawt_fleet_images_total{{status="{status}"}}') == manifests[status]
    assert delta("ldawt_fleet_download_bytes_total") == ok_bytes
    assert delta('ldawt_fleet_shards_finished_total{outcome="done"}') == 5
    assert delta('ldawt_fleet_shards_finished_total{outcome="failed"}') == 0
    assert delta('ldawt_manager_rows_total{outcome="ok"}') == 40
    assert delta('ldawt_manager_rows_total{outcome="failed"}') == 7
    assert delta('ldawt_manager_rows_total{outcome="duplicate"}') == 0
    assert samples['ldawt_manager_shards{state="done"}'] == 5
    assert samples['ldawt_manager_shards{state="pending"}'] == 0
    assert samples['ldawt_manager_shards{state="running"}'] == 0
    assert samples['ldawt_manager_shards{state="failed"}'] == 0
    assert started <= samples["ldawt_manager_job_start_time_seconds"] <= finished
