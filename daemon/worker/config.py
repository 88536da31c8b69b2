"""The worker's settings, shared by ``ldawt-worker`` and ``ldawt-worker install-service``.

``WorkerConfig`` holds what ``vine_worker`` is started with; ``add_worker_options`` declares the
options that set it, each defaulting to an ``LDAWT_*`` environment variable so a systemd
``EnvironmentFile=`` (see ``systemd/worker.env.example``) drives the service; the checks here run
in both commands, so the installer never installs a unit that could not start.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

DAY_S = 24 * 3600
# Name of the systemd credential (LoadCredential=) holding the manager password.
PASSWORD_CREDENTIAL = "ldawt-password"
TRUE_WORDS = {"1", "true", "yes", "on"}


class UsageError(Exception):
    """A configuration problem reported as exit status 2."""


@dataclass
class WorkerConfig:
    """What ``vine_worker`` is started with; ``None`` resources are detected at start."""

    manager: str | None = None
    name: str | None = None
    catalog: str | None = None
    password_file: str | None = None
    ssl: bool = False
    workspace: str = ""
    cores: int | None = None
    memory_mb: int | None = None
    disk_mb: int | None = None
    idle_timeout: int = 7 * DAY_S
    connect_timeout: int = 7 * DAY_S
    stop_timeout: float = 60.0
    metrics_port: int | None = None
    vine_worker: str = "vine_worker"
    debug: str | None = None
    extra: list[str] = field(default_factory=list)


def check_manager(cfg: WorkerConfig) -> None:
    """Exactly one way to find the manager, and addresses vine_worker can parse."""
    if bool(cfg.manager) == bool(cfg.name):
        raise UsageError(
            "give exactly one of --manager HOST:PORT (LDAWT_MANAGER) "
            "or --name NAME (LDAWT_MANAGER_NAME)"
        )
    if cfg.manager:
        for hp in cfg.manager.split(";"):
            host, _, port = hp.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise UsageError(f"--manager wants HOST:PORT[;HOST:PORT...], got {cfg.manager!r}")


def check_password_file(path: str | None) -> None:
    """An unreadable or empty password file is a usage error, found before anything is started
    or installed."""
    if path is None:
        return
    try:
        if not Path(path).read_bytes().strip():
            raise UsageError(f"password file {path} is empty")
    except OSError as e:
        raise UsageError(f"cannot read password file {path}: {e.strerror}") from e


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _env_bool(name: str) -> bool:
    return (_env(name) or "").strip().lower() in TRUE_WORDS


def add_worker_options(p: argparse.ArgumentParser, env_defaults: bool = True) -> None:
    """The options shared by ``ldawt-worker`` and ``ldawt-worker install-service``."""

    def d(env: str, fallback: str | None = None) -> str | None:
        return _env(env, fallback) if env_defaults else None

    g = p.add_argument_group("manager (exactly one of --manager / --name)")
    g.add_argument(
        "--manager",
        metavar="HOST:PORT",
        default=d("LDAWT_MANAGER"),
        help="manager address, or several as 'h1:p1;h2:p2' [env LDAWT_MANAGER; default: none]",
    )
    g.add_argument(
        "--name",
        default=d("LDAWT_MANAGER_NAME"),
        help="manager project name, looked up in the catalog (a regular expression is allowed) "
        "[env LDAWT_MANAGER_NAME; default: none]",
    )
    g.add_argument(
        "--catalog",
        metavar="HOST:PORT",
        default=d("LDAWT_CATALOG"),
        help="catalog server(s) for --name [env LDAWT_CATALOG; default: vine_worker's default]",
    )
    g.add_argument(
        "--password-file",
        default=d("LDAWT_PASSWORD_FILE"),
        help="file holding the manager's password [env LDAWT_PASSWORD_FILE; default: the "
        f"systemd credential '{PASSWORD_CREDENTIAL}' if present and not empty, else none]",
    )
    g.add_argument(
        "--ssl",
        action=argparse.BooleanOptionalAction,
        default=_env_bool("LDAWT_SSL") if env_defaults else None,
        help="encrypt the connection to the manager (TLS; pair it with a password: TLS alone "
        "does not authenticate the manager) [env LDAWT_SSL=1; default: off]",
    )
    r = p.add_argument_group("resources (detected when not given)")
    r.add_argument(
        "--workspace",
        metavar="DIR",
        default=d("LDAWT_WORKSPACE"),
        help="working directory; vine_worker runs in DIR/vine, which it deletes on exit "
        "[env LDAWT_WORKSPACE; default: $STATE_DIRECTORY (systemd) or /tmp/ldawt-worker-UID]",
    )
    r.add_argument(
        "--cores",
        type=int,
        default=d("LDAWT_CORES"),
        help="cores to offer [env LDAWT_CORES; default: the CPUs this process may use]",
    )
    r.add_argument(
        "--memory-mb",
        type=int,
        default=d("LDAWT_MEMORY_MB"),
        help="memory to offer in MB [env LDAWT_MEMORY_MB; default: physical memory or the "
        "cgroup limit, minus max(512 MB, 10%%)]",
    )
    r.add_argument(
        "--disk-mb",
        type=int,
        default=d("LDAWT_DISK_MB"),
        help="disk to offer in MB [env LDAWT_DISK_MB; default: free space of the workspace's "
        "file system minus max(1 GB, 5%% of its size)]",
    )
    t = p.add_argument_group("service behaviour")
    t.add_argument(
        "--idle-timeout",
        type=int,
        metavar="SECONDS",
        default=d("LDAWT_IDLE_TIMEOUT", str(WorkerConfig.idle_timeout)),
        help="disconnect after this long without work [env LDAWT_IDLE_TIMEOUT; default: "
        f"{WorkerConfig.idle_timeout} (7 days)]",
    )
    t.add_argument(
        "--connect-timeout",
        type=int,
        metavar="SECONDS",
        default=d("LDAWT_CONNECT_TIMEOUT", str(WorkerConfig.connect_timeout)),
        help="give up after this long without reaching a manager [env LDAWT_CONNECT_TIMEOUT; "
        f"default: {WorkerConfig.connect_timeout} (7 days)]",
    )
    t.add_argument(
        "--stop-timeout",
        type=float,
        metavar="SECONDS",
        default=d("LDAWT_STOP_TIMEOUT", str(WorkerConfig.stop_timeout)),
        help="after forwarding SIGTERM/SIGINT, kill vine_worker if it has not exited by then "
        f"[env LDAWT_STOP_TIMEOUT; default: {WorkerConfig.stop_timeout:g}]",
    )
    t.add_argument(
        "--metrics-port",
        type=int,
        default=d("LDAWT_METRICS_PORT"),
        help="first port of the library processes' /metrics servers, exported to them as "
        "LDAWT_METRICS_PORT [env LDAWT_METRICS_PORT; default: unset (the library's default)]",
    )
    t.add_argument(
        "--vine-worker",
        metavar="PATH",
        default=d("LDAWT_VINE_WORKER", "vine_worker"),
        help="the vine_worker binary [env LDAWT_VINE_WORKER; default: vine_worker on PATH]",
    )
    t.add_argument(
        "--debug",
        metavar="SUBSYSTEMS",
        default=d("LDAWT_WORKER_DEBUG"),
        help="vine_worker debug subsystems (e.g. 'all'), logged to stderr "
        "[env LDAWT_WORKER_DEBUG; default: none]",
    )
    t.add_argument(
        "--extra-args",
        metavar="ARGS",
        default=d("LDAWT_WORKER_EXTRA_ARGS"),
        help="more vine_worker options, shell-quoted (e.g. '--feature gpu') "
        "[env LDAWT_WORKER_EXTRA_ARGS; default: none]",
    )
