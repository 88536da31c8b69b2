"""The keep-alive pool stays within --concurrency plus a quarter (in use + idle) over hundreds of
hosts, and still reuses the connections of a host with many rows (issue 12: idle connections to
hosts already done held 1.35 GB in one process, bench/RESULTS.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
from manager_support import WAIT_LIMIT_S, origin_on, start_manager, url_table

from ldawt.daemon.fetcher.session import IDLE_HEADROOM_DIVISOR

CONCURRENCY = 32
CAP = CONCURRENCY + CONCURRENCY // IDLE_HEADROOM_DIVISOR
# An idle connection the pool closes keeps its socket until the event loop's next turn, while
# the connection replacing it may already be connecting: the OS can show a few more than the
# pool holds for a moment (41 against 40 seen once in CI; 311 without the cap).
CLOSING_SLACK = 4
LIGHT_HOSTS = 300
HEAVY_ROWS = LIGHT_HOSTS // 2
SAMPLE_S = 0.01
DELAY_S = 0.05  # a run of a few seconds: enough samples on a busy machine


def open_connections(root: psutil.Process, port: int) -> int:
    """TCP connections to the origin's port held by ``root`` and its descendants now."""
    count = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            connections = process.net_connections("tcp")
        except psutil.NoSuchProcess:
            continue
        count += sum(1 for c in connections if c.raddr and c.raddr.port == port)
    return count


def test_open_connections_stay_within_the_cap_over_hundreds_of_hosts(tmp_path: Path) -> None:
    light = [f"127.62.{i // 200}.{i % 200 + 1}" for i in range(LIGHT_HOSTS)]
    heavy = "127.62.9.1"
    with origin_on([heavy, *light], DELAY_S) as port:
        urls = []
        for i, host in enumerate(light):  # one row per light host, a heavy row every second
            urls.append(f"http://{host}:{port}/light/{i}.jpg")
            if i % 2 == 0:
                urls.append(f"http://{heavy}:{port}/heavy/{i}.jpg")
        table = url_table(tmp_path / "urls.parquet", urls)
        out = tmp_path / "out"
        manager = start_manager(
            "submit", table, "--out", out, "--allow-private", "--engine", "local",
            "--workers", "1", "--concurrency", str(CONCURRENCY), "--robots", "ignore",
            log=tmp_path / "manager.log",
        )  # fmt: skip
        root = psutil.Process(manager.pid)
        samples: list[int] = []
        deadline = time.monotonic() + WAIT_LIMIT_S
        while manager.poll() is None and time.monotonic() < deadline:
            samples.append(open_connections(root, port))
            time.sleep(SAMPLE_S)
        manager.kill()
        returncode = manager.wait(timeout=30)
    assert returncode == 0, (tmp_path / "manager.log").read_text()[-2000:]
    busy = [n for n in samples if n]
    assert len(busy) >= 5, f"too few samples while downloading: {samples}"
    assert max(busy) <= CAP + CLOSING_SLACK, f"peak {max(busy)} open connections: {busy}"
    stats = [json.loads(p.read_text()) for p in out.glob("*_stats.json")]
    assert sum(s["counts"].get("ok", 0) for s in stats) == len(urls)
    # each light row needs a connection of its own; the heavy host's rows, under way all the
    # time, reuse theirs: at most one new per slot (closing by release time alone: 37 of 150)
    heavy_new = sum(s["connections_new"] for s in stats) - LIGHT_HOSTS
    assert 0 < heavy_new <= CONCURRENCY, heavy_new
