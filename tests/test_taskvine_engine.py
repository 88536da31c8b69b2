"""The TaskVine engine for real: a real manager, real vine_worker processes on 127.0.0.1, the
ldawt library in "direct" mode, and a loopback origin."""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq
import pytest
from manager_support import (
    Origin,
    partial_files,
    run_manager,
    running_origin,
    start_manager,
    url_table,
)
from manager_support import wait_for as wait_until
from metrics_support import free_port, scrape
from shard_input import write_shard_input
from vine_helpers import log_tail, start_process, start_vine_worker, stop_process, venv_path_env

from ldawt.daemon.contract import FetchOptions, ShardResult, ShardSpec
from ldawt.manager.engines import EngineError
from ldawt.manager.engines.taskvine import TaskVineEngine
from ldawt.manager.engines.vine_options import VineOptions
from ldawt.manager.job import JOB_ENV, Job
from ldawt.manager.ledger import DONE, Ledger
from ldawt.manager.metrics import TARGETS_FILE

pytestmark = [pytest.mark.taskvine, pytest.mark.timeout(240)]

# Small libraries so that workers of 1000 MB memory and 2000 MB disk fit them.
SMALL = {"library_memory_mb": 300, "library_disk_mb": 300}


@pytest.fixture
def origin() -> Iterator[Origin]:
    # In the test's process: the engine waits for TaskVine without holding the GIL.
    with running_origin() as o:
        yield o


def make_specs(root: Path, port: int, shards: int, rows: int, **fetch: Any) -> list[ShardSpec]:
    """Shard inputs under root/job/shards (like a planned job), outputs in root/out."""
    shard_dir = root / "job" / "shards"
    shard_dir.mkdir(parents=True)
    options = FetchOptions(allow_private=True, retries=0, **fetch)
    specs = []
    for s in range(shards):
        first = s * rows
        numbers = range(first, first + rows)
        path = shard_dir / f"{s:05d}.parquet"
        write_shard_input(
            path,
            [f"http://127.0.0.1:{port}/img/{n}.jpg" for n in numbers],
            [f"c{n % 3}" for n in numbers],
            [str(n) for n in numbers],
            [n % 3 for n in numbers],
            first,
        )
        specs.append(ShardSpec(f"{s:05d}", str(path), str(root), fetch=options, deadline_s=120.0))
    return specs


def check_outputs(root: Path, specs: list[ShardSpec], results: list[ShardResult]) -> None:
    """Every shard committed once, every input row once in the manifests, tars complete."""
    assert sorted(r["shard_id"] for r in results) == sorted(s.shard_id for s in specs)
    assert all(r["ok"] for r in results), [r.get("error") for r in results if not r["ok"]]
    want_rows: list[int] = []
    got_rows: list[int] = []
    for spec in specs:
        want_rows += pq.read_table(spec.input_path, columns=["row"]).column(0).to_pylist()
        manifest = pq.read_table(root / f"{spec.shard_id}.manifest.parquet")
        got_rows += manifest.column("row").to_pylist()
        assert set(manifest.column("status").to_pylist()) == {"ok"}
        assert (root / f"{spec.shard_id}_stats.json").is_file()
        assert (root / f"{spec.shard_id}.tar").stat().st_size > 0
    assert sorted(got_rows) == sorted(want_rows)  # none lost, none twice
    # Nothing left in the staging folder of returned files.
    assert not any((root / "job" / "taskvine" / "incoming").glob("*"))


class Notes:
    """A progress callable that keeps the engine's notes; ``on_first`` runs at the first one."""

    def __init__(self, on_first: Callable[[], None] | None = None) -> None:
        self.notes: list[str] = []
        self.on_first = on_first

    def __call__(self, delta: dict[str, Any]) -> None:
        if delta.get("shard_id") is None:
            self.notes.append(delta["note"])
            if self.on_first is not None and len(self.notes) == 1:
                self.on_first()


class Workers:
    """``n`` one-core vine_workers for the manager on ``port``, stopped when the block ends;
    started by ``start()``, at once or later (e.g. once the engine says none is connected)."""

    def __init__(self, port: int, root: Path, n: int) -> None:
        self.port, self.root, self.n = port, root, n
        self.procs: list[Any] = []

    def start(self) -> None:
        self.procs += [start_vine_worker(self.port, self.root / f"w{i}") for i in range(self.n)]

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            stop_tree(p)


def test_twenty_shards_over_two_workers_reuse_warm_libraries(
    tmp_path: Path, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = make_specs(tmp_path, origin.port, shards=20, rows=25, concurrency=8)
    port = free_port()
    engine = TaskVineEngine(VineOptions(port=port, **SMALL))
    # Each library process takes a free port for its /metrics and reports it in results.
    monkeypatch.setenv("LDAWT_METRICS_PORT", "0")
    results = []
    scraped: dict[int, dict[str, float]] = {}
    with Workers(port, tmp_path, 2) as workers:
        notes = Notes(on_first=workers.start)
        for result in engine.run(specs, notes):
            results.append(result)
            if len(results) == len(specs):  # libraries still up: read their /metrics
                for r in results:
                    scraped.setdefault(r["pid"], scrape(r["metrics_port"]))

    check_outputs(tmp_path, specs, results)
    assert origin.hits.total() == 20 * 25
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        by_pid.setdefault(r["pid"], []).append(r)
    # One library process per worker served every call: the warm state outlived each call.
    assert len(by_pid) == 2
    for pid, served in by_pid.items():
        calls = sorted(r["library_calls"] for r in served)
        assert calls == list(range(1, len(served) + 1)), (pid, calls)
        assert len({r["metrics_port"] for r in served}) == 1
        assert scraped[pid]["ldawt_library_calls_total"] == len(served)
    # The pool stayed warm: after its first shard a process mostly reuses connections.
    later = [r for r in results if r["library_calls"] > 1]
    new_later = sum(r["connections_new"] for r in later)
    reused_later = sum(r["connections_reused"] for r in later)
    assert reused_later > 4 * new_later, (new_later, reused_later)
    # While no worker had connected yet, the progress line said so, with the command.
    assert any(f":{port}; start one with: ldawt-worker --manager" in n for n in notes.notes)


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def stop_tree(worker: Any) -> None:
    """Stop a vine_worker, then whatever it left running (its transfer-server child can outlive
    it, holding its manager connection)."""
    under = descendants(worker.pid)
    stop_process(worker)
    for p in under:
        with contextlib.suppress(psutil.Error):
            p.kill()


def kill_mid_shard(
    worker_pid: int, origin_port: int, whole_tree: bool, found: Any, deadline_s: float
) -> None:
    """Once the worker's library process is downloading a shard, kill -9 the worker (and, with
    ``whole_tree``, every process under it, like a machine that dies); put (library pid, shard
    id, pids under the worker) on ``found``. Runs in a process of its own: the manager's
    process only runs other threads between two vine_waits."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for lib in descendants(worker_pid):
            with contextlib.suppress(psutil.Error, OSError):
                busy = any(
                    c.raddr and c.raddr.port == origin_port for c in lib.net_connections("tcp")
                )
                # In direct mode the library works in the call's sandbox while the call runs.
                infile = Path(lib.cwd()) / "infile"
                if busy and infile.exists():
                    import cloudpickle  # the Debian 13 root has it; the host need not

                    event = cloudpickle.loads(infile.read_bytes())
                    under = descendants(worker_pid)
                    os.kill(worker_pid, signal.SIGKILL)
                    for p in under if whole_tree else []:
                        p.kill()
                    found.put((lib.pid, event["fn_args"][0]["shard_id"], [p.pid for p in under]))
                    return
        time.sleep(0.02)
    found.put(None)


@pytest.mark.parametrize(
    ("whole_tree", "shared_output"),
    [(True, False), (False, False), (False, True)],
    ids=["machine", "vine_worker_only", "vine_worker_only-shared_output"],
)
def test_killed_worker_shard_reruns_elsewhere(
    tmp_path: Path, whole_tree: bool, shared_output: bool
) -> None:
    """kill -9 of a worker mid-shard. Killing only the vine_worker process leaves its
    transfer-server child holding the connection open: the manager then notices through its
    keepalive (shortened here) and must not stay blocked reading from it. Its library process
    lives on and finishes the shard: with --shared-output it writes beside the rerun, into a
    folder of its own, so the committed files are the rerun's alone."""
    timeouts = {} if whole_tree else {"keepalive_s": 3, "stall_timeout_s": 5}
    with running_origin(delay_s=0.05) as origin:
        origin_port = origin.port
        # 8 shards of about 0.4 s (60 rows, 8 at a time, 50 ms each) on two 1-core workers.
        specs = make_specs(tmp_path, origin_port, shards=8, rows=60, concurrency=8)
        port = free_port()
        options = VineOptions(port=port, shared_output=shared_output, **SMALL, **timeouts)
        engine = TaskVineEngine(options)
        spawn = multiprocessing.get_context("spawn")
        found = spawn.Queue()
        with Workers(port, tmp_path, 2) as workers:
            workers.start()
            victim = workers.procs[0].pid
            killer = spawn.Process(
                target=kill_mid_shard, args=(victim, origin_port, whole_tree, found, 60.0)
            )
            killer.start()
            results = list(engine.run(specs, Notes()))
            killed = found.get(timeout=60)
            killer.join(timeout=10)

    assert killed is not None, "the worker was never seen mid-shard"
    library_pid, shard_id, under = killed
    for pid in under:  # what kill -9 of vine_worker alone leaves running (its transfer server)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    check_outputs(tmp_path, specs, results)
    # The interrupted shard was committed once, by the other worker's library.
    (rerun,) = [r for r in results if r["shard_id"] == shard_id]
    assert rerun["pid"] != library_pid
    assert workers.procs[0].returncode == -signal.SIGKILL


REFUSED = "wrong password for manager"  # vine_worker's words


def test_worker_with_wrong_password_is_refused(tmp_path: Path, origin: Origin) -> None:
    specs = make_specs(tmp_path, origin.port, shards=2, rows=5)
    (tmp_path / "right").write_text("correct horse battery staple\n")
    (tmp_path / "wrong").write_text("not the password\n")
    port = free_port()
    engine = TaskVineEngine(VineOptions(port=port, password_file=str(tmp_path / "right"), **SMALL))
    notes = Notes()
    results: list[dict[str, Any]] = []
    bad = start_vine_worker(port, tmp_path / "bad", f"--password={tmp_path / 'wrong'}")
    good: list[Any] = []

    def start_good_worker_after_refusal() -> None:
        deadline = time.monotonic() + 60
        while (
            time.monotonic() < deadline
            and "password" not in log_tail(tmp_path / "bad" / "worker.log", 400).lower()
        ):
            time.sleep(0.2)
        good.append(start_vine_worker(port, tmp_path / "good", f"--password={tmp_path / 'right'}"))

    helper = threading.Thread(target=start_good_worker_after_refusal)
    helper.start()
    try:
        results = list(engine.run(specs, notes))
    finally:
        helper.join()
        stop_tree(bad)
        for p in good:
            stop_tree(p)
    bad_log = log_tail(tmp_path / "bad" / "worker.log", 400)
    assert REFUSED in bad_log, bad_log
    check_outputs(tmp_path, specs, results)
    good_log = log_tail(tmp_path / "good" / "worker.log", 400)
    assert "password" not in good_log, good_log
    assert notes.notes[0].startswith("no worker connected")


def test_tls_with_a_password(tmp_path: Path, origin: Origin) -> None:
    """--ssl-key/--ssl-cert: a worker with --ssl and the password is served; one without TLS
    fails the exchange (vine_worker reports it as a wrong password) and gets nothing."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    openssl = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subprocess.run(
        [*openssl, "-batch", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    (tmp_path / "password").write_text("correct horse battery staple\n")
    specs = make_specs(tmp_path, origin.port, shards=2, rows=5)
    port = free_port()
    options = VineOptions(
        port=port,
        password_file=str(tmp_path / "password"),
        ssl_key=str(key),
        ssl_cert=str(cert),
        **SMALL,
    )
    password = f"--password={tmp_path / 'password'}"
    workers: dict[str, Any] = {}

    def plain_then_tls() -> None:
        workers["plain"] = start_vine_worker(port, tmp_path / "plain", password)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and REFUSED not in log_tail(
            tmp_path / "plain" / "worker.log"
        ):
            time.sleep(0.1)
        workers["tls"] = start_vine_worker(port, tmp_path / "tls", password, "--ssl")

    helper = threading.Thread(target=plain_then_tls)
    results = []
    try:
        for result in TaskVineEngine(options).run(specs, Notes(on_first=helper.start)):
            results.append(result)
            served_by_tls = {p.pid for p in descendants(workers["tls"].pid)}
    finally:
        helper.join()
        for w in workers.values():
            stop_tree(w)
    check_outputs(tmp_path, specs, results)
    # Every shard ran in the TLS worker's library; the plain one never got past the handshake.
    assert {r["pid"] for r in results} <= served_by_tls
    assert REFUSED in log_tail(tmp_path / "plain" / "worker.log")


def start_worker_without_ldawt(port: int, workdir: Path) -> Any:
    """A vine_worker whose ``python`` has every dependency of the library but not ldawt: the
    base interpreter with this venv's packages on PYTHONPATH (the editable install of ldawt
    lives in a .pth file, which only site directories read)."""
    bindir = workdir / "bin"
    bindir.mkdir(parents=True)
    site_packages = sysconfig.get_paths()["purelib"]
    base = Path(sys.base_prefix) / "bin" / "python3"
    (bindir / "python").write_text(f'#!/bin/sh\nPYTHONPATH={site_packages} exec {base} "$@"\n')
    (bindir / "python").chmod(0o755)
    env = venv_path_env()
    env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
    argv = ["vine_worker", "--cores=1", "--memory=1000", "--disk=2000", "--timeout=120"]
    argv += [f"--workspace={workdir / 'ws'}", "--parent-death", "127.0.0.1", str(port)]
    return start_process(argv, workdir / "worker.log", workdir, env=env)


def test_library_that_cannot_import_ldawt_is_a_clear_error(tmp_path: Path, origin: Origin) -> None:
    """The library dies at start-up (unpickling its functions) on the only worker: the run
    stops with that error instead of waiting forever."""
    specs = make_specs(tmp_path, origin.port, shards=3, rows=5)
    port = free_port()
    engine = TaskVineEngine(VineOptions(port=port, library_retries=0, **SMALL))
    worker = start_worker_without_ldawt(port, tmp_path / "w")
    started = time.monotonic()
    try:
        with pytest.raises(EngineError) as failure:
            list(engine.run(specs, Notes()))
    finally:
        stop_tree(worker)
    message = str(failure.value)
    assert "No module named 'ldawt'" in message, message
    assert "install ldawt on the workers" in message
    assert time.monotonic() - started < 60


def test_library_removed_after_serving_is_installed_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broken worker joins mid-job: its library failures make TaskVine remove the library
    everywhere and lose the call it was dispatching; as shards had succeeded, the engine
    installs the library again, submits the lost call again, and the job completes."""
    broken: list[Any] = []

    class BrokenLeaves(logging.Handler):
        """Once the lost call is submitted again, the broken worker leaves: it could otherwise
        be handed the last calls again and again, some 8 s each, and the test would be slow."""

        def emit(self, record: logging.LogRecord) -> None:
            if "submitting them again" in record.getMessage():
                for w in broken:
                    stop_tree(w)

    handler = BrokenLeaves()
    logging.getLogger("ldawt.manager.engines.taskvine").addHandler(handler)
    # About 0.5 s a shard: the good worker is still busy when TaskVine gives a call to the
    # broken one again (5 s after its library failed), which removes the library.
    try:
        with running_origin(delay_s=0.1) as origin:
            specs = make_specs(tmp_path, origin.port, shards=30, rows=40, concurrency=8)
            port = free_port()
            engine = TaskVineEngine(VineOptions(port=port, library_retries=0, **SMALL))
            results: list[dict[str, Any]] = []
            with Workers(port, tmp_path, 1) as workers:
                workers.start()
                for result in engine.run(specs, Notes()):
                    results.append(result)
                    if not broken:
                        broken.append(start_worker_without_ldawt(port, tmp_path / "broken"))
    finally:
        logging.getLogger("ldawt.manager.engines.taskvine").removeHandler(handler)
        for w in broken:
            stop_tree(w)
    check_outputs(tmp_path, specs, results)
    assert "installing it again" in caplog.text
    assert "submitting them again" in caplog.text


def test_manager_killed_mid_job_resumes_from_the_ledger(tmp_path: Path) -> None:
    """kill -9 of a real `ldawt-manager submit --engine taskvine --local-workers 2` after a few
    shards committed, then the same command again: it resumes and ends with every row once."""
    with running_origin(delay_s=0.02) as origin:
        table = url_table(tmp_path / "urls.parquet", [origin.url("img", i) for i in range(2000)])
        out = tmp_path / "out"
        args = [
            "submit",
            table,
            "--out",
            out,
            "--allow-private",
            "--shard-size",
            "50",
            "--concurrency",
            "8",
            "--engine",
            "taskvine",
            "--local-workers",
            "2",
            "--library-memory-mb",
            "300",
            "--library-disk-mb",
            "300",
        ]
        log = tmp_path / "killed.log"
        process = start_manager(*args, log=log)
        wait_until(lambda: len(list(out.glob("*_stats.json"))) >= 3, "three shards", process)
        # The manager lists its libraries' /metrics for Prometheus: real, live endpoints.
        targets = out / "job" / TARGETS_FILE
        wait_until(targets.exists, "the Prometheus targets file", process)
        for target in json.loads(targets.read_text())[0]["targets"]:
            host, port = target.rsplit(":", 1)
            assert host == socket.gethostname()
            assert scrape(int(port))["ldawt_library_calls_total"] >= 1
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        committed = {p.name: p.stat().st_mtime_ns for p in out.glob("*_stats.json")}
        assert len(committed) < 40, "the job ended before the kill"

        final = run_manager(*args, timeout=60)
        assert final.returncode == 0, final.stderr + log.read_text()
    # Until its local workers connected, the progress line said there was none.
    assert "no worker connected to" in log.read_text() + final.stderr

    rows = []
    for manifest in sorted(out.glob("*.manifest.parquet")):
        rows += pq.read_table(manifest, columns=["row"]).column(0).to_pylist()
    assert sorted(rows) == list(range(2000))
    assert len(list(out.glob("*.tar"))) == 40
    for name, mtime in committed.items():  # committed before the kill: not redone
        assert (out / name).stat().st_mtime_ns == mtime
    assert not partial_files(out)
    assert not any((out / "job" / "taskvine" / "incoming").glob("*"))
    assert json.loads((out / "job" / TARGETS_FILE).read_text()) == []  # the run is over
    with Ledger(Job(out).ledger_path) as ledger:
        assert {s.state for s in ledger.shards()} == {DONE}
    # The killed manager's local workers were stopped by the rerun, the rerun's by itself.
    assert not job_processes(out)


def job_processes(out: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(JOB_ENV) == str(out.resolve()):
                found.append(process)
    return found
