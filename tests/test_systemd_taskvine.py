"""The worker unit's ExecStart, run the way systemd would run it, against a real manager
(inside the Debian 13 root, where /opt/ldawt/venv is the root's venv).

systemd is not running here, so this test plays its part: the environment file is applied, the
unit's ExecStart is run verbatim with systemd's default PATH, STATE_DIRECTORY and
CREDENTIALS_DIRECTORY (with the password credential), and SIGTERM (KillSignal=) must end it
within TimeoutStopSec with status 0.

TODO(engine): once the TaskVine engine lands, serve a real shard (run_shard against a local
origin) here instead of the trivial FunctionCall.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from vine_helpers import LOCALHOST, log_tail, start_process, stop_process, vine_manager, wait_for

from ldawt.daemon import service

pytestmark = pytest.mark.taskvine

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "ldawt-worker.service"
ENV_EXAMPLE = REPO / "systemd" / "worker.env.example"
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
LIB = "ldawt-unit-test"


def echo_env(x: int) -> dict:
    import os

    import ldawt.daemon.worker  # noqa: F401 - only ldawt's own interpreter has it

    return {"x": x, "cwd": os.getcwd(), "metrics": os.environ.get("LDAWT_METRICS_PORT")}


def unit_value(text: str, key: str) -> str:
    values = [ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith(key + "=")]
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


@pytest.fixture
def by_value() -> Iterator[None]:
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_unit_execstart_with_example_env_serves_and_stops_on_sigterm(
    tmp_path: Path, by_value: None
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
    (creds / service.PASSWORD_CREDENTIAL).write_text("unit test password\n")
    env = {
        "PATH": SYSTEMD_PATH,
        "LANG": "C.UTF-8",
        "HOME": "/",
        "STATE_DIRECTORY": str(state),
        "CREDENTIALS_DIRECTORY": str(creds),
        **service.read_env_file(ENV_EXAMPLE.read_text()),
    }

    with vine_manager(tmp_path, password_file=creds / service.PASSWORD_CREDENTIAL) as m:
        # The one deviation from the example: the manager's real (free) port.
        env["LDAWT_MANAGER"] = f"{LOCALHOST}:{m.port}"
        lib = m.create_library_from_functions(LIB, echo_env, exec_mode="direct", add_env=False)
        lib.set_cores(1)
        m.install_library(lib)
        for i in range(2):
            m.submit(FunctionCall(LIB, "echo_env", i))
        proc = start_process(argv, tmp_path / "service.log", state, env=env)
        try:

            def gone() -> str | None:
                return None if proc.poll() is None else f"service exited {proc.returncode}"

            tasks = wait_for(m, 2, deadline_s=120, alive=gone)
            for t in tasks:
                assert t.successful(), f"result={t.result} output={t.output!r}"
            assert sorted(t.output["x"] for t in tasks) == [0, 1]
            assert {t.output["metrics"] for t in tasks} == {env["LDAWT_METRICS_PORT"]}
            assert all(t.output["cwd"].startswith(str(state / "vine")) for t in tasks)

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
