"""Engines run shard specs somewhere and yield their results as they finish.

Every engine has ``describe() -> str`` and ``run(specs, progress) -> Iterator[result]``;
``progress`` receives in-shard count deltas when the engine can see them (the local engine
can). ``add_engine_options`` and ``make_engine`` are the command line's only contact with
engines, so adding an engine touches this package alone.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from typing import Any, Protocol

Progress = Callable[[dict[str, Any]], None]


class Engine(Protocol):
    def describe(self) -> str: ...

    def run(self, specs: list[dict[str, Any]], progress: Progress) -> Iterator[dict[str, Any]]: ...


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument(
        "--engine",
        choices=("auto", "local"),
        default="auto",
        help="where shards run: local = this machine, in-process or worker processes "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local engine: worker processes (default: one per core; 1 runs in this process)",
    )


def make_engine(args: argparse.Namespace) -> Engine:
    from .local import LocalEngine

    return LocalEngine(args.workers)
