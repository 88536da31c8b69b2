"""The `ldawt-manager` command line."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from ldawt.daemon.fetcher.options import FetchOptions

from . import demo, metrics, report
from .argtypes import at_least
from .config import apply_config
from .engines import add_engine_options, make_engine
from .inputs import InputError
from .job import JOB_SUBDIR
from .ledger import LedgerFull
from .plan import STRATEGIES, PlanOptions
from .retry import TRANSIENT, open_job, parse_statuses, retry_failed
from .submit import JobRequest, run_job

DEFAULTS = FetchOptions()
PLAN_DEFAULTS = PlanOptions()


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _add_job_options(parser: argparse.ArgumentParser) -> None:
    cols = parser.add_argument_group("columns")
    cols.add_argument("--url-col", help="URL column (default: photo_url)")
    cols.add_argument(
        "--class-col",
        help="class column (default: the first of taxon_name, species_name, class, label, name "
        "that exists; none -> every image in class 'unknown')",
    )
    cols.add_argument(
        "--key-col",
        help="key column naming each image (default: photo_id, key or id if present, else a key "
        "derived from the URL path)",
    )
    cols.add_argument(
        "--passthrough",
        type=_csv,
        default=(),
        help="comma-separated input columns copied into the manifests (default: none)",
    )

    out = parser.add_argument_group("output")
    out.add_argument(
        "--shard-size",
        type=at_least(1),
        default=PLAN_DEFAULTS.shard_size,
        help="rows per shard (default: %(default)s)",
    )
    out.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=PLAN_DEFAULTS.strategy,
        help="fixed = runs of --shard-size consecutive rows; class = whole classes spread "
        "greedily over --groups shards of near-equal size (default: %(default)s)",
    )
    out.add_argument(
        "--groups",
        type=at_least(1),
        default=None,
        help="strategy class: number of shards (default: rows / --shard-size)",
    )
    out.add_argument(
        "--layout",
        choices=("class", "webdataset"),
        default=PLAN_DEFAULTS.layout,
        help="tar layout: class = <class>/<key>.<ext> (ImageFolder); "
        "webdataset = <key>.<ext> + <key>.json + <key>.cls (default: %(default)s)",
    )
    out.add_argument(
        "--compress", action="store_true", help="write .tar.gz instead of .tar (default: off)"
    )
    out.add_argument(
        "--deadline",
        type=float,
        default=PLAN_DEFAULTS.deadline_s,
        help="seconds a shard may run before its unfinished rows are cancelled "
        "(default: %(default)s)",
    )

    fetch = parser.add_argument_group("downloading")
    fetch.add_argument(
        "--concurrency",
        type=at_least(1),
        default=DEFAULTS.concurrency,
        help="requests in flight per worker process (default: %(default)s)",
    )
    fetch.add_argument(
        "--per-host",
        type=at_least(1),
        default=DEFAULTS.per_host,
        help="requests in flight per host (default: %(default)s)",
    )
    fetch.add_argument(
        "--host-rps",
        type=float,
        default=None,
        help="requests per second per host (default: unlimited)",
    )
    fetch.add_argument(
        "--timeout",
        type=float,
        default=DEFAULTS.total_timeout,
        help="seconds one attempt may take, redirects included (default: %(default)s)",
    )
    fetch.add_argument(
        "--read-timeout",
        type=float,
        default=DEFAULTS.read_timeout,
        help="seconds a response may stall between reads (default: %(default)s)",
    )
    fetch.add_argument(
        "--retries",
        type=int,
        default=DEFAULTS.retries,
        help="retries for 429, 5xx, 408, resets, timeouts and truncation (default: %(default)s)",
    )
    fetch.add_argument(
        "--max-bytes",
        type=at_least(1),
        default=DEFAULTS.max_bytes,
        help="largest image accepted, in bytes (default: %(default)s)",
    )
    fetch.add_argument(
        "--allow-private",
        action="store_true",
        help="allow loopback and private addresses (link-local is always refused; default: off)",
    )
    fetch.add_argument(
        "--insecure", action="store_true", help="do not verify TLS certificates (default: off)"
    )
    fetch.add_argument(
        "--ca-file",
        help="trust the certificates in this PEM file instead of the system's (default: none)",
    )

    job = parser.add_argument_group("job")
    job.add_argument(
        "--force-new",
        action="store_true",
        help="when OUT holds a job with other inputs or options, discard it and its shard files "
        "and start over (default: off, such a job is refused)",
    )
    _add_run_options(parser)


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shard-retries",
        type=int,
        default=2,
        help="times a failed shard runs again within one run; a rerun of the command retries "
        "it further (default: %(default)s)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="a TOML or JSON file of option defaults: keys are option names (shard_size or "
        "shard-size), or the seed's keys parquets_directory, url_col, class_col, "
        "timeout_minutes, max_retries, port_number; flags override them (default: none)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve the manager's Prometheus metrics (job progress and fleet totals relayed "
        "from every shard result) on this port (default: none)",
    )
    parser.add_argument(
        "--metrics-address",
        default="0.0.0.0",
        help="address for --metrics-port (default: %(default)s)",
    )
    add_engine_options(parser)


def _request(args: argparse.Namespace, input_path: Path, out: Path) -> JobRequest:
    fetch = FetchOptions(
        concurrency=args.concurrency,
        per_host=args.per_host,
        host_rps=args.host_rps,
        total_timeout=args.timeout,
        read_timeout=args.read_timeout,
        retries=args.retries,
        max_bytes=args.max_bytes,
        allow_private=args.allow_private,
        tls_verify=not args.insecure,
        ca_file=args.ca_file,
    )
    plan = PlanOptions(
        shard_size=args.shard_size,
        strategy=args.strategy,
        groups=args.groups,
        layout=args.layout,
        compress=args.compress,
        deadline_s=args.deadline,
        fetch=fetch,
    )
    return JobRequest(
        input_path,
        out,
        args.url_col,
        args.class_col,
        args.key_col,
        args.passthrough,
        plan,
        args.force_new,
        args.shard_retries,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ldawt-manager",
        description="Download image URL tables into tar shards, with one manifest row per "
        "input row.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser(
        "submit",
        help="plan a job and run it (rerun the same command to resume)",
        description="Plan INPUT into shards and download them into OUT: per shard a tar of images, "
        "a manifest (.manifest.parquet, one row per input row) and a stats file.",
    )
    submit.add_argument(
        "input",
        type=Path,
        nargs="?",
        help="a parquet or CSV file, or a folder of them (config key: parquets_directory)",
    )
    submit.add_argument(
        "--out", type=Path, help="output folder (no default: required here or in --config)"
    )
    _add_job_options(submit)

    demo_cmd = commands.add_parser(
        "demo",
        help="run a whole job offline against a built-in loopback origin",
        description="Start a loopback origin serving generated JPEGs (about 3%% answer 404 and 1%% "
        "HTML), point a URL list at it and run a real job.",
    )
    demo_cmd.add_argument(
        "--input", type=Path, help="a real URL list to rewrite (default: a synthetic list)"
    )
    demo_cmd.add_argument(
        "--rows", type=at_least(1), default=2000, help="rows to take (default: %(default)s)"
    )
    demo_cmd.add_argument(
        "--out", type=Path, help="output folder (default: a new temporary folder)"
    )
    _add_job_options(demo_cmd)
    demo_cmd.set_defaults(shard_size=500)

    retry = commands.add_parser(
        "retry-failed",
        help="run again the rows whose latest outcome is a transient failure",
        description="Build a new round of shards from the failed rows of DIR's manifests and run "
        "it; reports then count each row once, with its latest outcome. Uses the fetch options "
        "of the job's latest run.",
    )
    retry.add_argument("dir", type=Path, help="the job's output folder")
    retry.add_argument(
        "--status",
        help="comma-separated statuses to retry; http_4xx / http_5xx mean the whole class, all "
        f"means every failure (default: {','.join(TRANSIENT)})",
    )
    _add_run_options(retry)

    status_cmd = commands.add_parser(
        "status", help="shards by state, rows done/failed/pending, rate and ETA (instant)"
    )
    status_cmd.add_argument("dir", type=Path, help="the job's output folder")

    report_cmd = commands.add_parser(
        "report",
        help="totals, failures by status and host, classes, throughput, slowest hosts",
        description="Read every committed manifest of DIR and summarise the job.",
    )
    report_cmd.add_argument("dir", type=Path, help="the job's output folder")
    report_cmd.add_argument(
        "--json", action="store_true", help="print JSON instead of text (default: off)"
    )
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with a --config file's values as defaults."""
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("command", nargs="?")
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if known.command in commands.choices:
            apply_config(known.config, commands.choices[known.command])
    args = parser.parse_args(argv)
    if args.command == "submit" and (args.input is None or args.out is None):
        parser.error("submit needs INPUT and --out (on the command line or in --config)")
    return args


def _serve_metrics(address: str, port: int) -> None:
    try:
        chosen = metrics.start_manager_metrics_server(address, port)
    except OSError as exc:
        raise InputError(f"cannot serve metrics on {address}:{port}: {exc}") from exc
    metrics.mark_job_start()
    print(f"ldawt-manager: metrics on http://{address}:{chosen}/metrics", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        if getattr(args, "metrics_port", None) is not None:
            _serve_metrics(args.metrics_address, args.metrics_port)
        if args.command == "submit":
            return run_job(_request(args, args.input, args.out), make_engine(args), sys.stderr)
        if args.command == "retry-failed":
            statuses = parse_statuses(args.status)
            return retry_failed(
                args.dir, statuses, make_engine(args), args.shard_retries, sys.stderr
            )
        if args.command in ("status", "report"):
            return _show(args)
        return _demo(args)
    except InputError as exc:
        print(f"ldawt-manager: error: {exc}", file=sys.stderr)
        return 2
    except LedgerFull as exc:
        print(
            f"ldawt-manager: error: {exc}; the ledger is consistent and nothing committed is "
            "lost: free some space and rerun the same command",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("\nldawt-manager: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _show(args: argparse.Namespace) -> int:
    job = open_job(args.dir)
    with job.open_ledger() as ledger:
        if args.command == "status":
            print(report.format_status(job, report.status(ledger)))
        elif args.json:
            print(json.dumps(report.report(job, ledger), indent=2))
        else:
            print(report.format_report(report.report(job, ledger)))
    return 0


def _demo(args: argparse.Namespace) -> int:
    out = args.out or Path(tempfile.mkdtemp(prefix="ldawt-demo-"))
    args.allow_private = True
    args.force_new = True  # the origin's port, hence every URL, is new each time
    with demo.serve_in_background(demo.demo_app()) as port:
        url_col = args.url_col or "photo_url"
        listing = demo.rewrite_hosts(
            args.input, args.rows, port, url_col, out / JOB_SUBDIR / "demo_input.parquet"
        )
        print(
            f"ldawt demo: origin on 127.0.0.1:{port}, {args.rows:,} rows from "
            f"{args.input or 'a synthetic list'}",
            file=sys.stderr,
        )
        status = run_job(_request(args, listing, out), make_engine(args), sys.stderr)
    print(f"ldawt demo: output in {out}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
