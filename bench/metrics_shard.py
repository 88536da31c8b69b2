"""Child of scrape_load.py, run with the ldawt venv's Python: one shard with the daemon's
metrics endpoint up, as a library process has it.

Protocol: prints ``{"port": N}``, waits for a line on stdin, runs the shard, prints the
result's ``{"elapsed_s", "counts"}`` as one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq

from ldawt.daemon.metrics import start_metrics_server
from ldawt.daemon.shard import run_shard

# The hand-written shard input file shared with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from shard_input import write_shard_input


def main() -> int:
    urls_path, out = Path(sys.argv[1]), Path(sys.argv[2])
    urls = pq.read_table(urls_path, columns=["photo_url"]).column("photo_url").to_pylist()
    n = len(urls)
    shard_input = out / "input.parquet"
    out.mkdir(parents=True, exist_ok=True)
    write_shard_input(shard_input, urls, ["c"] * n, [str(i) for i in range(n)])
    print(json.dumps({"port": start_metrics_server("127.0.0.1", 0, 1)}), flush=True)
    sys.stdin.readline()
    result = run_shard(
        {
            "shard_id": "s",
            "input_path": str(shard_input),
            "output_dir": str(out),
            "fetch": {"allow_private": True},
        }
    )
    print(json.dumps({"elapsed_s": result.get("elapsed_s"), "counts": result.get("counts"),
                      "error": result.get("error")}), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
