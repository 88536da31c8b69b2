"""Does scraping a daemon's /metrics 10 times a second slow its shard? (issue 5)

One shard of ``--rows`` images of the real URL list runs in a child process (ldawt's
``run_shard``, with the daemon's metrics endpoint started as a library process starts it)
against the benchmark's loopback nginx origin, in rounds that alternate between no scraper and
an external scraper at ``--rate`` scrapes per second. Prints each round's images/s, the
scrapes served and their latency, and the ratio of the medians.

    python3 bench/scrape_load.py [--rows 10000] [--rounds 3] [--rate 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from benchenv import reexec_in_bench_venv  # noqa: E402

WORK = BENCH / ".work"


def log(message: str) -> None:
    print(f"[scrape-load {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Scraper(threading.Thread):
    """GET /metrics every ``1/rate`` seconds until stopped; keeps each scrape's latency."""

    def __init__(self, port: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.period = 1.0 / rate
        self.latencies: list[float] = []
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    response.read()
                self.latencies.append(time.monotonic() - started)
            except OSError:
                self.failures += 1
            self.stop.wait(max(0.0, self.period - (time.monotonic() - started)))


def one_round(python: Path, urls: Path, out: Path, rate: float) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    child = subprocess.Popen(
        [str(python), str(BENCH / "metrics_shard.py"), str(urls), str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdin is not None and child.stdout is not None
        port = json.loads(child.stdout.readline())["port"]
        scraper = Scraper(port, rate) if rate > 0 else None
        if scraper:
            scraper.start()
        child.stdin.write("go\n")
        child.stdin.flush()
        result = json.loads(child.stdout.readline())
        if scraper:
            scraper.stop.set()
            scraper.join(timeout=10)
        child.stdin.close()
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    rows = sum(result["counts"].values())
    row = {"rate": rate, "rows": rows, "ok": result["counts"].get("ok", 0),
           "images_per_s": rows / result["elapsed_s"]}  # fmt: skip
    if scraper:
        row["scrapes"] = len(scraper.latencies)
        row["scrape_failures"] = scraper.failures
        row["scrape_p99_ms"] = (
            1000 * sorted(scraper.latencies)[int(0.99 * (len(scraper.latencies) - 1))]
        )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode (alternated)")
    parser.add_argument("--rate", type=float, default=10.0, help="scrapes per second")
    parser.add_argument(
        "--source", type=Path, default=BENCH.parent.parent / "shared/data/inat_subset_45k.parquet"
    )
    args = parser.parse_args()
    reexec_in_bench_venv(Path(__file__).resolve(), WORK)

    import corpus
    import ldawt_install
    from origin import Origin

    exe, desc = ldawt_install.find(None, "HEAD", WORK, log)
    if exe is None:
        raise SystemExit(f"ldawt not usable: {desc}")
    python = exe.parent / "python"
    info = corpus.build_corpus(WORK / "corpus")
    origin = Origin(WORK / "nginx-scrape", info.root)
    rows: list[dict] = []
    try:
        origin.start()
        urls = corpus.write_url_lists(
            args.source, args.rows, WORK / "lists", {"scrape": origin.http_base}
        )["scrape"]
        for n in range(args.rounds):
            for rate in (0.0, args.rate):
                row = one_round(python, urls, WORK / "out-scrape", rate)
                log(f"round {n + 1}, {rate:g} scrapes/s: {row}")
                rows.append(row)
    finally:
        origin.stop()
        shutil.rmtree(WORK / "out-scrape", ignore_errors=True)

    quiet = [r["images_per_s"] for r in rows if r["rate"] == 0]
    scraped = [r["images_per_s"] for r in rows if r["rate"] > 0]
    served = sum(r["scrapes"] for r in rows if r["rate"] > 0)
    failed = sum(r["scrape_failures"] for r in rows if r["rate"] > 0)
    p99 = max(r["scrape_p99_ms"] for r in rows if r["rate"] > 0)
    quiet_rates = ", ".join(f"{v:,.0f}" for v in quiet)
    scraped_rates = ", ".join(f"{v:,.0f}" for v in scraped)
    print(f"\nldawt {desc}; {args.rows:,} rows per shard, {args.rounds} rounds per mode\n")
    print("| scrapes/s | images/s (each round) | median | scrapes served | p99 scrape ms |")
    print("|---:|---|---:|---:|---:|")
    print(f"| 0 | {quiet_rates} | {statistics.median(quiet):,.0f} | - | - |")
    print(
        f"| {args.rate:g} | {scraped_rates} | {statistics.median(scraped):,.0f} "
        f"| {served} ({failed} failed) | {p99:.1f} |"
    )
    ratio = statistics.median(scraped) / statistics.median(quiet)
    print(f"\nscraped / quiet median: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
