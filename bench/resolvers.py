"""Which resolver and which DNS cache for ldawt (issue 12), measured against the many-host
profile's real DNS server (bench/many_hosts.py: unbound, 2,000 names, NXDOMAIN and slow names).

The Zipf host sequence of ``--rows`` rows is looked up by ``--concurrency`` tasks, each row then
holding its task ``--row-s`` seconds (a download's time, so that a run lasts as long as a real
one and cache lifetimes matter). Candidates, each in a fresh process in a private mount
namespace whose resolv.conf names that unbound, freshly started for each:

* ``threaded, no cache``: getaddrinfo in threads for every row (what img2dataset does);
* ``aiohttp cache, threaded`` / ``aiohttp cache, c-ares``: aiohttp's own connector cache (its
  ``_resolve_host``: ``ttl_dns_cache`` 10 s by default, concurrent lookups coalesced, failures
  not kept) over getaddrinfo in threads or over aiodns (c-ares);
* ``ldawt cache, threaded`` / ``ldawt cache, c-ares``: ldawt's ``CachingResolver``
  (daemon/fetcher/dns.py, loaded from this tree) over each.

Prints the DNS queries unbound answered (per distinct host), lookup latency and CPU, and the
failed lookups of names that do resolve.

    python3 bench/resolvers.py [--rows 20000] [--row-s 0.5] [--ttl 10]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import many_hosts  # noqa: E402
from benchenv import reexec_in_venv  # noqa: E402

WORK = BENCH / ".work"
VENV_REQUIREMENTS = "aiohttp\naiodns\n"
CANDIDATES = (
    "threaded, no cache",
    "aiohttp cache, threaded",
    "aiohttp cache, c-ares",
    "ldawt cache, threaded",
    "ldawt cache, c-ares",
)


def log(message: str) -> None:
    print(f"[resolvers {time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--row-s", type=float, default=0.5, help="seconds each row holds its task")
    ap.add_argument("--ttl", type=int, default=10, help="aiohttp's ttl_dns_cache (default 10)")
    ap.add_argument("--inner", choices=CANDIDATES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rows < 1 or args.concurrency < 1 or args.row_s < 0:
        ap.error("--rows and --concurrency must be >= 1, --row-s >= 0")
    return args


def _ldawt_dns():
    """ldawt's daemon/fetcher/dns.py from this tree (it needs only aiohttp)."""
    spec = importlib.util.spec_from_file_location(
        "ldawt_dns", BENCH.parent / "daemon/fetcher/dns.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def measure(args: argparse.Namespace) -> dict:
    """One candidate over the host sequence, inside the namespace."""
    import aiohttp
    from aiohttp.resolver import AsyncResolver, ThreadedResolver

    inner = AsyncResolver() if args.inner.endswith("c-ares") else ThreadedResolver()
    if args.inner.startswith("ldawt"):
        resolve = _ldawt_dns().CachingResolver(inner).resolve
    elif args.inner.startswith("aiohttp"):
        connector = aiohttp.TCPConnector(resolver=inner, ttl_dns_cache=args.ttl)
        resolve = lambda host, port, family: connector._resolve_host(host, port)  # noqa: E731
    else:
        resolve = inner.resolve
    hosts = many_hosts.zipf_hosts(args.rows)
    dead = many_hosts.zone().nxdomain
    latencies: list[float] = []
    failed = {"nxdomain": 0, "resolving": 0}
    queue: asyncio.Queue[str] = asyncio.Queue()
    for host in hosts:
        queue.put_nowait(host)

    async def worker() -> None:
        while not queue.empty():
            host = queue.get_nowait()
            t0 = time.perf_counter()
            try:
                await resolve(host, 443, socket.AF_UNSPEC)
            except OSError:
                failed["nxdomain" if host in dead else "resolving"] += 1
            latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(args.row_s)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    latencies.sort()
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
        "max_ms": latencies[-1] * 1e3,
        "failed": failed,
    }


def main() -> int:
    args = parse_args()
    reexec_in_venv(Path(__file__), WORK / "venv-resolvers", VENV_REQUIREMENTS)
    if args.inner:
        print(json.dumps(asyncio.run(measure(args))))
        return 0
    hosts = set(many_hosts.zipf_hosts(args.rows))
    rows = []
    dns = many_hosts.server(WORK)
    for name in CANDIDATES:
        with dns:  # a fresh unbound each: the slow names are slow for every candidate
            cmd = [sys.executable, __file__, "--inner", name, *sys.argv[1:]]
            run = subprocess.run(
                many_hosts.in_namespace(cmd, dns.resolv_conf),
                capture_output=True,
                text=True,
                timeout=1800,
                check=False,
            )
            if run.returncode != 0:
                log(f"{name}: exit {run.returncode}: {run.stderr.strip()[-500:]}")
                continue
            res = json.loads(run.stdout.strip().splitlines()[-1])
            res["dns"] = many_hosts.dns_summary(dns.queries(), hosts)
            log(f"{name}: {res}")
            rows.append((name, res))
    header = (
        "| resolver | wall s | CPU s | lookup p50 / p99 / max ms | DNS queries | queries/host "
        "| max/host | failed: NXDOMAIN rows / resolving rows |"
    )
    print(f"\n{args.rows:,} rows over {len(hosts):,} distinct hosts, {args.concurrency} tasks, "
          f"{args.row_s} s per row, aiohttp ttl_dns_cache {args.ttl} s\n")  # fmt: skip
    print(header + "\n|---|" + "---:|" * 7)
    for name, r in rows:
        d, f = r["dns"], r["failed"]
        print(
            f"| {name} | {r['wall_s']:.1f} | {r['cpu_s']:.2f} | {r['p50_ms']:.2f} / "
            f"{r['p99_ms']:.1f} / {r['max_ms']:.0f} | {d['queries']:,} | {d['per_host']:.2f} | "
            f"{d['max_per_host']} | {f['nxdomain']:,} / {f['resolving']:,} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
