"""The embedded engine: shards run on this machine, with no cluster.

With one worker the shards run in this process, on one warm runtime (one event loop, one
connection pool). With more, each worker is a separate process holding its own runtime, so the
CPU work (HTTP parsing, hashing, tar writing) spreads over the cores. A shard starts only when
a worker is free and the job-wide host limits admit it (``hostcaps``). The worker processes
share one DNS cache, served on a Unix socket for the run by one more process started as they
are (``dns_socket``).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os
import queue
import shutil
import time
from collections import deque
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

from ldawt.daemon.contract import (
    ProgressCallback,
    ShardResult,
    ShardSpec,
    describe_exception,
    failure_result,
)
from ldawt.daemon.worker.resources import detect_cores

from ..hostcaps import UNSHARED, HostShares

log = logging.getLogger(__name__)

WORKER_IMPORTS = [
    "ldawt.manager.cli",
    "ldawt.manager.engines.local",
    "ldawt.daemon.shard",
    "ldawt.daemon.fetcher.dnsshare",
    "uvloop",
    "pyarrow.dataset",
    "encodings.idna",
]
"""What the forkserver imports once for all workers (a missing one is skipped). Each worker
runs the program's script again (``ldawt-manager``, which imports the CLI): a preloaded
"__main__" would spare that, but CPython's forkserver never receives the script's path, so
the CLI is named instead. uvloop, ``pyarrow.dataset`` (behind ``read_table``) and the IDNA
codec (host names) would otherwise be imported by every worker at its first shard: about 40
ms apiece in all."""

DNS_START_TIMEOUT_S = 30.0

_progress_queue: Any = None
_forkserver_environment: dict[str, str] | None = None


def _init_worker(progress_queue: Any) -> None:
    global _progress_queue
    _progress_queue = progress_queue


def _run_reporting(spec: ShardSpec) -> ShardResult:
    # The daemon (aiohttp, Pillow, about 0.2 CPU s to import) is imported by the processes
    # that run shards: the forkserver once for all workers (WORKER_IMPORTS), or this process
    # when it runs them itself; the manager of several workers never needs it.
    from ldawt.daemon.shard import run_shard

    return run_shard(spec, _progress_queue.put)


def _serve_shared_dns(connection: Connection) -> None:
    """The shared DNS cache's process (``_shared_dns``); it imports the daemon's resolver, as
    a worker does."""
    from ldawt.daemon.fetcher.dnsshare import serve_until_closed

    serve_until_closed(connection)


class LocalEngine:
    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or detect_cores()

    def describe(self) -> str:
        if self.workers == 1:
            return "local engine, in-process"
        return f"local engine, {self.workers} worker processes"

    def run(
        self,
        specs: list[ShardSpec],
        progress: ProgressCallback,
        shares: HostShares = UNSHARED,
    ) -> Iterator[ShardResult]:
        workers = max(1, min(self.workers, len(specs)))
        if workers == 1:
            progress_queue: Any = queue.SimpleQueue()
            executor: cf.Executor = cf.ThreadPoolExecutor(
                1, initializer=_init_worker, initargs=(progress_queue,)
            )
            shared_dns: contextlib.AbstractContextManager[str | None] = contextlib.nullcontext()
        else:
            context = _worker_context()
            progress_queue = context.Queue()
            executor = cf.ProcessPoolExecutor(
                workers, mp_context=context, initializer=_init_worker, initargs=(progress_queue,)
            )
            shared_dns = _shared_dns(context)
        # the cache outlives the pool: shards still running after an interrupt keep using it
        with shared_dns as dns_socket, executor:
            started = time.monotonic()
            waiting = deque(_with_dns_socket(spec, dns_socket) for spec in specs)
            pending: dict[cf.Future, ShardSpec] = {}
            try:
                while waiting or pending:
                    _start(executor, waiting, pending, shares, workers)
                    done, _ = cf.wait(pending, timeout=0.25, return_when=cf.FIRST_COMPLETED)
                    _drain(progress_queue, progress)
                    finished = [(future, pending.pop(future)) for future in done]
                    for _, spec in finished:
                        shares.release(spec.shard_id)
                    # The freed workers start their next shards before the caller records
                    # these results (it may take a while): no worker waits on the manager.
                    _start(executor, waiting, pending, shares, workers)
                    for future, spec in finished:
                        yield _result_of(future, spec, started)
                _drain(progress_queue, progress)
            finally:
                for future in pending:
                    future.cancel()


def _worker_context() -> multiprocessing.context.BaseContext:
    """Worker processes forked from a server process that imported ldawt once, where the
    platform has one (forkserver). Each spawned process would import ldawt, aiohttp and pyarrow
    again, about 0.4 CPU s apiece (bench/RESULTS.md). Never plain fork: the manager may hold
    threads, which fork would copy in a broken state.

    The server's processes keep the environment it started with, the job's marker among it
    (``reconcile.stop_orphans``); a later run of this process in another environment (another
    job, through the API) spawns its workers instead.
    """
    global _forkserver_environment
    environment = dict(os.environ)
    if "forkserver" in multiprocessing.get_all_start_methods() and (
        _forkserver_environment in (None, environment)
    ):
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(WORKER_IMPORTS)
        try:
            multiprocessing.forkserver.ensure_running()
        except OSError as exc:  # its socket's path under a long TMPDIR, for one
            log.debug(f"no forkserver ({exc}); worker processes are spawned")
        else:
            _forkserver_environment = environment
            log.debug("worker processes fork from the forkserver")
            return context
    else:
        log.debug("worker processes are spawned: no forkserver for this environment")
    return multiprocessing.get_context("spawn")


@contextlib.contextmanager
def _shared_dns(context: multiprocessing.context.BaseContext) -> Iterator[str | None]:
    """The shared DNS cache's socket path, served by a process started as the workers are (so
    that this process need not import aiohttp); it stops when this end of its pipe closes.
    None, with one warning, when it cannot start: each worker process then resolves hosts
    itself, as on TaskVine."""
    ours, theirs = context.Pipe()
    helper = context.Process(
        target=_serve_shared_dns, args=(theirs,), name="ldawt-dns-cache", daemon=True
    )
    path: str | None = None
    try:
        try:
            helper.start()
            if not ours.poll(DNS_START_TIMEOUT_S):
                raise TimeoutError(f"no answer within {DNS_START_TIMEOUT_S:g} s")
            status, detail = ours.recv()
            if status != "serving":
                raise OSError(detail)
            path = detail
        except (OSError, EOFError, TimeoutError, ValueError) as exc:
            log.warning(f"no shared DNS cache ({exc}); each worker process resolves hosts itself")
            if helper.is_alive():  # not serving anyone: not kept for the run
                helper.kill()
        finally:
            theirs.close()  # the helper holds its own copy
        yield path
    finally:
        ours.close()
        if helper.pid is not None:
            helper.join(timeout=DNS_START_TIMEOUT_S)
            if helper.is_alive():
                helper.kill()
                helper.join()
        if path is not None:  # gone with its process, unless that was killed
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def _with_dns_socket(spec: ShardSpec, dns_socket: str | None) -> ShardSpec:
    if dns_socket is None:
        return spec
    return spec.replace(fetch=dataclasses.replace(spec.fetch, dns_socket=dns_socket))


def _start(
    executor: cf.Executor,
    waiting: deque[ShardSpec],
    pending: dict[cf.Future, ShardSpec],
    shares: HostShares,
    workers: int,
) -> None:
    """Start waiting shards, in order, while a worker is free; a shard the host limits refuse
    for now stays waiting, in its place, and the next one is tried. With none running, the
    first waiting shard is always admitted."""
    refused: list[ShardSpec] = []
    while waiting and len(pending) < workers:
        spec = waiting.popleft()
        admitted = shares.admit(spec, workers)
        if admitted is None:
            refused.append(spec)
        else:
            pending[_submit(executor, admitted)] = spec
    waiting.extendleft(reversed(refused))


def _submit(executor: cf.Executor, spec: ShardSpec) -> cf.Future:
    """The shard's future; once a worker process died, the pool refuses new work: the future
    then holds that failure, as those of the shards already queued do."""
    try:
        return executor.submit(_run_reporting, spec)
    except cf.BrokenExecutor as exc:
        broken: cf.Future = cf.Future()
        broken.set_exception(exc)
        return broken


def _drain(progress_queue: Any, progress: ProgressCallback) -> None:
    while True:
        try:
            progress(progress_queue.get_nowait())
        except queue.Empty:
            return


def _result_of(future: cf.Future, spec: ShardSpec, started: float) -> ShardResult:
    """The shard's result; ``started``: when the run began (a queued shard's own start is not
    known here, so a failed one's ``elapsed_s`` may include its wait)."""
    try:
        return future.result()
    except Exception as exc:  # a worker process died (killed, out of memory)
        return failure_result(spec.shard_id, f"worker failed: {describe_exception(exc)}", started)
