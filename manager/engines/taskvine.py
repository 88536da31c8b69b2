"""The TaskVine engine: one serverless library per worker core, one FunctionCall per shard.

Workers connect to this manager (pull model, no message queue). Every worker runs the ldawt
library (``ldawt.daemon.library``) as long-lived processes holding a warm event loop and
connection pool, so a shard costs one function call rather than a fresh Python process. A
shard's input file goes to the worker as a declared input and its tar, manifest and stats come
back as a declared output folder; or, when workers share this machine's file system
(``--shared-output``, or only local workers), they read the input and write the files in place,
into a folder of the run's own. Either way the manager then moves the files of the one accepted
run of a shard into the output folder, in commit order.

How a worker imports ldawt: the library is pickled by reference, so the ``python`` first on
vine_worker's PATH must have ldawt installed; ``ldawt-worker`` puts its own interpreter first.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ldawt.daemon.contract import ProgressCallback, ShardResult, ShardSpec, failure_result
from ldawt.daemon.library import UNIQUE_OUTPUT
from ldawt.manager import metrics

from ..hostcaps import UNSHARED, HostShares
from .engine import EngineError
from .vine_options import VineOptions
from .vine_setup import (
    LIBRARY_NAME,
    SHARD_FUNCTION,
    GilFreeWait,
    LibrarySize,
    LocalWorkers,
    commit_outputs,
    install_library,
    library_log_tail,
    library_size,
    manager_address,
    open_manager,
    worker_command_hint,
)

# vine_wait takes whole seconds; 0 neither accepts workers nor reads their results.
WAIT_S = 1
WATCH_S = 1.0
MIN_IN_FLIGHT = 16
MAX_BACKOFF_S = 300.0
# Workers are connected but no shard has started for this long: probably none can fit the
# library; the progress line says what it needs.
NOT_STARTING_S = 60.0
INPUT_NAME = "input.parquet"
OUTPUT_NAME = "out"
SIZE_SAMPLE = 64

log = logging.getLogger(__name__)


@dataclass
class _Attempt:
    spec: ShardSpec
    number: int = 1
    not_before: float = 0.0
    staged: Path | None = None  # where this attempt's files arrive before going into place
    files: list[Any] = field(default_factory=list)


class TaskVineEngine:
    def __init__(self, options: VineOptions) -> None:
        self.options = options

    def describe(self) -> str:
        o = self.options
        where = f"project {o.name}" if o.name else f"port {o.manager_port() or 'any'}"
        local = f", {o.local_workers} local worker(s)" if o.local_workers else ""
        return f"taskvine engine ({where}{local}; one FunctionCall per shard)"

    def run(
        self,
        specs: list[ShardSpec],
        progress: ProgressCallback,
        shares: HostShares = UNSHARED,
    ) -> Iterator[ShardResult]:
        if not specs:
            return
        # Next to the job's shard-inputs folder: the job folder.
        vine_dir = Path(specs[0].input_path).parent.parent / "taskvine"
        # Left by a previous run of this manager that was killed: files of interrupted attempts,
        # and local workers' workspaces (vine_worker 7.14.5 can crash when it starts on the
        # workspace of a worker that was killed).
        for leftover in ("incoming", "workers"):
            shutil.rmtree(vine_dir / leftover, ignore_errors=True)
        m = open_manager(self.options, vine_dir)
        workers: LocalWorkers | None = None
        try:
            sample = specs[:SIZE_SAMPLE]
            size = library_size(self.options, sample, _rows_of(sample))
            install_library(m, size)
            if self.options.local_workers:
                workers = LocalWorkers(
                    self.options.local_workers, m.port, self.options, vine_dir / "workers"
                )
            run = _Run(m, self.options, size, vine_dir, workers, progress, shares)
            yield from run.results(specs)
        finally:
            # The manager goes first: a worker blocked writing to it would not stop otherwise.
            m._free()  # ndcctools' only way to close the listening port and free the manager
            if workers is not None:
                workers.stop()
            shutil.rmtree(vine_dir / "incoming", ignore_errors=True)


def _rows_of(specs: list[ShardSpec]) -> int:
    return max(pq.ParquetFile(s.input_path).metadata.num_rows for s in specs)


class _Run:
    """One pass over a list of shard specs on an open manager."""

    def __init__(
        self,
        m: Any,
        options: VineOptions,
        size: LibrarySize,
        vine_dir: Path,
        workers: LocalWorkers | None,
        progress: ProgressCallback,
        shares: HostShares,
    ) -> None:
        self.m = m
        self.options = options
        self.size = size
        self.vine_dir = vine_dir
        self.workers = workers
        self.progress = progress
        self.wait = GilFreeWait(m)
        self.running: dict[int, tuple[Any, _Attempt]] = {}
        self.cancelled: set[int] = set()  # calls cancelled to be submitted again (_requeue_lost)
        self.served = False  # a shard succeeded: the library works on some worker
        self.reinstalls = 0
        self.last_start = time.monotonic()
        self.note = ""
        self.limit = options.max_in_flight or MIN_IN_FLIGHT
        self.shares = shares
        self.cores = 0  # of the connected workers: the shards that can run at once

    def results(self, specs: list[ShardSpec]) -> Iterator[ShardResult]:
        ready: deque[_Attempt] = deque(_Attempt(spec) for spec in specs)
        delayed: list[_Attempt] = []  # retries waiting for their backoff to pass
        next_watch = 0.0
        try:
            while ready or delayed or self.running:
                now = time.monotonic()
                if now >= next_watch:
                    self._watch()
                    next_watch = now + WATCH_S
                if delayed:
                    ready.extend(a for a in delayed if a.not_before <= now)
                    delayed = [a for a in delayed if a.not_before > now]
                ready = self._submit(ready)
                task = self.wait(WAIT_S)
                if task is None:
                    continue
                _call, attempt = self.running.pop(task.id)
                self.shares.release(attempt.spec.shard_id)
                if task.id in self.cancelled:
                    self.cancelled.discard(task.id)
                    self._release(task, attempt)
                    ready.appendleft(attempt)
                    continue
                result = self._finish(task, attempt)
                if result.get("ok") or attempt.number >= self.options.shard_attempts:
                    yield result
                else:
                    attempt.number += 1
                    attempt.not_before = time.monotonic() + self._backoff(attempt.number)
                    delayed.append(attempt)
        finally:
            for _, attempt in self.running.values():
                self._forget(attempt)
            self._set_note("")

    def _submit(self, ready: deque[_Attempt]) -> deque[_Attempt]:
        """Submit ready attempts while fewer than ``limit`` calls are in flight and the
        job-wide host limits admit them (a refused one stays ready, in its place), those holding
        heavy hosts only while fewer of them than cores are in flight (so none of those while
        no worker is connected: a share is sized by the cores that can run shards)."""
        refused: deque[_Attempt] = deque()
        # Calls beyond the cores wait inside TaskVine for a worker: those holding units of a
        # heavy host would keep them from the shards that run.
        sharing = sum(self.shares.holds(a.spec.shard_id) for _, a in self.running.values())
        while ready and len(self.running) < self.limit:
            attempt = ready.popleft()
            holds = self.shares.holds(attempt.spec.shard_id)
            if holds and sharing >= self.cores:
                refused.append(attempt)
                continue
            spec = self.shares.admit(attempt.spec, self.cores)
            if spec is None:
                refused.append(attempt)
                continue
            call = self._function_call(attempt, spec)
            self.running[self.m.submit(call)] = (call, attempt)
            sharing += holds
        refused.extend(ready)
        return refused

    def _backoff(self, number: int) -> float:
        return min(MAX_BACKOFF_S, self.options.retry_backoff_s * 2 ** (number - 2))

    def _function_call(self, attempt: _Attempt, spec: ShardSpec) -> Any:
        """The call running ``spec``: the attempt's spec with its host shares."""
        from ndcctools.taskvine import FunctionCall

        attempt.staged = self.vine_dir / "incoming" / f"{spec.shard_id}.{attempt.number}"
        attempt.staged.parent.mkdir(parents=True, exist_ok=True)
        if spec.remote:
            # The worker uploads the shard's files to the output URL itself, in commit order:
            # nothing comes back through the manager but the result.
            remote = spec.to_dict()
            if not self.options.writes_in_place():
                remote["input_path"] = INPUT_NAME
            call = FunctionCall(LIBRARY_NAME, SHARD_FUNCTION, remote)
            if not self.options.writes_in_place():
                source = self.m.declare_file(spec.input_path, cache=False, peer_transfer=False)
                call.add_input(source, INPUT_NAME)
                attempt.files = [source]
        elif self.options.writes_in_place():
            # TaskVine may run a call again while a lost worker's library still finishes it:
            # each run writes into a new folder of its own under the attempt's folder.
            remote = {**spec.to_dict(), "output_dir": str(attempt.staged), UNIQUE_OUTPUT: True}
            call = FunctionCall(LIBRARY_NAME, SHARD_FUNCTION, remote)
        else:
            remote = {**spec.to_dict(), "input_path": INPUT_NAME, "output_dir": OUTPUT_NAME}
            call = FunctionCall(LIBRARY_NAME, SHARD_FUNCTION, remote)
            # Each input goes to one worker once: not worth offering from peers.
            source = self.m.declare_file(spec.input_path, cache=False, peer_transfer=False)
            staged = self.m.declare_file(str(attempt.staged), cache=False)
            call.add_input(source, INPUT_NAME)
            call.add_output(staged, OUTPUT_NAME)
            attempt.files = [source, staged]
        call.set_tag(spec.shard_id)
        # A worker that keeps handing a shard back without running it (e.g. its library keeps
        # failing) does not get it forever.
        call.set_max_forsaken(self.options.max_forsaken)
        return call

    def _finish(self, task: Any, attempt: _Attempt) -> ShardResult:
        """The shard's result, its files in place when it committed; frees the attempt."""
        shard_id = attempt.spec.shard_id
        try:
            output = _call_output(task)
            if not isinstance(output, dict):
                return _failed(shard_id, attempt, f"taskvine: {output}", str(task.addrport))
            result = ShardResult(**output, attempts=attempt.number, worker=task.addrport)
            if result.get("ok"):
                self.served = True
                self.last_start = time.monotonic()
                if attempt.spec.remote:  # uploaded by the worker; the runner checks the objects
                    return result
                written = attempt.staged
                if self.options.writes_in_place():
                    written = Path(result["tar_path"]).parent
                try:
                    result = commit_outputs(written, attempt.spec, result)
                except (OSError, ValueError, KeyError) as exc:
                    error = f"outputs not returned: {exc}"
                    return _failed(shard_id, attempt, error, result.get("host") or task.addrport)
            return result
        finally:
            self._release(task, attempt)

    def _release(self, task: Any, attempt: _Attempt) -> None:
        _drop_output_file(task)
        self._forget(attempt)

    def _forget(self, attempt: _Attempt) -> None:
        for f in attempt.files:
            self.m.undeclare_file(f)
        attempt.files = []
        if attempt.staged is not None:
            shutil.rmtree(attempt.staged, ignore_errors=True)

    def _watch(self) -> None:
        """Between waits: the library still installed, no call lost, workers present, the note
        up to date."""
        if not self.m.check_library_exists(LIBRARY_NAME):
            if not self.served:
                raise EngineError(self._library_failed())
            # It works on some worker: TaskVine counts the failures of all workers together,
            # and these were other workers' (e.g. a broken one joined).
            self.reinstalls += 1
            self._warn_reinstall()
            install_library(self.m, self.size)
        stats = self.m.stats
        self.cores = stats.total_cores
        self._requeue_lost(stats.tasks_waiting)
        metrics.set_workers_connected(stats.workers_connected)
        metrics.set_function_calls_in_flight(len(self.running))
        if not self.options.max_in_flight:
            self.limit = max(MIN_IN_FLIGHT, 2 * stats.total_cores)
        if self.workers is not None and len(self.workers.exited()) == len(self.workers.procs):
            raise EngineError(
                f"every local worker exited (status {self.workers.exited()}); see their logs "
                f"under {self.vine_dir / 'workers'}"
            )
        if stats.workers_connected == 0 or stats.tasks_running:
            self.last_start = time.monotonic()
        if stats.workers_connected == 0:
            note = (
                f"no worker connected to {manager_address(self.m)}; start one with: "
                f"{worker_command_hint(self.m, self.options)}"
            )
        elif time.monotonic() - self.last_start > NOT_STARTING_S:
            note = (
                f"{stats.workers_connected} worker(s) connected but no shard is running; "
                f"each library process needs {self.size.describe()}"
            )
        else:
            note = ""
        self._set_note(note)

    def _warn_reinstall(self) -> None:
        """A broken worker that stays connected makes this happen every few seconds: the log
        tail once, then a line at the 2nd, 4th, 8th, ... time."""
        n = self.reinstalls
        if n == 1:
            log.warning(
                "the library '%s' failed on a worker and TaskVine removed it; installing it "
                "again (%s)",
                LIBRARY_NAME,
                library_log_tail(self.m),
            )
        elif n & (n - 1) == 0:
            log.warning(
                "the library '%s' was removed and installed again %d times: a worker cannot "
                "start it (stop that worker or block its host; library logs in %s)",
                LIBRARY_NAME,
                n,
                self.m.library_logging_directory,
            )

    def _requeue_lost(self, queued: int) -> None:
        """Submit again the calls TaskVine lost. TaskVine 7.14 takes a call off its ready queue
        to dispatch it and ignores a failure to start the library for it there (the library
        failed moments ago, or has just been removed): the call stays READY, in no queue, and
        would never run. Calls are lost when more are READY than queued; which ones cannot be
        told, so every READY call is cancelled (each comes back, whatever TaskVine takes off its
        queue for a lost one) and submitted again."""
        ready = [task_id for task_id, (call, _) in self.running.items() if call.state == "READY"]
        if len(ready) <= queued:
            return
        log.warning("TaskVine lost %d call(s); submitting them again", len(ready) - queued)
        for task_id in ready:
            self.m.cancel_by_task_id(task_id)
        self.cancelled.update(ready)

    def _set_note(self, note: str) -> None:
        if note != self.note:
            self.note = note
            self.progress({"shard_id": None, "note": note})

    def _library_failed(self) -> str:
        return (
            f"the TaskVine library '{LIBRARY_NAME}' failed to start on the workers "
            f"({self.options.library_retries + 1} attempt(s)) and no shard ran. Most often the "
            "worker's python cannot import ldawt or one of its dependencies: install ldawt on "
            "the workers and start them with ldawt-worker (it puts its own python first on "
            f"vine_worker's PATH). The library's last output, from "
            f"{library_log_tail(self.m)}"
        )


def _failed(shard_id: str, attempt: _Attempt, error: str, worker: str) -> ShardResult:
    result = failure_result(shard_id, error, host=worker)
    result["attempts"] = attempt.number
    return result


def _call_output(task: Any) -> Any:
    """The call's return value, or why there is none."""
    if not task.successful():
        return f"{task.result} (exit code {task.exit_code})"
    try:
        return task.output
    except Exception as exc:  # ndcctools fails this way when the return value is unreadable
        return f"return value unreadable: {exc!r}"


def _drop_output_file(task: Any) -> None:
    """The call's pickled return value stays in the manager's staging folder otherwise."""
    Path(task.output_file.source()).unlink(missing_ok=True)
