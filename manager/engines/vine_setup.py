"""The pieces of a TaskVine run that are not scheduling: the manager, the library, local
workers, and moving a shard's returned files into place.

``ndcctools`` is imported inside the functions, so this module imports on machines without it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from ldawt.daemon import library
from ldawt.daemon.contract import ShardResult, ShardSpec, write_text_atomically

from .engine import EngineError
from .vine_options import VineOptions

LIBRARY_NAME = "ldawt"
SHARD_FUNCTION = library.ldawt_shard.__name__
MB = 1024 * 1024
# Per library process: the interpreter, aiohttp, pyarrow and the tar writer, on top of the
# fetcher's buffer of downloaded images.
LIBRARY_BASE_MEMORY_MB = 512
# Disk reserved per library process for one shard's outputs, by rows: a guess at a large
# average image (thumbnails are ~20 KB, "medium" web images ~100-300 KB).
DISK_PER_ROW_MB = 0.25
MIN_LIBRARY_DISK_MB = 1024
LIBRARY_LOG_LINES = 25


def open_manager(options: VineOptions, vine_dir: Path) -> Any:
    """A listening ``ndcctools.taskvine.Manager`` with its logs and staging under ``vine_dir``."""
    from ndcctools.taskvine import Manager, cvine

    ssl = (options.ssl_key, options.ssl_cert) if options.ssl_key else None
    try:
        m = Manager(
            port=options.manager_port(),
            name=options.name,
            run_info_path=str(vine_dir / "run-info"),
            staging_path=str(vine_dir),
            ssl=ssl,
        )
    except Exception as exc:
        raise EngineError(
            f"cannot start the TaskVine manager on port {options.manager_port()} ({exc}); "
            "is the port in use? choose another with --port"
        ) from exc
    if options.password_file:
        m.set_password_file(options.password_file)
    # The library's own output comes back to the manager, so a library that dies at start-up
    # can be reported with its traceback.
    m.tune("watch-library-logfiles", 1)
    # A library failing at start-up is retried on a worker after this interval (TaskVine's
    # default of 15 s makes a broken deployment take a minute to report).
    m.tune("transient-error-interval", 5)
    # TaskVine 7.14 caps this at 1 (it keeps the smaller of 1 and the value asked for).
    m.tune("max-library-retries", options.library_retries)
    # TaskVine's default gives a call to the first worker in its table that can take it (the
    # calls have no cached inputs to prefer one by): a worker whose library cannot start, free
    # again a few seconds after each failure, took the same call over and over while a healthy
    # worker waited. At random, the healthy one gets it too.
    m.set_scheduler(cvine.VINE_SCHEDULE_RAND)
    # A worker whose connection stays open while it no longer answers (vine_worker killed while
    # its transfer-server child still holds the socket) is declared lost after about twice the
    # keepalive, not TaskVine's five minutes; meanwhile a read from it blocks the whole manager
    # for up to the long timeout (TaskVine's default: an hour).
    m.set_keepalive_interval(options.keepalive_s)
    m.set_keepalive_timeout(options.keepalive_s)
    m.tune("long-timeout", options.stall_timeout_s)
    return m


@dataclass(frozen=True)
class LibrarySize:
    cores: int
    memory_mb: int
    disk_mb: int

    def describe(self) -> str:
        return f"{self.cores} core(s), {self.memory_mb} MB memory, {self.disk_mb} MB disk"


def library_size(options: VineOptions, specs: list[ShardSpec], rows: int) -> LibrarySize:
    """``rows``: the largest shard's rows (sizes the disk reserved for one shard's outputs)."""
    buffered = max(s.fetch.max_buffered_bytes for s in specs)
    memory = options.library_memory_mb or LIBRARY_BASE_MEMORY_MB + math.ceil(buffered / MB)
    disk = options.library_disk_mb or max(MIN_LIBRARY_DISK_MB, math.ceil(rows * DISK_PER_ROW_MB))
    return LibrarySize(options.library_cores, memory, disk)


def install_library(m: Any, size: LibrarySize) -> None:
    """Install the ldawt library on every worker that connects (now and later)."""
    lib = m.create_library_from_functions(
        LIBRARY_NAME,
        library.ldawt_shard,
        library_context_info=[library.library_context, [], {}],
        exec_mode="direct",
        add_env=False,
    )
    lib.set_cores(size.cores)
    lib.set_memory(size.memory_mb)
    lib.set_disk(size.disk_mb)
    # A direct-mode library runs its calls one after another in its own process, so more slots
    # would only queue shards behind a running one; parallelism comes from one library process
    # per library-sized share of each worker.
    lib.set_function_slots(1)
    m.install_library(lib)


class GilFreeWait:
    """``Manager.wait(timeout)`` that lets this process's other threads run meanwhile.

    ndcctools' SWIG binding holds the GIL for the whole of vine_wait, so a thread of the manager
    process (its /metrics server, the demo's origin) would only run between two waits. Through
    ctypes the same C call releases it. Relies on two ndcctools internals (7.14): the manager's
    C pointer ``_taskvine`` and its table of submitted tasks ``_task_table``.
    """

    def __init__(self, m: Any) -> None:
        from ndcctools.taskvine import cvine

        lib = ctypes.CDLL(cvine._cvine.__file__)
        self._wait = lib.vine_wait_for_tag
        self._wait.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int)
        self._wait.restype = ctypes.c_void_p
        self._task_id = lib.vine_task_get_id
        self._task_id.argtypes = (ctypes.c_void_p,)
        self._task_id.restype = ctypes.c_int
        self._m = m
        self._manager = int(m._taskvine)

    def __call__(self, timeout_s: int) -> Any:
        """The next finished task (the Python object submitted), or None after ``timeout_s``."""
        task = self._wait(self._manager, None, timeout_s)
        return self._m._task_table.pop(self._task_id(task)) if task else None


def library_log_tail(m: Any) -> str:
    """The end of the most recent library log the workers sent back, or a hint."""
    logs = sorted(
        Path(m.library_logging_directory).glob("library-task-*.log"),
        key=lambda p: p.stat().st_mtime,
    )
    if not logs:
        return "(no library log came back)"
    lines = logs[-1].read_text(errors="replace").splitlines()
    return f"{logs[-1]}:\n" + "\n".join(lines[-LIBRARY_LOG_LINES:])


def manager_address(m: Any) -> str:
    return f"{socket.getfqdn()}:{m.port}"


def worker_command_hint(m: Any, options: VineOptions) -> str:
    target = f"--name {options.name}" if options.name else f"--manager {manager_address(m)}"
    extra = f" --password-file {options.password_file}" if options.password_file else ""
    return f"ldawt-worker {target}{extra}" + (" --ssl" if options.ssl_key else "")


class LocalWorkers:
    """``n`` ldawt-worker processes on this machine, sharing its cores, memory and disk."""

    def __init__(self, n: int, port: int, options: VineOptions, root: Path) -> None:
        from ldawt.daemon.worker.resources import detect_cores, detect_disk_mb, detect_memory_mb

        self.procs: list[subprocess.Popen] = []
        cores = max(1, detect_cores() // n)
        memory = max(256, detect_memory_mb() // n)
        disk = max(256, detect_disk_mb(root) // n)
        # The manager's own settings must not reach the workers' environment defaults.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("LDAWT_MANAGER", "LDAWT_CATALOG"))
        }
        for i in range(n):
            workspace = root / f"worker-{i}"
            workspace.mkdir(parents=True, exist_ok=True)
            argv = [
                sys.executable,
                "-m",
                "ldawt.daemon.worker",
                f"--manager=127.0.0.1:{port}",
                f"--workspace={workspace}",
                f"--cores={cores}",
                f"--memory-mb={memory}",
                f"--disk-mb={disk}",
                # If this manager dies without stopping them, they give up on their own.
                "--connect-timeout=60",
            ]
            if options.password_file:
                argv.append(f"--password-file={options.password_file}")
            if options.ssl_key:
                argv.append("--ssl")
            log = open(workspace / "worker.log", "ab")  # noqa: SIM115 - closed in stop()
            self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env))
            log.close()

    def exited(self) -> list[int]:
        return [p.returncode for p in self.procs if p.poll() is not None]

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM each worker, SIGKILL what is left after ``grace_s``, then whatever ran under
        them (vine_worker's transfer server and libraries can outlive it)."""
        under = []
        for p in self.procs:
            with contextlib.suppress(psutil.Error):
                under += psutil.Process(p.pid).children(recursive=True)
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + grace_s
        for p in self.procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        _, alive = psutil.wait_procs(under, timeout=max(0.0, deadline - time.monotonic()))
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()


def commit_outputs(staged: Path, spec: ShardSpec, result: ShardResult) -> ShardResult:
    """Move a shard's returned files from ``staged`` into its output folder, in the commit
    order (tar, manifest, stats last), and return the result with the final paths."""
    files = spec.files
    final = ShardResult(
        result,
        tar_path=str(files.tar),
        manifest_path=str(files.manifest),
        stats_path=str(files.stats),
    )
    for key, path in (("tar_path", files.tar), ("manifest_path", files.manifest)):
        source = staged / Path(result[key]).name
        if not source.is_file():
            raise FileNotFoundError(f"{source.name} did not come back from the worker")
        os.replace(source, path)
    # The stats file names the worker's paths; it is written again with the ones on this side,
    # atomically: a stats file is the mark of a complete shard.
    stats = json.loads((staged / Path(result["stats_path"]).name).read_text())
    stats.update({k: final[k] for k in ("tar_path", "manifest_path", "stats_path")})
    write_text_atomically(files.stats, json.dumps(stats, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(staged, ignore_errors=True)
    return final
