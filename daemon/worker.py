"""ldawt-worker: run a TaskVine ``vine_worker`` in the foreground, sized to this machine.

Every option reads its default from an ``LDAWT_*`` environment variable, so a systemd
``EnvironmentFile=`` (see ``systemd/worker.env.example``) drives it. The worker's library
processes find ldawt because this interpreter's ``bin/`` goes first on vine_worker's PATH
(vine_worker starts libraries with the ``python3`` it finds there).

``ldawt-worker install-service ...`` writes the environment file and installs the systemd unit
(see ``ldawt.daemon.service``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

MB = 1024 * 1024
DAY_S = 24 * 3600
INSTALL_HINT = (
    "vine_worker (TaskVine) is not installed or not on PATH. Install it with\n"
    "  Debian 13 / recent Ubuntu:  apt install coop-computing-tools python3-workqueue\n"
    "  elsewhere:                  conda install -c conda-forge ndcctools\n"
    "or point --vine-worker / LDAWT_VINE_WORKER at the binary."
)
# Name of the systemd credential (LoadCredential=) holding the manager password.
PASSWORD_CREDENTIAL = "ldawt-password"
TRUE_WORDS = {"1", "true", "yes", "on"}


class UsageError(Exception):
    """A configuration problem reported as exit status 2."""


@dataclass
class WorkerConfig:
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


# --- resources -------------------------------------------------------------------------------


def _own_cgroup_dir() -> Path | None:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):  # cgroup v2
                return Path("/sys/fs/cgroup") / line[3:].lstrip("/")
    except OSError:
        pass
    return None


def _cgroup_value(name: str) -> str | None:
    d = _own_cgroup_dir()
    try:
        return (d / name).read_text().strip() if d else None
    except OSError:
        return None


def detect_cores() -> int:
    """Cores this process may use: CPU affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = psutil.cpu_count() or 1
    quota = (_cgroup_value("cpu.max") or "max").split()
    if len(quota) == 2 and quota[0] != "max":
        cores = min(cores, max(1, int(int(quota[0]) / int(quota[1]))))
    return max(1, cores)


def detect_memory_mb() -> int:
    """Memory to offer: physical (or the cgroup limit) minus max(512 MB, 10%) for the system."""
    total = psutil.virtual_memory().total
    limit = _cgroup_value("memory.max")
    if limit and limit.isdigit():
        total = min(total, int(limit))
    margin = max(512 * MB, total // 10)
    return max(256, (total - margin) // MB)


def existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def detect_disk_mb(workspace: Path) -> int:
    """Free disk under the workspace minus max(1 GB, 5% of the file system)."""
    usage = psutil.disk_usage(str(existing_ancestor(workspace)))
    margin = max(1024 * MB, usage.total // 20)
    return max(256, (usage.free - margin) // MB)


# --- command ---------------------------------------------------------------------------------


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


def vine_workspace(cfg: WorkerConfig) -> Path:
    # vine_worker deletes its workspace on exit, so it gets a subdirectory, never DIR itself.
    return Path(cfg.workspace) / "vine"


def check_manager(cfg: WorkerConfig) -> None:
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


def build_command(cfg: WorkerConfig, vine_worker: str) -> list[str]:
    """The vine_worker command line for ``cfg`` (checked, resources already resolved)."""
    argv = [
        vine_worker,
        f"--cores={cfg.cores}",
        f"--memory={cfg.memory_mb}",
        f"--disk={cfg.disk_mb}",
        f"--workspace={vine_workspace(cfg)}",
        f"--idle-timeout={cfg.idle_timeout}",
        f"--connect-timeout={cfg.connect_timeout}",
        # If ldawt-worker itself is killed hard, vine_worker must not linger.
        "--parent-death",
    ]
    if cfg.password_file:
        argv.append(f"--password={cfg.password_file}")
    if cfg.ssl:
        argv.append("--ssl")
    if cfg.catalog:
        argv.append(f"--catalog={cfg.catalog}")
    if cfg.debug:
        argv += [f"--debug={cfg.debug}", "--debug-file=:stderr"]
    argv += cfg.extra
    argv += ["-M", cfg.name] if cfg.name else [cfg.manager or ""]
    return argv


def build_env(cfg: WorkerConfig, base: Mapping[str, str]) -> dict[str, str]:
    """vine_worker's environment: this interpreter's bin/ first on PATH, settings exported."""
    env = dict(base)
    bindir = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != bindir]
    env["PATH"] = os.pathsep.join([bindir, *path])
    env["LDAWT_WORKSPACE"] = cfg.workspace
    if cfg.metrics_port is not None:
        env["LDAWT_METRICS_PORT"] = str(cfg.metrics_port)
    return env


def resolve_resources(cfg: WorkerConfig) -> WorkerConfig:
    if cfg.cores is None:
        cfg.cores = detect_cores()
    if cfg.memory_mb is None:
        cfg.memory_mb = detect_memory_mb()
    if cfg.disk_mb is None:
        cfg.disk_mb = detect_disk_mb(Path(cfg.workspace))
    return cfg


def find_vine_worker(name: str, path: str) -> str | None:
    if os.sep in name:
        return name if os.access(name, os.X_OK) and Path(name).is_file() else None
    return shutil.which(name, path=path)


def check_password_file(path: str | None) -> None:
    if path is None:
        return
    try:
        if not Path(path).read_bytes().strip():
            raise UsageError(f"password file {path} is empty")
    except OSError as e:
        raise UsageError(f"cannot read password file {path}: {e.strerror}") from e


# --- supervision -----------------------------------------------------------------------------

CLEAN_STOP = {0, -signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGINT}


def supervise(argv: Sequence[str], env: Mapping[str, str], stop_timeout: float) -> int:
    """Run vine_worker, forwarding SIGTERM/SIGINT; 0 after a clean stop we forwarded."""
    proc: subprocess.Popen | None = None
    stop: dict[str, float] = {}

    def forward(signum: int, _frame: object) -> None:
        stop.setdefault("at", time.monotonic())
        if proc is not None and proc.poll() is None:
            proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    # Its own session: a terminal's Ctrl-C reaches ldawt-worker, which forwards it once.
    proc = subprocess.Popen(list(argv), env=dict(env), start_new_session=True)
    if "at" in stop and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    while True:
        try:
            rc = proc.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if "at" in stop and time.monotonic() - stop["at"] > stop_timeout:
                log(f"vine_worker did not stop within {stop_timeout:g} s; killing it")
                proc.kill()
                proc.wait()
                return 1
    if "at" in stop:
        if rc in CLEAN_STOP:
            log("vine_worker stopped")
            return 0
        log(f"vine_worker exited with status {rc} while stopping")
    else:
        log(f"vine_worker exited with status {rc}")
    return rc if rc >= 0 else 128 - rc


def log(msg: str) -> None:
    print(f"ldawt-worker: {msg}", file=sys.stderr, flush=True)


# --- command line ----------------------------------------------------------------------------


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
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["install-service"]:
            from .service import install_service_main

            return install_service_main(args[1:])
        return run(args)
    except UsageError as e:
        print(f"ldawt-worker: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
