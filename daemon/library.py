"""The TaskVine library daemon: what runs inside a worker's long-lived library process.

The TaskVine engine builds its library from these two functions. They are pickled *by
reference*, so the library process imports them from ``ldawt.daemon.library``: the ``python``
that vine_worker finds first on its PATH must have ldawt installed (``ldawt-worker`` puts its own
interpreter's ``bin/`` first). ``library_context`` runs once per library process, before any
call; the library runs in "direct" mode, so ``ldawt_shard`` then runs once per shard inside that
same process and every call shares the warm event loop and connection pools.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from . import metrics
from .contract import ShardResult, describe_exception, failure_result
from .runtime import get_runtime
from .shard import run_shard, shard_id_of
from .storage import is_url

METRICS_ADDRESS_ENV = "LDAWT_METRICS_ADDRESS"
METRICS_PORT_ENV = "LDAWT_METRICS_PORT"
DEFAULT_METRICS_ADDRESS = "0.0.0.0"
DEFAULT_METRICS_PORT = 9401
# A worker runs one library process per library-sized share of its cores, each on its own port:
# LDAWT_METRICS_PORT, the next one, ...
METRICS_PORT_RANGE = 64
# Spec key for the library only: write into a new folder of the call's own under output_dir.
UNIQUE_OUTPUT = "unique_output"

_state: dict[str, Any] = {}


def library_context() -> dict[str, Any]:
    """Set up this library process once: the warm runtime and the /metrics server.

    A runtime that cannot start fails the library at start-up (the manager reports it); a
    metrics port that cannot be had does not: shards still run, and results say why.
    """
    get_runtime()
    _state.update(pid=os.getpid(), started_at=time.time(), calls=0, metrics_port=None)
    try:
        address = os.environ.get(METRICS_ADDRESS_ENV) or DEFAULT_METRICS_ADDRESS
        port = int(os.environ.get(METRICS_PORT_ENV) or DEFAULT_METRICS_PORT)
        _state["metrics_port"] = metrics.start_metrics_server(address, port, METRICS_PORT_RANGE)
    except (OSError, ValueError) as exc:
        _state["metrics_error"] = f"metrics server not started: {exc}"
    # The library merges what this returns into its globals; ldawt keeps its state here instead.
    return {}


def ldawt_shard(spec: dict[str, Any]) -> ShardResult:
    """Run one shard in this library process; returns the result dict and never raises.

    Relative ``input_path`` and ``output_dir`` are taken against the call's sandbox (the working
    directory during the call), where TaskVine puts declared inputs and collects outputs. With
    ``unique_output`` the files go to a new folder under ``output_dir``, named in the result.
    """
    started = time.monotonic()
    try:
        if not _state:
            library_context()
        local = dict(spec)
        for key in ("input_path", "output_dir"):
            if not is_url(local[key]):
                local[key] = os.path.abspath(local[key])
        remote = is_url(local["output_dir"])
        if local.pop(UNIQUE_OUTPUT, False) and not remote:
            run = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
            local["output_dir"] = os.path.join(local["output_dir"], run)
        # The output folder is the call's declared output: it must exist even if the shard fails.
        if not remote:
            Path(local["output_dir"]).mkdir(parents=True, exist_ok=True)
        result = run_shard(local)
        _state["calls"] += 1
        result.update(
            library_calls=_state["calls"],
            library_started_at=_state["started_at"],
            metrics_port=_state["metrics_port"],
        )
        if "metrics_error" in _state:
            result["metrics_error"] = _state["metrics_error"]
        return result
    except BaseException as exc:  # a raising call would end this process and its warm state
        return failure_result(shard_id_of(spec), f"library: {describe_exception(exc)}", started)
