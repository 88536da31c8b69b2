"""ldawt-worker against a real TaskVine manager (inside the Debian 13 root)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from vine_helpers import LOCALHOST, log_tail, start_process, stop_process, vine_manager, wait_for

pytestmark = pytest.mark.taskvine

LIB = "ldawt-worker-test"
VENV_BIN = str(Path(sys.executable).parent)
SCRIPT = os.path.join(VENV_BIN, "ldawt-worker")
# Deliberately without the venv: ldawt-worker itself must put its interpreter first on PATH.
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


def where_am_i(x: int) -> dict:
    import os
    import sys

    import ldawt.daemon.worker.cli  # noqa: F401 - importable only with ldawt-worker's interpreter

    return {
        "x": x,
        "prefix": sys.prefix,
        "metrics_port": os.environ.get("LDAWT_METRICS_PORT"),
        "workspace": os.environ.get("LDAWT_WORKSPACE"),
    }


@pytest.fixture
def by_value() -> Iterator[None]:
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@contextlib.contextmanager
def ldawt_worker(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Any]:
    """A real ``ldawt-worker`` process; it and anything it started are gone afterwards."""
    base = {"PATH": SYSTEM_PATH, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    proc = start_process(
        [SCRIPT, *args], tmp_path / "ldawt-worker.log", tmp_path, env={**base, **(env or {})}
    )
    try:
        yield proc
    except BaseException:
        print(log_tail(tmp_path / "ldawt-worker.log"))
        raise
    finally:
        kids = []
        with contextlib.suppress(psutil.NoSuchProcess):
            kids = psutil.Process(proc.pid).children(recursive=True)
        stop_process(proc)
        for k in kids:
            with contextlib.suppress(psutil.NoSuchProcess):
                k.kill()


def wait_exit(proc: subprocess.Popen, manager: Any, timeout_s: float) -> int | None:
    """Wait for ``proc`` to exit while the manager keeps serving its connections."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            return proc.returncode
        manager.wait(1)
    return proc.poll()


def wait_connected(manager: Any, n: int, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        manager.wait(1)
        if manager.stats.workers_connected >= n:
            return True
    return False


def worker_args(tmp_path: Path, port: int, *more: str) -> list[str]:
    return [
        "--manager",
        f"{LOCALHOST}:{port}",
        "--workspace",
        str(tmp_path / "ws"),
        "--cores",
        "1",
        "--memory-mb",
        "1000",
        "--disk-mb",
        "2000",
        "--connect-timeout",
        "120",
        *more,
    ]


def test_serves_a_function_call_then_stops_cleanly_on_sigterm(
    tmp_path: Path, by_value: None
) -> None:
    from ndcctools.taskvine import FunctionCall

    with vine_manager(tmp_path) as m:
        lib = m.create_library_from_functions(LIB, where_am_i, exec_mode="direct", add_env=False)
        lib.set_cores(1)
        m.install_library(lib)
        for i in range(3):
            m.submit(FunctionCall(LIB, "where_am_i", i))
        args = worker_args(tmp_path, m.port, "--metrics-port", "9177")
        with ldawt_worker(tmp_path, *args) as proc:

            def gone() -> str | None:
                return None if proc.poll() is None else f"ldawt-worker exited {proc.returncode}"

            tasks = wait_for(m, 3, deadline_s=120, alive=gone)
            for t in tasks:
                assert t.successful(), f"result={t.result} output={t.output!r}"
            outputs = sorted((t.output for t in tasks), key=lambda o: o["x"])
            assert [o["x"] for o in outputs] == [0, 1, 2]
            assert {o["prefix"] for o in outputs} == {sys.prefix}
            assert {o["metrics_port"] for o in outputs} == {"9177"}
            assert {o["workspace"] for o in outputs} == {str(tmp_path / "ws")}

            vine = [p for p in psutil.Process(proc.pid).children() if p.name() == "vine_worker"]
            assert len(vine) == 1
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert wait_exit(proc, m, timeout_s=30) == 0
            assert time.monotonic() - t0 < 30
            assert not vine[0].is_running() or vine[0].status() == psutil.STATUS_ZOMBIE
            assert (tmp_path / "ws").is_dir(), "the workspace itself is kept"
            assert not (tmp_path / "ws" / "vine").exists(), "vine_worker cleans its own part"


def test_wrong_password_is_refused_and_the_right_one_accepted(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.pw", tmp_path / "bad.pw"
    good.write_text("correct horse\n")
    bad.write_text("wrong horse\n")
    with vine_manager(tmp_path, password_file=good) as m:
        with ldawt_worker(
            tmp_path, *worker_args(tmp_path, m.port), env={"LDAWT_PASSWORD_FILE": str(bad)}
        ) as proc:
            assert not wait_connected(m, 1, timeout_s=8)
            assert proc.poll() is None, "it keeps retrying, as a service should"
            assert "wrong password" in (tmp_path / "ldawt-worker.log").read_text()
            proc.send_signal(signal.SIGTERM)
            assert wait_exit(proc, m, timeout_s=30) == 0

        right = tmp_path / "right"
        right.mkdir()
        with ldawt_worker(
            right, *worker_args(right, m.port), env={"LDAWT_PASSWORD_FILE": str(good)}
        ) as proc:
            assert wait_connected(m, 1, timeout_s=30), log_tail(right / "ldawt-worker.log")
            proc.send_signal(signal.SIGTERM)
            assert wait_exit(proc, m, timeout_s=30) == 0
