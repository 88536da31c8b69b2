"""Planning benchmark: 10 million rows synthesised from the real iNaturalist list, planned by the
manager's own planner in a child process; reports the planning time and the child's peak RSS.

    python3 bench/plan_10m.py [--rows 10000000] [--strategy fixed|class] [--keep DIR]

The list is repeated with new photo ids (and so new, unique URLs) until it has ``--rows`` rows.
Synthesis is not timed. Targets (issue 3): under 60 s and under 1 GB RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCE = Path("/work/shared/data/inat_subset_45k.parquet")
ID_STRIDE = 10**10  # new ids: repeat k of photo p gets id p + k * ID_STRIDE


def synthesise(rows: int, destination: Path) -> None:
    # Imported here: the planning child must load pyarrow through ldawt, which picks Arrow's
    # allocator first, as in ldawt-manager.
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    base = pq.read_table(SOURCE)
    ids = base.column("photo_id")
    schema = base.schema
    with pq.ParquetWriter(destination, schema) as writer:
        written, repeat = 0, 0
        while written < rows:
            table = base.slice(0, min(base.num_rows, rows - written))
            new_ids = pc.add(ids.slice(0, table.num_rows), repeat * ID_STRIDE)
            urls = pc.binary_join_element_wise(
                "http://inaturalist-open-data.s3.amazonaws.com/photos/",
                pc.cast(new_ids, pa.string()),
                "/medium.jpg",
                "",
            )
            table = table.set_column(schema.get_field_index("photo_id"), "photo_id", new_ids)
            table = table.set_column(schema.get_field_index("photo_url"), "photo_url", urls)
            writer.write_table(table.cast(schema))
            written += table.num_rows
            repeat += 1


def plan_in_this_process(source: Path, out: Path, strategy: str) -> None:
    from ldawt.manager.console import configure_logging
    from ldawt.manager.inputs import check_files, list_input_files, read_schema, resolve_columns
    from ldawt.manager.job import Job, JobIdentity, JobRun, JobSettings
    from ldawt.manager.plan import PlanOptions
    from ldawt.manager.submit import plan

    files = list_input_files(source)
    columns = resolve_columns(read_schema(files[0]), None, None, None)
    check_files(files, columns)
    options = PlanOptions(strategy=strategy)
    job = Job(out)
    configure_logging()
    with job.open_ledger() as ledger:
        run = JobRun(job, ledger, JobSettings(options))
        plan(run, files, columns, JobIdentity.of(files, columns, options))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--strategy", choices=("fixed", "class"), default="fixed")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    parser.add_argument("--child", nargs=2, metavar=("SOURCE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        plan_in_this_process(Path(args.child[0]), Path(args.child[1]), args.strategy)
        return 0

    work = args.keep or Path(tempfile.mkdtemp(prefix="ldawt-plan-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        source = work / f"inat_{args.rows}.parquet"
        if not source.exists():
            print(f"synthesising {args.rows:,} rows into {source} ...", file=sys.stderr)
            synthesise(args.rows, source)
        out = work / f"out-{args.strategy}"
        shutil.rmtree(out, ignore_errors=True)
        started = time.monotonic()
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--strategy",
                args.strategy,
                "--child",
                str(source),
                str(out),
            ],
            check=True,
        )
        elapsed = time.monotonic() - started
        peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        described = json.loads((out / "job" / "job.json").read_text())
        figures = {
            "rows": described["plan"]["rows"],
            "shards": described["plan"]["shards"],
            "strategy": args.strategy,
            "planning_s": round(elapsed, 1),
            "peak_rss_mb": round(peak_rss_mb),
            "input_mb": round(source.stat().st_size / 1e6),
        }
        print(json.dumps(figures))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
