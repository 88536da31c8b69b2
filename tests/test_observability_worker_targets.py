"""The Prometheus targets file the manager's result loop writes (OUT/job/prometheus-targets.json)
from the daemon endpoints shard results name: unit checks of when the file is written, then a
real ``submit`` whose results name real /metrics endpoints on 127.0.0.1 (this process's daemon
endpoint and a real library process), followed by a real Prometheus through file discovery."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from manager_support import partial_files, running_origin, url_table
from metrics_support import LOOPBACK, scrape

from ldawt.daemon import metrics as daemon_metrics
from ldawt.daemon.contract import failure_result
from ldawt.manager import cli, metrics
from ldawt.manager.metrics import TARGETS_FILE, WorkerTargets, metrics_target

try:  # tests/ may be a package or a plain folder on sys.path
    from . import prometheus_server as prom
except ImportError:
    import prometheus_server as prom

LABELS = {"ldawt_job": "/data/shards", "ldawt_manager": "manager-host"}


def library_result(shard_id: str, host: str | None, port: Any) -> dict[str, Any]:
    """A shard result as a TaskVine library returns it (``run_shard``'s plus the library's)."""
    return {
        "shard_id": shard_id,
        "ok": True,
        "error": None,
        "rows": 5,
        "counts": {"ok": 5},
        "host": host,
        "pid": 4321,
        "library_calls": 1,
        "metrics_port": port,
    }


def listed(path: Path) -> tuple[list[str], dict[str, str]]:
    """The targets and labels of a targets file of at most one group."""
    groups = json.loads(path.read_text())
    if not groups:
        return [], {}
    [group] = groups
    return group["targets"], group["labels"]


def identity(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_ino, info.st_mtime_ns


# --- when the file is written -------------------------------------------------------------------


def test_results_without_an_endpoint_add_nothing(tmp_path: Path) -> None:
    path = tmp_path / "job" / TARGETS_FILE
    targets = WorkerTargets(path, LABELS)
    local = {k: v for k, v in library_result("1", "w1", 9401).items() if k != "metrics_port"}
    nameless = [
        local,  # the local engine's results carry no port
        failure_result("2", "worker lost"),  # nor do failures that never reached a library
        failure_result("3", "outputs not returned", host="192.0.2.1:9123"),
        library_result("4", "w1", None),  # the library's metrics server did not start
        library_result("5", "w1", 0),
        library_result("6", "w1", 70000),
        library_result("7", "w1", True),
        library_result("8", "w1", "9401"),
        library_result("9", "", 9401),
        library_result("10", None, 9401),
        {},
    ]
    for result in nameless:
        assert metrics_target(result) is None
        assert not targets.add(result)
    targets.close()
    assert not path.exists()  # no file at all until some result names an endpoint
    assert not path.parent.exists()


def test_the_file_is_rewritten_only_when_the_set_changes(tmp_path: Path) -> None:
    path = tmp_path / "job" / TARGETS_FILE
    targets = WorkerTargets(path, LABELS)
    assert targets.add(library_result("00000", "w1", 9401))
    assert listed(path) == (["w1:9401"], LABELS)
    before = identity(path)
    # Every further result of the same library, and endpoint-less ones, leave the file alone.
    for n in range(1, 50):
        assert not targets.add(library_result(f"{n:05d}", "w1", 9401))
        assert not targets.add(failure_result(f"{n:05d}", "worker lost"))
    assert identity(path) == before
    # A new endpoint: the file is replaced as a whole (a new inode), never edited in place.
    assert targets.add(library_result("00050", "w2", 9402))
    assert identity(path)[0] != before[0]
    assert listed(path) == (["w1:9401", "w2:9402"], LABELS)
    assert targets.add(library_result("00051", "fe80::1", 9401))  # an IPv6 address, bracketed
    assert listed(path)[0] == ["[fe80::1]:9401", "w1:9401", "w2:9402"]
    assert not partial_files(tmp_path)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)  # Prometheus runs as its own user
    # The run ends, its libraries with it: nothing left to scrape.
    targets.close()
    assert json.loads(path.read_text()) == []
    emptied = identity(path)
    targets.close()
    assert identity(path) == emptied


def test_an_earlier_runs_targets_are_replaced(tmp_path: Path) -> None:
    """A manager killed mid-run leaves its libraries' endpoints listed; they died with it."""
    path = tmp_path / TARGETS_FILE
    metrics.write_worker_targets(path, ["w1:9401", "w1:9402"], LABELS)
    targets = WorkerTargets(path, LABELS)
    assert json.loads(path.read_text()) == []
    emptied = identity(path)
    WorkerTargets(path, LABELS).close()  # already empty: not written again
    assert identity(path) == emptied
    targets.add(library_result("00000", "w3", 9401))
    assert listed(path) == (["w3:9401"], LABELS)
    path.write_text("{ half a fi")  # e.g. edited by hand: replaced too
    WorkerTargets(path, LABELS)
    assert json.loads(path.read_text()) == []


def test_a_file_that_cannot_be_written_does_not_stop_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "job").write_text("a file where the job folder should be")
    path = tmp_path / "job" / TARGETS_FILE
    targets = WorkerTargets(path, LABELS)
    with caplog.at_level(logging.WARNING, logger="ldawt.manager.metrics"):
        assert not targets.add(library_result("00000", "w1", 9401))
        targets.close()
    assert "could not write the Prometheus targets file" in caplog.text
    assert targets.targets == set()


# --- the result loop, followed by a real Prometheus ---------------------------------------------


LIBRARY_PROCESS = """
import os, sys
from ldawt.daemon import library
library.library_context()
print(library._state["metrics_port"], flush=True)
sys.stdin.read()
"""


@pytest.fixture
def library_port(tmp_path: Path) -> Iterator[int]:
    """The /metrics port of a real library process (``library_context``) on 127.0.0.1."""
    env = {**os.environ, "LDAWT_METRICS_ADDRESS": LOOPBACK, "LDAWT_METRICS_PORT": "0"}
    with (tmp_path / "library.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", LIBRARY_PROCESS],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            text=True,
        )
    try:
        assert process.stdout is not None
        line = prom.wait_for(process.stdout.readline, 30, "the library process's port")
        yield int(line)
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def daemon_port() -> Iterator[int]:
    daemon_metrics.stop_metrics_server()
    yield daemon_metrics.start_metrics_server(LOOPBACK, 0, 1)
    daemon_metrics.stop_metrics_server()


class AsLibraries:
    """Wraps the local engine the command line made, so its (real) results name a daemon
    endpoint as a TaskVine library's do: result ``i`` gets ``host`` 127.0.0.1 and
    ``ports[i]`` (None: left as the local engine made it, without a port). Before handing over
    result ``i`` (the loop has recorded the ones before), ``check(i)`` runs; what it raises is
    kept in ``errors`` rather than failing the job."""

    def __init__(self, engine: Any, ports: list[int | None], check: Any) -> None:
        self.engine, self.ports, self.check = engine, ports, check
        self.errors: list[BaseException] = []

    def describe(self) -> str:
        return self.engine.describe()

    def run(self, specs: list[Any], progress: Any, shares: Any) -> Iterator[Any]:
        results = self.engine.run(specs, progress, shares)
        try:
            for index, result in enumerate(results):
                try:
                    self.check(index)
                except Exception as exc:
                    self.errors.append(exc)
                if self.ports[index] is not None:
                    result.update(host=LOOPBACK, metrics_port=self.ports[index])
                yield result
        finally:
            results.close()


class Reader(threading.Thread):
    """Reads the targets file over and over, as Prometheus would, while the job runs: every
    read must be a whole JSON document."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.reads = 0
        self.torn: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            time.sleep(0.001)
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                continue
            self.reads += 1
            try:
                json.loads(text)
            except ValueError:
                self.torn.append(text)


@pytest.mark.prometheus
@pytest.mark.timeout(60)
@pytest.mark.skipif(prom.PROMETHEUS is None, reason="needs prometheus (Debian package)")
def test_prometheus_follows_the_targets_the_result_loop_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, daemon_port: int, library_port: int
) -> None:
    out = tmp_path / "out"
    path = out / "job" / TARGETS_FILE
    first, second = f"{LOOPBACK}:{daemon_port}", f"{LOOPBACK}:{library_port}"
    # Result 0 as the local engine made it; 1-2 from this process's daemon; 3-5 from the
    # library process (4-5 also from the daemon, already listed).
    ports: list[int | None] = [None, daemon_port, daemon_port, library_port, daemon_port, None]
    seen: dict[str, Any] = {}

    def up() -> dict[str, float]:
        return server.vector('up{job="ldawt-worker"}', "instance")

    def check(index: int) -> None:
        if index == 1:  # a result without a port wrote nothing
            seen["file after a portless result"] = path.exists()
        elif index == 2:
            seen["listed after the first endpoint"] = listed(path)
            seen["first identity"] = identity(path)
            prom.wait_for(lambda: up() == {first: 1.0}, 20, "Prometheus to scrape the 1st target")
            labels = server.query('up{job="ldawt-worker"}')[0]["metric"]
            seen["scraped labels"] = {k: labels[k] for k in ("ldawt_job", "ldawt_manager")}
        elif index == 3:
            seen["same endpoint again"] = identity(path)
        elif index == 4:
            seen["listed after the second endpoint"] = listed(path)[0]
            seen["second identity"] = identity(path)
            want = {first: 1.0, second: 1.0}
            prom.wait_for(lambda: up() == want, 20, "Prometheus to scrape the 2nd target too")
            seen["both up"] = True
        elif index == 5:
            seen["no change since"] = identity(path)

    engines: list[AsLibraries] = []
    make_engine = cli.make_engine

    def wrapped_engine(args: Any) -> AsLibraries:
        engines.append(AsLibraries(make_engine(args), ports, check))
        return engines[-1]

    monkeypatch.setattr(cli, "make_engine", wrapped_engine)
    reader = Reader(path)
    jobs: dict[str, Any] = {"ldawt-worker": path}
    with (
        running_origin() as origin,
        prom.running_prometheus(tmp_path / "prometheus", jobs) as server,
    ):
        table = url_table(tmp_path / "in.parquet", [origin.url("img", i) for i in range(30)])
        reader.start()
        try:
            status = cli.main(
                [
                    "submit",
                    str(table),
                    "--out",
                    str(out),
                    "--allow-private",
                    "--shard-size",
                    "5",
                    "--engine",
                    "local",
                    "--workers",
                    "1",
                    "--shard-retries",
                    "0",
                ]
            )
        finally:
            reader.stop.set()
            reader.join(timeout=10)
        # The run is over: the file is empty and Prometheus stops scraping.
        assert json.loads(path.read_text()) == []

        def active() -> list[dict[str, Any]]:
            return server.api("targets", state="active")["activeTargets"]

        prom.wait_for(lambda: not active(), 20, "the targets to be dropped after the run")
    assert status == 0
    [engine] = engines
    assert not engine.errors, engine.errors
    job_labels = {"ldawt_job": str(out.resolve()), "ldawt_manager": socket.gethostname()}
    assert seen["file after a portless result"] is False
    assert seen["listed after the first endpoint"] == ([first], job_labels)
    assert seen["scraped labels"] == job_labels
    assert seen["same endpoint again"] == seen["first identity"]
    assert seen["listed after the second endpoint"] == sorted([first, second])
    assert seen["second identity"][0] != seen["first identity"][0]  # replaced by a rename
    assert seen["both up"]
    assert seen["no change since"] == seen["second identity"]
    assert reader.reads > 0 and not reader.torn
    assert not partial_files(out)
    assert scrape(library_port)["ldawt_library_start_time_seconds"] > 0
