"""Real TaskVine end to end: a real manager, a real vine_worker, a serverless library in
"direct" mode whose context is set up once and shared by every FunctionCall."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from vine_helpers import log_tail, start_vine_worker, stop_process, vine_manager, wait_for

pytestmark = pytest.mark.taskvine

LIB = "ldawt-smoke"


def smoke_context() -> dict:
    import os
    import uuid

    # Returned names become globals of the library process (load_variable_from_library).
    return {"smoke_state": {"token": uuid.uuid4().hex, "pid": os.getpid(), "calls": 0}}


def smoke_square(x: int) -> dict:
    import os

    from ndcctools.taskvine.utils import load_variable_from_library

    state = load_variable_from_library("smoke_state")
    state["calls"] += 1
    return {
        "square": x * x,
        "token": state["token"],
        "context_pid": state["pid"],
        "pid": os.getpid(),
        "calls": state["calls"],
    }


@pytest.fixture
def by_value() -> None:
    # Functions of a test module would otherwise be pickled by reference, and the library
    # process cannot import this module.
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_library_context_is_shared_across_function_calls(tmp_path: Path, by_value: None) -> None:
    from ndcctools.taskvine import FunctionCall

    n = 6
    with vine_manager(tmp_path) as m:
        lib = m.create_library_from_functions(
            LIB,
            smoke_square,
            library_context_info=[smoke_context, [], {}],
            exec_mode="direct",
            add_env=False,
        )
        lib.set_cores(1)
        lib.set_function_slots(2)
        m.install_library(lib)
        worker = start_vine_worker(m.port, tmp_path / "worker", cores=1)
        try:
            for i in range(n):
                m.submit(FunctionCall(LIB, "smoke_square", i))

            def worker_gone() -> str | None:
                return None if worker.poll() is None else f"vine_worker exited {worker.returncode}"

            tasks = wait_for(m, n, deadline_s=120, alive=worker_gone)
            # Outputs are read from the manager's staging area, so before it is freed.
            for t in tasks:
                assert t.successful(), f"result={t.result} output={t.output!r}"
            outputs = [t.output for t in tasks]
        except BaseException:
            print(log_tail(tmp_path / "worker" / "worker.log"))
            raise
        finally:
            stop_process(worker)

    assert sorted(o["square"] for o in outputs) == [i * i for i in range(n)]
    # One library process (1 core worker, 1 core library) served every call, in its own process
    # (direct mode), with the state its context created once.
    assert len({o["token"] for o in outputs}) == 1
    assert {o["pid"] for o in outputs} == {outputs[0]["context_pid"]}
    assert sorted(o["calls"] for o in outputs) == list(range(1, n + 1))
