"""Helpers for tests against real TaskVine: a manager, vine_worker processes, bounded waits.

Imported only by tests marked ``taskvine``, and only inside the Debian 13 root (or any machine
with ndcctools), so ``ndcctools`` is imported lazily.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

LOCALHOST = "127.0.0.1"


@contextlib.contextmanager
def vine_manager(run_dir: Path, password_file: Path | None = None) -> Iterator[Any]:
    """A real ``ndcctools.taskvine.Manager`` on a free port, freed on exit."""
    from ndcctools.taskvine import Manager

    m = Manager(port=0, run_info_path=str(run_dir / "vine-run-info"))
    try:
        if password_file is not None:
            m.set_password_file(str(password_file))
        # Library start-up failures otherwise show up only as "Library X failed on worker".
        m.tune("watch-library-logfiles", 1)
        yield m
    finally:
        m._free()


def venv_path_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a worker: this interpreter's bin/ first on PATH.

    vine_worker starts library processes with the ``python3`` on its PATH, which must be the
    one that can import ldawt and ndcctools.
    """
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.update(extra or {})
    return env


def start_process(argv: Sequence[str], log_path: Path, cwd: Path, **kw: Any) -> subprocess.Popen:
    log = open(log_path, "wb")  # noqa: SIM115 - closed by stop_process via the Popen
    proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, cwd=cwd, **kw)
    proc._ldawt_log = log  # type: ignore[attr-defined]
    return proc


def stop_process(proc: subprocess.Popen, grace_s: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after ``grace_s``; returns the exit status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace_s)
    log = getattr(proc, "_ldawt_log", None)
    if log is not None:
        log.close()
    return proc.returncode


def start_vine_worker(
    port: int, workdir: Path, *extra: str, cores: int = 1, timeout_s: int = 120
) -> subprocess.Popen:
    """A real ``vine_worker`` against the manager on 127.0.0.1:port, logging to workdir."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        "vine_worker",
        f"--cores={cores}",
        "--memory=1000",
        "--disk=2000",
        f"--workspace={workdir / 'ws'}",
        f"--timeout={timeout_s}",
        "--parent-death",
        *extra,
        LOCALHOST,
        str(port),
    ]
    return start_process(argv, workdir / "worker.log", workdir, env=venv_path_env())


def wait_for(
    manager: Any, n: int, deadline_s: float, alive: Callable[[], str | None] | None = None
) -> list[Any]:
    """Wait for ``n`` tasks to come back from ``manager``, at most ``deadline_s`` seconds.

    ``alive`` is polled between waits and returns a reason to stop early (e.g. the worker died).
    """
    done: list[Any] = []
    end = time.monotonic() + deadline_s
    while len(done) < n:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"only {len(done)} of {n} tasks returned within {deadline_s} s")
        t = manager.wait(min(2, max(1, int(left))))
        if t is not None:
            done.append(t)
        elif alive is not None and (why := alive()) is not None:
            raise RuntimeError(f"{why} after {len(done)} of {n} tasks")
    return done


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no {path})"
