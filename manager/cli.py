"""The `ldawt-manager` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import signal
import sqlite3
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa

from ldawt.daemon.contract import LAYOUTS, ROBOTS_MODES, FetchOptions, TransformOptions
from ldawt.daemon.storage import is_url
from ldawt.daemon.transform.options import ENCODE_FORMATS, RESIZE_MODES

from . import estimate, index, metrics, report
from .argtypes import at_least, positive_float
from .config import apply_config
from .console import command_logging, configure_logging
from .engines import add_engine_options, make_engine
from .errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, InputError, LdawtError
from .formats import FORMATS, InputSource
from .job import JOB_SUBDIR, Job, JobRun, JobSettings, ldawt_version
from .plan import STRATEGIES, PlanOptions
from .retry import TRANSIENT, parse_statuses, retry_failed
from .submit import JobRequest, prepare_output, run_job

# Named, not __name__: run as `python -m ldawt.manager.cli`, this module is __main__, whose
# logger -v would not reach.
log = logging.getLogger("ldawt.manager.cli")
EXIT_HELP = (
    "exit status: 0 when every shard is done; 1 when the job ended with failed shards or "
    "stopped (rerun the same command to go on); 2 for a usage, input or engine error (the "
    "message says what to change; nothing the job did is lost); 130 when interrupted."
)
SHOW_EXIT_HELP = (
    "exit status: 0 when the job was read; 2 when DIR holds no job or its files cannot be read."
)
# SQLite's result codes for a file that is not (or no longer) a database.
DAMAGED_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
DEFAULTS = FetchOptions()
TRANSFORM_DEFAULTS = TransformOptions()
# The zlib level for --encode-format png when --encode-quality is not given (img2dataset has
# none: its default quality, 95, is refused for png).
PNG_COMPRESSION = 6
LATEST_RUN_DEFAULT = "default: as in the job's latest run)"
PLAN_DEFAULTS = PlanOptions()


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _add_job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument_group("input").add_argument(
        "--input-format",
        choices=FORMATS,
        help="read every input file as this format, whatever its name; compression (gzip, "
        "bzip2, zstd) is still recognised by the file's first bytes (default: from each file's "
        "name: .parquet/.pq, .csv, .tsv, .txt (one URL per line), .json (array of objects), "
        ".jsonl/.ndjson, each optionally + .gz, .bz2 or .zst)",
    )
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
        "--group-by-host",
        action="store_true",
        help="strategy fixed: order the rows host by host before cutting them into shards, so "
        "that each host's rows land in as few shards as possible (default: off, input order)",
    )
    out.add_argument(
        "--groups",
        type=at_least(1),
        default=None,
        help="strategy class: number of shards (default: rows / --shard-size)",
    )
    out.add_argument(
        "--layout",
        choices=LAYOUTS,
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

    _add_image_options(parser)
    _add_fetch_options(parser)

    job = parser.add_argument_group("job")
    job.add_argument(
        "--force-new",
        action="store_true",
        help="when OUT holds a job with other inputs or options, discard it and its shard files "
        "and start over (default: off, such a job is refused)",
    )
    _add_run_options(parser)


def _add_image_options(parser: argparse.ArgumentParser) -> None:
    """What the stored images are: originals, or resized, re-encoded and filtered (img2dataset's
    option names and meanings)."""
    images = parser.add_argument_group(
        "images (default: the original bytes; checks and filters read the header only)"
    )
    images.add_argument(
        "--resize-mode",
        choices=RESIZE_MODES,
        default=TRANSFORM_DEFAULTS.resize_mode,
        help="no = store originals byte for byte; border = fit the longer side to --image-size "
        "and pad to a white square; keep_ratio = fit the shorter side; keep_ratio_largest = fit "
        "the longer side; center_crop = fit the shorter side and crop the centre square "
        "(default: %(default)s)",
    )
    images.add_argument(
        "--image-size",
        type=at_least(1),
        default=TRANSFORM_DEFAULTS.image_size,
        help="target size in pixels for --resize-mode (default: %(default)s)",
    )
    images.add_argument(
        "--resize-only-if-bigger",
        action="store_true",
        help="leave images not larger than --image-size as they are (default: off)",
    )
    images.add_argument(
        "--encode-format",
        choices=ENCODE_FORMATS,
        default=TRANSFORM_DEFAULTS.encode_format,
        help="format of re-encoded images (default: %(default)s)",
    )
    images.add_argument(
        "--encode-quality",
        type=int,
        default=None,
        help="quality of re-encoded jpg and webp images (0-100), or for png the zlib "
        f"compression level (0-9) (default: {TRANSFORM_DEFAULTS.encode_quality} for jpg and "
        f"webp, {PNG_COMPRESSION} for png)",
    )
    images.add_argument(
        "--skip-reencode",
        action="store_true",
        help="keep the original bytes when nothing is resized and the image already is in "
        "--encode-format (default: off)",
    )
    images.add_argument(
        "--min-image-size",
        type=at_least(0),
        default=TRANSFORM_DEFAULTS.min_image_size,
        help="refuse images whose shorter side is smaller, status too_small (default: %(default)s)",
    )
    images.add_argument(
        "--max-image-area",
        type=at_least(1),
        default=None,
        help="refuse images of more pixels, status image_too_large (default: no limit but the "
        "decompression-bomb guard)",
    )
    images.add_argument(
        "--max-aspect-ratio",
        type=float,
        default=None,
        help="refuse images whose longer side / shorter side is larger, status bad_aspect "
        "(default: no limit)",
    )
    images.add_argument(
        "--verify-hash-col",
        help="input column of the expected SHA-256 or MD5 (hex) of each image's downloaded "
        "bytes; a mismatch is status hash_mismatch (default: none)",
    )


def transform_options(args: argparse.Namespace) -> TransformOptions:
    quality = args.encode_quality
    if quality is None:
        quality = (
            PNG_COMPRESSION if args.encode_format == "png" else TRANSFORM_DEFAULTS.encode_quality
        )
    try:
        return TransformOptions(
            resize_mode=args.resize_mode,
            image_size=args.image_size,
            resize_only_if_bigger=args.resize_only_if_bigger,
            encode_format=args.encode_format,
            encode_quality=quality,
            skip_reencode=args.skip_reencode,
            min_image_size=args.min_image_size,
            max_image_area=args.max_image_area,
            max_aspect_ratio=args.max_aspect_ratio,
        )
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def _add_fetch_options(parser: argparse.ArgumentParser, of_latest_run: bool = False) -> None:
    """The downloading options. ``of_latest_run``: options not given keep the values of the
    job's latest run (retry-failed) instead of the defaults."""
    fetch = parser.add_argument_group(
        "downloading (each as in the job's latest run unless given)"
        if of_latest_run
        else "downloading"
    )
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
        help="requests in flight per host, for the whole job: all workers of every engine "
        "together; a host answering 429/503 without Retry-After or timing out repeatedly gets "
        "half of what it had in flight in that worker process, a Retry-After pauses the host "
        "there; both recover as it answers (default: %(default)s)",
    )
    fetch.add_argument(
        "--host-rps",
        type=positive_float,
        default=None,
        help="requests per second per host, for the whole job: all workers of every engine "
        "together (default: unlimited)",
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
    fetch.add_argument(
        "--robots",
        choices=ROBOTS_MODES,
        default=DEFAULTS.robots,
        help="obey: fetch each host's robots.txt once and skip the URLs it disallows for ldawt "
        "(robots_disallowed; a robots.txt answering 5xx or unreachable disallows the host for "
        "the run, 4xx allows all); ignore: do not fetch it (default: %(default)s)",
    )
    fetch.add_argument(
        "--disallowed-header-directives",
        type=_directive_list,
        default=DEFAULTS.disallowed_header_directives,
        metavar="LIST",
        help="comma list of X-Robots-Tag directives that opt an image out (opted_out, body not "
        "read); directives addressed to other user agents do not apply; an empty list disables "
        f"the check (default: {','.join(DEFAULTS.disallowed_header_directives)})",
    )
    fetch.add_argument(
        "--user-agent-token",
        metavar="TOKEN",
        default=None,
        help="a contact (URL or e-mail address) appended to the User-Agent header as "
        f"'{DEFAULTS.user_agent} (compatible; TOKEN)' (default: none)",
    )
    if of_latest_run:
        for action in fetch._group_actions:
            action.default = argparse.SUPPRESS  # absent from args: fetch_options keeps the run's
            action.help = re.sub(r"default: .*\)$", LATEST_RUN_DEFAULT, action.help or "")


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    """What every command takes: how much it says."""
    shown = parser.add_argument_group("messages")
    shown.add_argument(
        "-q",
        "--quiet",
        action="count",
        default=0,
        help="only warnings and errors, no progress display (default: off)",
    )
    shown.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="also debugging messages (default: off)",
    )


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


# Downloading option -> FetchOptions field (``--insecure`` is ``tls_verify`` negated).
FETCH_FIELDS = {
    "concurrency": "concurrency",
    "per_host": "per_host",
    "host_rps": "host_rps",
    "timeout": "total_timeout",
    "read_timeout": "read_timeout",
    "retries": "retries",
    "max_bytes": "max_bytes",
    "allow_private": "allow_private",
    "ca_file": "ca_file",
    "robots": "robots",
    "disallowed_header_directives": "disallowed_header_directives",
    "user_agent_token": "user_agent_token",
}


def _directive_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip().lower() for part in text.split(",") if part.strip())


def fetch_options(args: argparse.Namespace, base: FetchOptions = DEFAULTS) -> FetchOptions:
    """``base`` with the downloading options present in ``args``."""
    given: dict[str, Any] = {
        field: getattr(args, dest) for dest, field in FETCH_FIELDS.items() if hasattr(args, dest)
    }
    if hasattr(args, "insecure"):
        given["tls_verify"] = not args.insecure
    return dataclasses.replace(base, **given)


def _request(args: argparse.Namespace, input_path: InputSource | Path, out: Path) -> JobRequest:
    if args.group_by_host and args.strategy != "fixed":
        raise InputError(
            "--group-by-host orders rows by host for --strategy fixed; --strategy class keeps "
            "whole classes together instead"
        )
    plan = PlanOptions(
        shard_size=args.shard_size,
        strategy=args.strategy,
        group_by_host=args.group_by_host,
        groups=args.groups,
        layout=args.layout,
        compress=args.compress,
        deadline_s=args.deadline,
        fetch=fetch_options(args),
        transform=transform_options(args),
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
        args.verify_hash_col,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ldawt-manager",
        description="Download image URL tables into tar shards, with one manifest row per "
        "input row.",
        epilog=EXIT_HELP,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser(
        "submit",
        help="plan a job and run it (rerun the same command to resume)",
        description="Plan INPUT into shards and download them into OUT: per shard a tar of images, "
        "a manifest (.manifest.parquet, one row per input row) and a stats file.",
        epilog=EXIT_HELP,
    )
    submit.add_argument(
        "input",
        nargs="?",
        help="a table file (parquet, CSV, TSV, text, JSON, JSON Lines; plain or .gz/.bz2/.zst) "
        "or a folder of them, local or at an fsspec URL (s3://, gs://, https://, file://) "
        "(config key: parquets_directory)",
    )
    submit.add_argument(
        "--out",
        help="output folder, or an fsspec URL where workers upload the shard files "
        "(s3://bucket/prefix, with pip install 'ldawt[s3]'; then --job-dir is needed) "
        "(no default: required here or in --config)",
    )
    submit.add_argument(
        "--job-dir",
        type=Path,
        help="with a URL --out: the local folder for the job (ledger, shard inputs, index); "
        "status, report, retry-failed and index take this folder (no default: required with "
        "a URL --out)",
    )
    submit.add_argument(
        "--storage-options",
        help="with a URL --out: fsspec options as JSON, e.g. "
        '\'{"endpoint_url": "http://127.0.0.1:9000", "key": "...", "secret": "..."}\' '
        "(default: the client's standard places: AWS_* variables, AWS_ENDPOINT_URL, profiles)",
    )
    _add_job_options(submit)

    demo_cmd = commands.add_parser(
        "demo",
        help="run a whole job offline against a built-in loopback origin",
        description="Start a loopback origin serving generated JPEGs (about 3% answer 404 and 1% "
        "HTML), point a URL list at it and run a real job. The demo starts its job afresh each "
        "time, so it refuses a folder holding a job it did not make (unless --force-new).",
        epilog=EXIT_HELP,
    )
    demo_cmd.add_argument(
        "--input",
        help="a real URL list (a table file or a folder of them, local or at a URL, as for "
        "submit) whose first --rows "
        "rows are pointed at the origin (default: a synthetic list)",
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
        "of the job's latest run unless given here (e.g. --allow-private, --timeout).",
        epilog=EXIT_HELP,
    )
    retry.add_argument("dir", type=Path, help="the job's output folder")
    retry.add_argument(
        "--status",
        help="comma-separated statuses to retry; http_4xx / http_5xx mean the whole class, all "
        f"means every failure (default: {','.join(TRANSIENT)})",
    )
    _add_fetch_options(retry, of_latest_run=True)
    _add_run_options(retry)

    status_cmd = commands.add_parser(
        "status",
        help="shards by state, rows done/failed/pending, rate and ETA (instant)",
        description="Say where the job in DIR stands, from its ledger and lock alone (instant, "
        "safe while the job runs): whether a manager is running it, shards by state, rows ok, "
        "failed and pending, the rate while running and the time left.",
        epilog=SHOW_EXIT_HELP,
    )
    status_cmd.add_argument("dir", type=Path, help="the job's output folder")

    report_cmd = commands.add_parser(
        "report",
        help="totals, failures by status and host, hosts that throttled the job, refused "
        "images, stored sizes, classes, throughput, slowest hosts",
        description="Read every committed manifest (and stats file) of DIR and summarise the job.",
        epilog=SHOW_EXIT_HELP,
    )
    report_cmd.add_argument("dir", type=Path, help="the job's output folder")
    report_cmd.add_argument(
        "--json", action="store_true", help="print JSON instead of text (default: off)"
    )

    index_cmd = commands.add_parser(
        "index",
        help="rebuild DIR/index.parquet: every input row once, with its latest outcome",
        description="Rebuild DIR/index.parquet from the job's manifests: one row per input row "
        "with its latest outcome (retries replace earlier failures; rows of shards not done yet "
        "say pending). submit and retry-failed bring it up to date at their end; this rebuilds "
        "it after a crash, or for jobs made before it existed. Checks the shard files against "
        "the ledger first, as submit does.",
        epilog="exit status: 0 when the index was written; 2 when DIR holds no job, its files "
        "cannot be read or another ldawt-manager is running it.",
    )
    index_cmd.add_argument("dir", type=Path, help="the job's output folder")

    estimate_cmd = commands.add_parser(
        "estimate",
        help="estimate a job's bytes, failures and time from the headers of a sample of INPUT",
        description=estimate.DESCRIPTION,
        epilog=estimate.EXIT_HELP,
    )
    estimate_cmd.add_argument(
        "input", help="a table file or a folder of them, local or at an fsspec URL, as for submit"
    )
    estimate_cmd.add_argument(
        "--input-format",
        choices=FORMATS,
        help="read every input file as this format, as submit does (default: from each file's "
        "name)",
    )
    estimate_cmd.add_argument("--url-col", help="URL column (default: photo_url)")
    estimate.add_arguments(estimate_cmd)
    _add_fetch_options(estimate_cmd)
    for command in commands.choices.values():
        _add_output_options(command)
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
    log.info(f"metrics on http://{address}:{chosen}/metrics")


def main(argv: list[str] | None = None) -> int:
    """Run one command; every error it reports is a message and an exit status, no traceback
    (``-v`` adds the traceback, for a bug report)."""
    with command_logging():
        args: argparse.Namespace | None = None
        try:
            args = parse_args(argv)
            configure_logging(args.verbose - args.quiet)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("ldawt %s: %s", ldawt_version(), vars(args))
            if getattr(args, "metrics_port", None) is not None:
                _serve_metrics(args.metrics_address, args.metrics_port)
            return COMMANDS[args.command](args)
        except LdawtError as exc:
            return _fail(str(exc), exc.exit_status)
        except sqlite3.DatabaseError as exc:
            return _fail(_ledger_problem(exc, args), EXIT_USAGE)
        except KeyboardInterrupt:
            log.warning("interrupted; rerun the same command to resume")
            return EXIT_INTERRUPTED


def _fail(message: str, status: int) -> int:
    log.error(message)
    log.debug("where it happened:", exc_info=True)
    return status


def _ledger_problem(exc: sqlite3.DatabaseError, args: argparse.Namespace | None) -> str:
    """The message for an SQLite error, which only the job's ledger can raise: damaged (garbage
    bytes, truncated) or unusable (locked, unreadable folder). Other SQLite errors are bugs."""
    out = None
    if args is not None:
        out = (
            getattr(args, "job_dir", None)
            or getattr(args, "dir", None)
            or getattr(args, "out", None)
        )
    job = None if out is None or is_url(out) else Job(Path(out))
    ledger = "the job's ledger" if job is None else f"the job's ledger {job.ledger_path}"
    if getattr(exc, "sqlite_errorcode", None) in DAMAGED_CODES:
        return (
            f"{ledger} is damaged ({exc}). It is the record of which shards are done: restore it "
            f"from a backup, or move {'the job folder' if job is None else job.folder} away and "
            "rerun the job's submit command to start the job over"
        )
    if isinstance(exc, sqlite3.OperationalError):
        return f"cannot use {ledger}: {exc}"
    raise exc


def _submit(args: argparse.Namespace) -> int:
    source = InputSource(args.input, args.input_format, args.url_col)
    folder, output, storage_options = _output_location(args)
    request = dataclasses.replace(
        _request(args, source, folder), output=output, storage_options=storage_options
    )
    return run_job(request, make_engine(args))


def _output_location(args: argparse.Namespace) -> tuple[Path, str | None, dict[str, Any] | None]:
    """submit's local job folder, shard output URL (or None) and storage options."""
    options = None
    if args.storage_options is not None:
        try:
            options = json.loads(args.storage_options)
        except ValueError as exc:
            raise InputError(f"--storage-options is not JSON: {exc}") from exc
        if not isinstance(options, dict):
            raise InputError("--storage-options must be a JSON object")
    if not is_url(args.out):
        if args.job_dir is not None or options is not None:
            raise InputError(
                "--job-dir and --storage-options are for an --out URL (s3://bucket/prefix); "
                f"{args.out} is a local folder, which holds the job itself"
            )
        return Path(args.out), None, None
    if args.job_dir is None:
        raise InputError(
            f"--out {args.out} is a URL: give --job-dir DIR, a local folder for the job's "
            "ledger and shard inputs"
        )
    return args.job_dir, str(args.out), options


def _retry_failed(args: argparse.Namespace) -> int:
    statuses = parse_statuses(args.status)
    return retry_failed(
        args.dir, statuses, make_engine(args), args.shard_retries, lambda f: fetch_options(args, f)
    )


def _show(args: argparse.Namespace) -> int:
    job = Job.existing(args.dir)
    with job.open_ledger() as ledger:
        if args.command == "status":
            text = report.format_status(job, report.status(ledger))
        else:
            try:
                figures = report.report(JobRun(job, ledger, JobSettings.load(ledger)))
            except (pa.ArrowException, OSError) as exc:
                missing = isinstance(exc, FileNotFoundError) and exc.filename is None
                raise InputError(
                    f"cannot read the shard files of the job in {job.out}: "
                    f"{f'{exc} is missing' if missing else exc}; rerun its "
                    "submit command, which checks them and fetches again the shards whose files "
                    "are damaged"
                ) from exc
            text = json.dumps(figures, indent=2) if args.json else report.format_report(figures)
    with _default_sigpipe():
        print(text, flush=True)
    return EXIT_OK


@contextmanager
def _default_sigpipe() -> Iterator[None]:
    """While printing what a read-only command found: end quietly when the reader goes away
    (`report DIR | head`), killed by SIGPIPE as other Unix tools are, instead of a
    BrokenPipeError. Python ignores SIGPIPE otherwise; restored after, since ``main`` may run
    inside another program (where a SIGPIPE would kill that program)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        yield
    finally:
        # None: set outside Python, which cannot be restored; Python's own setting then
        signal.signal(signal.SIGPIPE, signal.SIG_IGN if previous is None else previous)


def _demo(args: argparse.Namespace) -> int:
    from . import demo  # here: its web server (aiohttp.web) costs every other command 50 ms

    out = args.out or Path(tempfile.mkdtemp(prefix="ldawt-demo-"))
    listing = out / JOB_SUBDIR / demo.LISTING_NAME
    prepare_output(out)
    if not args.force_new:  # given: the person asked to discard what OUT holds
        demo.check_folder(out, listing)
    args.allow_private = True
    args.force_new = True  # the origin's port, hence every URL, is new each time
    url_col = args.url_col or "photo_url"
    source = None if args.input is None else InputSource(args.input, args.input_format, url_col)
    if source is not None:
        demo.check_input(source, url_col)
    engine = make_engine(args)
    with demo.serve_in_background(demo.demo_app()) as port:
        demo.rewrite_hosts(source, args.rows, port, url_col, listing)
        log.info(
            f"demo: origin on 127.0.0.1:{port}, {args.rows:,} rows from "
            f"{args.input or 'a synthetic list'}"
        )
        status = run_job(_request(args, listing, out), engine)
    log.info(f"demo: output in {out}")
    return status


def _index(args: argparse.Namespace) -> int:
    index.rebuild_index(args.dir)
    return EXIT_OK


def _estimate(args: argparse.Namespace) -> int:
    source = InputSource(args.input, args.input_format, args.url_col)
    request = estimate.EstimateRequest(
        source, args.url_col, args.sample, args.seed, args.rate, args.top, fetch_options(args)
    )
    figures = estimate.estimate(request)
    text = json.dumps(figures, indent=2) if args.json else estimate.format_estimate(figures)
    with _default_sigpipe():
        print(text, flush=True)
    return EXIT_OK


COMMANDS = {
    "submit": _submit,
    "retry-failed": _retry_failed,
    "status": _show,
    "report": _show,
    "demo": _demo,
    "estimate": _estimate,
    "index": _index,
}


if __name__ == "__main__":
    sys.exit(main())
