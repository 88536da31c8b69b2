"""The ``vine_worker`` process: its command line and environment, built from a ``WorkerConfig``,
and its supervision in the foreground (signals forwarded, a stop bounded in time).

vine_worker starts the library processes with the ``python3`` it finds first on its PATH, so
this interpreter's ``bin/`` goes first: that is how those processes find ldawt.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .config import WorkerConfig
from .resources import detect_cores, detect_disk_mb, detect_memory_mb

INSTALL_HINT = (
    "vine_worker (TaskVine) is not installed or not on PATH. Install it with\n"
    "  Debian 13 / recent Ubuntu:  apt install coop-computing-tools python3-workqueue\n"
    "  elsewhere:                  conda install -c conda-forge ndcctools\n"
    "or point --vine-worker / LDAWT_VINE_WORKER at the binary."
)
CLEAN_STOP = {0, -signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGINT}


def log(msg: str) -> None:
    print(f"ldawt-worker: {msg}", file=sys.stderr, flush=True)


def vine_workspace(cfg: WorkerConfig) -> Path:
    # vine_worker deletes its workspace on exit, so it gets a subdirectory, never DIR itself.
    return Path(cfg.workspace) / "vine"


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
    """``cfg`` with the resources not given detected on this machine."""
    if cfg.cores is None:
        cfg.cores = detect_cores()
    if cfg.memory_mb is None:
        cfg.memory_mb = detect_memory_mb()
    if cfg.disk_mb is None:
        cfg.disk_mb = detect_disk_mb(Path(cfg.workspace))
    return cfg


def find_vine_worker(name: str, path: str) -> str | None:
    """The vine_worker binary: ``name`` itself if it is a path, else looked up on ``path``."""
    if os.sep in name:
        return name if os.access(name, os.X_OK) and Path(name).is_file() else None
    return shutil.which(name, path=path)


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
