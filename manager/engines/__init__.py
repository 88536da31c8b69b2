"""Engines run shard specs somewhere and yield their results as they finish.

Every engine has ``describe() -> str`` and ``run(specs, progress) -> Iterator[result]``;
``progress`` receives in-shard count deltas when the engine can see them (the local engine
can). A delta whose ``shard_id`` is None carries only a ``note`` for the progress line, about
the engine rather than a shard (e.g. "no worker connected ..."; "" clears it). An engine that
cannot go on at all (e.g. its TaskVine library fails to start on every worker) raises
``EngineError``. ``add_engine_options`` and ``make_engine`` are the command line's only contact
with engines, so adding an engine touches this package alone.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable, Iterator
from typing import Any, Protocol

Progress = Callable[[dict[str, Any]], None]


class EngineError(RuntimeError):
    """The engine cannot run the job; the message says why and what to do."""


class Engine(Protocol):
    def describe(self) -> str: ...

    def run(self, specs: list[dict[str, Any]], progress: Progress) -> Iterator[dict[str, Any]]: ...


def taskvine_available() -> bool:
    try:
        return importlib.util.find_spec("ndcctools.taskvine") is not None
    except ImportError:  # no ndcctools at all
        return False


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument(
        "--engine",
        choices=("auto", "local", "taskvine"),
        default="auto",
        help="where shards run: local = this machine, in-process or worker processes; "
        "taskvine = TaskVine workers, one FunctionCall per shard; auto = taskvine when "
        "ndcctools is importable (with one local worker unless --local-workers says "
        "otherwise), else local (default: %(default)s)",
    )
    group.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local engine: worker processes (default: one per core; 1 runs in this process)",
    )
    from .vine_options import add_taskvine_options

    add_taskvine_options(parser)


def make_engine(args: argparse.Namespace) -> Engine:
    engine = args.engine
    if engine == "auto":
        engine = "taskvine" if taskvine_available() else "local"
    if engine == "taskvine":
        if not taskvine_available():
            raise EngineError(
                "--engine taskvine needs TaskVine's Python package (ndcctools): "
                "on Debian 13 / recent Ubuntu 'apt install coop-computing-tools "
                "python3-workqueue', elsewhere 'conda install -c conda-forge ndcctools'"
            )
        from .taskvine import TaskVineEngine
        from .vine_options import vine_options

        return TaskVineEngine(vine_options(args, embedded=args.engine == "auto"))
    from .local import LocalEngine

    return LocalEngine(args.workers)
