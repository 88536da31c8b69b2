"""`submit --metrics-port`: the manager's endpoint shows the job and the fleet totals."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from manager_support import running_origin, url_table
from metrics_support import free_port, scrape

from ldawt.manager import metrics
from ldawt.manager.cli import main


def test_submit_serves_job_and_fleet_metrics(tmp_path: Path) -> None:
    port = free_port()
    with running_origin() as origin:
        urls = [origin.url("img", i) for i in range(40)] + [origin.url("gone", i) for i in range(7)]
        table = url_table(tmp_path / "in.parquet", urls)
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
            samples = scrape(port)
        finally:
            metrics.stop_manager_metrics_server()
    manifests = Counter()
    for path in (tmp_path / "out").glob("*.manifest.parquet"):
        manifests.update(pq.read_table(path).column("status").to_pylist())
    assert manifests == {"ok": 40, "http_404": 7}
    for status, n in manifests.items():
        assert samples[f'ldawt_fleet_images_total{{status="{status}"}}'] >= n
    assert samples['ldawt_manager_shards{state="done"}'] == 5
    assert samples['ldawt_manager_shards{state="pending"}'] == 0
    assert samples["ldawt_manager_job_start_time_seconds"] > 0
