"""``ldawt-worker``: run a TaskVine ``vine_worker`` in the foreground, sized to this machine.

Every option reads its default from an ``LDAWT_*`` environment variable (see ``config``), so
the systemd unit's ``EnvironmentFile=`` drives it; under systemd the workspace and the password
default to what the unit provides (``StateDirectory=``, ``LoadCredential=``).

``ldawt-worker install-service ...`` writes the environment file and installs the systemd unit
(see ``service``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import (
    PASSWORD_CREDENTIAL,
    UsageError,
    WorkerConfig,
    add_worker_options,
    check_manager,
    check_password_file,
)
from .vine import (
    INSTALL_HINT,
    build_command,
    build_env,
    find_vine_worker,
    log,
    resolve_resources,
    supervise,
)


def default_workspace() -> str:
    # systemd's StateDirectory= exports STATE_DIRECTORY (possibly several, ':'-separated).
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return state or os.path.join("/tmp", f"ldawt-worker-{os.getuid()}")


def default_password_file() -> str | None:
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        p = Path(creds) / PASSWORD_CREDENTIAL
        # An empty credential is the unit's fallback for "no password configured".
        if p.is_file() and p.stat().st_size > 0:
            return str(p)
    return None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ldawt-worker",
        description="Run a TaskVine worker (vine_worker) for ldawt in the foreground. "
        "`ldawt-worker install-service --help` installs it as a systemd service.",
    )
    add_worker_options(p)
    p.add_argument("--dry-run", action="store_true", help="print the vine_worker command and exit")
    return p


def config_from_args(ns: argparse.Namespace) -> WorkerConfig:
    return WorkerConfig(
        manager=ns.manager,
        name=ns.name,
        catalog=ns.catalog,
        password_file=ns.password_file or default_password_file(),
        ssl=bool(ns.ssl),
        workspace=str(Path(ns.workspace or default_workspace()).absolute()),
        cores=ns.cores,
        memory_mb=ns.memory_mb,
        disk_mb=ns.disk_mb,
        idle_timeout=ns.idle_timeout,
        connect_timeout=ns.connect_timeout,
        stop_timeout=ns.stop_timeout,
        metrics_port=ns.metrics_port,
        vine_worker=ns.vine_worker,
        debug=ns.debug,
        extra=shlex.split(ns.extra_args or ""),
    )


def run(argv: Sequence[str]) -> int:
    """``ldawt-worker [options]``: start vine_worker and supervise it until it exits."""
    ns = parser().parse_args(argv)
    cfg = config_from_args(ns)
    check_manager(cfg)
    env = build_env(cfg, os.environ)
    binary = find_vine_worker(cfg.vine_worker, env["PATH"])
    if ns.dry_run:
        if binary is None:
            log(f"warning: {cfg.vine_worker} not found\n{INSTALL_HINT}")
        resolve_resources(cfg)
        for key in ("LDAWT_WORKSPACE", "LDAWT_METRICS_PORT"):
            if key in env:
                print(f"# env {key}={env[key]}")
        print(f"# env PATH={env['PATH']}")
        print(shlex.join(build_command(cfg, binary or cfg.vine_worker)))
        return 0
    if binary is None:
        raise UsageError(f"{cfg.vine_worker} not found.\n{INSTALL_HINT}")
    check_password_file(cfg.password_file)
    Path(cfg.workspace).mkdir(parents=True, exist_ok=True)
    resolve_resources(cfg)
    argv_vine = build_command(cfg, binary)
    log(f"starting: {shlex.join(argv_vine)}")
    return supervise(argv_vine, env, cfg.stop_timeout)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``ldawt-worker`` entry point; a usage or configuration error exits with 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["install-service"]:
            # Imported here: the installer's atomic writer comes with the shard contract, which
            # loads pyarrow (about 30 MB), and the supervisor stays resident for days.
            from .service import install_service_main

            return install_service_main(args[1:])
        return run(args)
    except UsageError as e:
        print(f"ldawt-worker: error: {e}", file=sys.stderr)
        return 2
