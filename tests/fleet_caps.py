"""The job-wide per-host limits end to end, shared by the local-engine and TaskVine tests: one
host (a loopback origin that records every request) heavy enough to reach ``--per-host 6`` and
``--host-rps 100``, over a job of several shards that lasts a dozen seconds at that rate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fault_origin import FaultOrigin
from manager_support import run_manager, url_table

from ldawt.manager.demo import serve_in_background

PER_HOST = 6
HOST_RPS = 100.0
SLACK = 1.1  # clock effects: the origin's clock is not the workers'
ROWS = 1500
SHARD_SIZE = 250
# Long enough that 6 in flight alone would allow ~200 requests/s: the rate is what binds.
SERVE_S = 0.03


@contextmanager
def recording_origin() -> Iterator[tuple[FaultOrigin, str]]:
    """The origin and its base URL."""
    origin = FaultOrigin()
    with serve_in_background(origin.app) as port:
        yield origin, f"http://127.0.0.1:{port}"


def run_capped_job(tmp_path: Path, base: str, *engine: str) -> dict:
    """Run the job with ``engine``'s options; returns its stats by shard."""
    urls = [f"{base}/img/c{i}.jpg?slow={SERVE_S}" for i in range(ROWS)]
    source = url_table(tmp_path / "urls.parquet", urls)
    out = tmp_path / "out"
    done = run_manager(
        "submit", source, "--out", out, "--shard-size", SHARD_SIZE, "--allow-private",
        "--per-host", PER_HOST, "--host-rps", HOST_RPS, "--retries", "0", "-q", *engine,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return {p.name: json.loads(p.read_text()) for p in out.glob("*_stats.json")}


def check_caps(origin: FaultOrigin, out_stats: dict) -> None:
    """Every row fetched once, and the origin never saw more than the job-wide limits."""
    assert len(out_stats) == ROWS // SHARD_SIZE
    assert sum(s["counts"].get("ok", 0) for s in out_stats.values()) == ROWS
    images = [path for path in origin.hits if path.startswith("/img/")]
    assert len(images) == ROWS and all(origin.hits[p] == 1 for p in images)
    assert origin.max_in_flight <= PER_HOST
    assert origin.max_in_window(1.0) <= HOST_RPS * SLACK
    # the shards ran on several processes at once: the limits were shared, not one process's
    assert len({(s["host"], s["pid"]) for s in out_stats.values()}) > 1
