"""Many hosts behind a real DNS server (issue 12): 200 names served by Debian's unbound on the
loopback, rows spread over them Zipf-like, ldawt-manager run as users run it (the default local
engine, two worker processes) inside a private mount namespace whose /etc/resolv.conf names
that server."""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dns_server import Unbound, Zone, in_namespace, unbound_missing
from manager_support import manager_command, origin_on, url_table

DOMAIN = "many.test"
HOSTS = 200
ROWS = 400
ADDRESSES = [f"127.61.0.{i}" for i in range(1, 9)]
NXDOMAIN_RANKS = (1, 7, 40, 150)  # rank 1: a heavy dead host, one lookup for all its rows
SLOW_RANKS = (3, 60)
RUN_LIMIT_S = 180
SHARD_ROWS = 40  # ten shards: both worker processes meet most heavy hosts


def _needs() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a private mount namespace and port 53 on the loopback)"
    return unbound_missing()


@pytest.fixture(autouse=True)
def _real_dns_server() -> None:
    reason = _needs()
    if reason is None:
        return
    if os.environ.get("CI"):  # tests/run.sh installs unbound: CI must not skip this silently
        pytest.fail(f"CI is set but {reason}", pytrace=False)
    pytest.skip(reason)


def zipf_hosts(names: list[str], rows: int, seed: int = 12) -> list[str]:
    """``rows`` host names drawn with weight 1/rank: a few heavy hosts, a long tail."""
    weights = [1 / rank for rank in range(1, len(names) + 1)]
    return random.Random(seed).choices(names, weights=weights, k=rows)


def test_many_hosts_one_lookup_each_through_a_real_dns_server(tmp_path: Path) -> None:
    names = [f"h{rank:03d}.{DOMAIN}" for rank in range(1, HOSTS + 1)]
    nxdomain = {names[r - 1] for r in NXDOMAIN_RANKS}
    slow = {names[r - 1] for r in SLOW_RANKS}
    resolving = [n for n in names if n not in nxdomain]
    zone = Zone(
        DOMAIN,
        {n: ADDRESSES[i % len(ADDRESSES)] for i, n in enumerate(resolving)},
        nxdomain,
        slow,
    )
    hosts = zipf_hosts(names, ROWS)
    assert len(set(hosts)) > 50 and set(hosts) & nxdomain and set(hosts) & slow
    address = f"127.53.{os.getpid() % 250 + 1}.{random.randrange(1, 250)}"
    with Unbound(zone, tmp_path / "dns", address) as dns, origin_on(ADDRESSES) as port:
        urls = [f"http://{host}:{port}/{i}.jpg" for i, host in enumerate(hosts)]
        table = url_table(tmp_path / "urls.parquet", urls)
        out = tmp_path / "out"
        # robots ignored: with robots.txt obeyed, its per-host cache would hide the resolver's
        cmd = manager_command("submit", table, "--out", out, "--allow-private")
        cmd += ["--robots", "ignore", "--engine", "local", "--workers", "2"]
        cmd += ["--shard-size", str(SHARD_ROWS)]
        tmpdir = tmp_path / "tmp"  # where the run's shared DNS cache puts its socket
        tmpdir.mkdir()
        started = time.monotonic()
        run = subprocess.run(
            in_namespace(cmd, dns.resolv_conf),
            capture_output=True,
            text=True,
            timeout=RUN_LIMIT_S,
            check=False,
            env={**os.environ, "TMPDIR": str(tmpdir)},
        )
        elapsed = time.monotonic() - started
        queries = dns.queries()
    assert run.returncode == 0, run.stderr[-2000:]
    assert elapsed < RUN_LIMIT_S
    assert "shared DNS cache" not in run.stderr  # no process fell back on its own lookups
    assert list(tmpdir.iterdir()) == []  # the cache's socket went with the run
    rows = [r for p in sorted(out.glob("*.manifest.parquet")) for r in pq.read_table(p).to_pylist()]
    assert len(rows) == ROWS
    by_host: dict[str, Counter[str]] = {}
    for row in rows:
        host = row["url"].split("/")[2].split(":")[0]
        by_host.setdefault(host, Counter())[row["status"]] += 1
    for host, statuses in by_host.items():
        want = "dns_error" if host in nxdomain else "ok"
        assert statuses == Counter({want: sum(statuses.values())}), (host, statuses)
    # every distinct host was asked of this server, and at most twice (A + AAAA) over the run:
    # the two processes share one cache
    assert set(queries) == set(by_host), set(queries) ^ set(by_host)
    too_many = {host: n for host, n in queries.items() if n > 2}
    assert not too_many, too_many
