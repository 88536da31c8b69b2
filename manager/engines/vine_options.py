"""The TaskVine engine's settings and their command-line options."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..argtypes import at_least
from .engine import EngineError

DEFAULT_PORT = 9123  # TaskVine's well-known port


@dataclass(frozen=True)
class VineOptions:
    port: int | None = None
    name: str | None = None
    password_file: str | None = None
    ssl_key: str | None = None
    ssl_cert: str | None = None
    local_workers: int = 0
    shared_output: bool = False
    max_in_flight: int | None = None
    shard_attempts: int = 3
    retry_backoff_s: float = 5.0
    max_forsaken: int = 5
    library_cores: int = 1
    library_memory_mb: int | None = None
    library_disk_mb: int | None = None
    library_retries: int = 1
    keepalive_s: int = 30
    stall_timeout_s: int = 60

    def writes_in_place(self) -> bool:
        """Workers write shard files on this machine's file system (shared, or this machine):
        explicitly, or when only local workers can connect (no --port, no --name)."""
        return self.shared_output or (
            self.local_workers > 0 and self.port is None and self.name is None
        )

    def manager_port(self) -> int:
        if self.port is not None:
            return self.port
        # Only local workers: any free port; otherwise the port remote workers expect.
        return 0 if self.local_workers and not self.name else DEFAULT_PORT


def add_taskvine_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "taskvine engine",
        "Workers connect to this manager: start them with 'ldawt-worker --manager HOST:PORT' "
        "(or '--name NAME'), or let the manager start some here with --local-workers.",
    )
    g.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"port the manager listens on for workers; 0 = any free port (default: "
        f"{DEFAULT_PORT}, or any free port when only --local-workers connect)",
    )
    g.add_argument(
        "--name",
        default=None,
        help="project name advertised to the TaskVine catalog, so workers find the manager "
        "with 'ldawt-worker --name NAME' (default: none, not advertised)",
    )
    g.add_argument(
        "--password-file",
        default=None,
        help="workers must prove they know the password in this file (default: none, any "
        "worker that reaches the port is accepted)",
    )
    g.add_argument(
        "--ssl-key",
        default=None,
        help="TLS private key (PEM) for the worker connections; needs --ssl-cert, and workers "
        "then need --ssl. TLS encrypts the traffic but workers do not verify the manager's "
        "certificate, so TLS without --password-file authenticates neither side (default: none)",
    )
    g.add_argument(
        "--ssl-cert", default=None, help="TLS certificate (PEM) for --ssl-key (default: none)"
    )
    g.add_argument(
        "--local-workers",
        type=at_least(0),
        default=None,
        help="start this many vine_worker processes on this machine (sharing its cores, memory "
        "and disk) and stop them at the end. Without --port or --name only they can connect, so "
        "shard files are written in place as with --shared-output; with either, remote workers "
        "may join too (default: 0 with --engine taskvine, 1 with --engine auto)",
    )
    g.add_argument(
        "--shared-output",
        action="store_true",
        help="workers see the output folder at the same path (shared file system): they read "
        "shard inputs and write shard files there instead of sending them to the manager; the "
        "manager moves each accepted shard's files into place (default: off)",
    )
    g.add_argument(
        "--max-in-flight",
        type=at_least(1),
        default=None,
        help="function calls submitted at once (default: twice the connected workers' cores, "
        "at least 16)",
    )
    g.add_argument(
        "--shard-attempts",
        type=at_least(1),
        default=VineOptions.shard_attempts,
        help="attempts per shard within one run, with growing pauses between them, before the "
        "shard is reported failed (default: %(default)s)",
    )
    g.add_argument(
        "--library-cores",
        type=at_least(1),
        default=VineOptions.library_cores,
        help="cores per library process; a worker runs one library process (one event loop "
        "and connection pool) per this many cores (default: %(default)s)",
    )
    g.add_argument(
        "--library-memory-mb",
        type=at_least(1),
        default=None,
        help="memory per library process (default: 512 MB plus the fetcher's image buffer)",
    )
    g.add_argument(
        "--library-disk-mb",
        type=at_least(1),
        default=None,
        help="disk per library process, for one shard's files (default: 0.25 MB per row of "
        "the largest shard, at least 1024)",
    )
    g.add_argument(
        "--library-retries",
        type=at_least(0),
        default=VineOptions.library_retries,
        help="library start-up failures, over all workers, before TaskVine removes the "
        "library (TaskVine 7.14 allows at most 1); the run then stops with the library's error "
        "if no shard has succeeded, else installs it again (default: %(default)s)",
    )


def vine_options(args: argparse.Namespace, embedded: bool) -> VineOptions:
    """``embedded``: chosen by ``--engine auto``, so one local worker unless told otherwise."""
    if bool(args.ssl_key) != bool(args.ssl_cert):
        raise EngineError("--ssl-key and --ssl-cert go together")
    local = args.local_workers if args.local_workers is not None else int(embedded)
    return VineOptions(
        port=args.port,
        name=args.name,
        password_file=args.password_file,
        ssl_key=args.ssl_key,
        ssl_cert=args.ssl_cert,
        local_workers=local,
        shared_output=args.shared_output,
        max_in_flight=args.max_in_flight,
        shard_attempts=args.shard_attempts,
        library_cores=args.library_cores,
        library_memory_mb=args.library_memory_mb,
        library_disk_mb=args.library_disk_mb,
        library_retries=args.library_retries,
    )
