"""Engines run shard specs somewhere and yield their results as they finish (``engine.py``
says what an engine is). ``add_engine_options`` and ``make_engine`` are the command line's only
contact with engines, so adding an engine touches this package alone.
"""

from __future__ import annotations

import argparse

from .engine import Engine, EngineError, taskvine_available


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
