"""The worker unit's ExecStart, run the way systemd would run it, against a real manager
(inside the Debian 13 root, where /opt/ldawt/venv is the root's venv).

systemd is not running here, so this test plays its part: the environment file is applied, the
unit's ExecStart is run verbatim with systemd's default PATH, STATE_DIRECTORY and
CREDENTIALS_DIRECTORY (with the password credential), and SIGTERM (KillSignal=) must end it
within TimeoutStopSec with status 0. The worker serves a real shard through ldawt's own library
(the one the TaskVine engine installs) against a loopback origin.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import tarfile
import time
from pathlib import Path

import psutil
import pytest
from manager_support import Origin, running_origin
from shard_input import write_shard_input
from systemd_support import read_env_file
from vine_helpers import LOCALHOST, log_tail, start_process, stop_process, vine_manager, wait_for

from ldawt.daemon import library
from ldawt.daemon.worker.config import PASSWORD_CREDENTIAL
from ldawt.manager.engines.vine_setup import (
    LIBRARY_NAME,
    SHARD_FUNCTION,
    LibrarySize,
    install_library,
)

pytestmark = pytest.mark.taskvine

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "ldawt-worker.service"
ENV_EXAMPLE = REPO / "systemd" / "worker.env.example"
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
ROWS = 20


def unit_value(text: str, key: str) -> str:
    values = [ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith(key + "=")]
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


def shard_spec(tmp_path: Path, origin: Origin) -> dict:
    input_path = tmp_path / "shard.parquet"
    urls = [origin.url("img", i) for i in range(ROWS)]
    write_shard_input(input_path, urls, ["bird"] * ROWS, [f"k{i}" for i in range(ROWS)])
    return {
        "shard_id": "00000",
        "input_path": str(input_path),
        "output_dir": str(tmp_path / "out"),
        "fetch": {"allow_private": True},
    }


def test_unit_execstart_with_example_env_serves_a_shard_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    from ndcctools.taskvine import FunctionCall

    unit = UNIT.read_text()
    exec_start = unit_value(unit, "ExecStart")
    assert "$" not in exec_start and "%" not in exec_start, "no expansion to emulate"
    argv = shlex.split(exec_start)
    assert os.access(argv[0], os.X_OK), f"{argv[0]} (the root links /opt/ldawt/venv)"
    stop_timeout = float(unit_value(unit, "TimeoutStopSec"))
    assert unit_value(unit, "KillSignal") == "SIGTERM"

    # What systemd gives the service: StateDirectory=, the credential, the environment file.
    state = tmp_path / "var-lib-ldawt-worker"
    state.mkdir(mode=0o700)
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / PASSWORD_CREDENTIAL).write_text("unit test password\n")
    env = {
        "PATH": SYSTEMD_PATH,
        "LANG": "C.UTF-8",
        "HOME": "/",
        "STATE_DIRECTORY": str(state),
        "CREDENTIALS_DIRECTORY": str(creds),
        **read_env_file(ENV_EXAMPLE.read_text()),
    }

    with (
        running_origin() as origin,
        vine_manager(tmp_path, password_file=creds / PASSWORD_CREDENTIAL) as m,
    ):
        # The one deviation from the example: the manager's real (free) port.
        env["LDAWT_MANAGER"] = f"{LOCALHOST}:{m.port}"
        install_library(m, LibrarySize(cores=1, memory_mb=1000, disk_mb=1000))
        spec = shard_spec(tmp_path, origin)
        m.submit(FunctionCall(LIBRARY_NAME, SHARD_FUNCTION, spec))
        proc = start_process(argv, tmp_path / "service.log", state, env=env)
        try:

            def gone() -> str | None:
                return None if proc.poll() is None else f"service exited {proc.returncode}"

            (task,) = wait_for(m, 1, deadline_s=120, alive=gone)
            assert task.successful(), f"result={task.result} output={task.output!r}"
            result = task.output
            assert result["ok"] and result["counts"] == {"ok": ROWS}, result
            with tarfile.open(result["tar_path"]) as tar:
                assert len(tar.getnames()) == ROWS
            # the env file's metrics port reached the library (the next free one if taken)
            first = int(env["LDAWT_METRICS_PORT"])
            assert first <= result["metrics_port"] < first + library.METRICS_PORT_RANGE
            assert (state / "vine").is_dir()  # the workspace is systemd's StateDirectory

            children = psutil.Process(proc.pid).children(recursive=True)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            while proc.poll() is None and time.monotonic() - t0 < stop_timeout:
                m.wait(1)
            elapsed = time.monotonic() - t0
            assert proc.returncode == 0, f"status {proc.returncode} after {elapsed:.1f} s"
            for c in children:  # vine_worker and its library process: gone too
                with contextlib.suppress(psutil.NoSuchProcess):
                    c.wait(timeout=5)
        except BaseException:
            print(log_tail(tmp_path / "service.log"))
            raise
        finally:
            stop_process(proc)
