"""What an engine is: the ``Engine`` protocol every engine implements, and ``EngineError``.

Every engine has ``describe() -> str`` and ``run(specs, progress, shares) ->
Iterator[ShardResult]`` (the shard contract: ``ldawt.daemon.contract``); ``progress`` receives
in-shard count deltas when the engine can see them (the local engine can). ``shares`` holds the
job-wide per-host limits (``ldawt.manager.hostcaps``): before it starts a shard, an engine asks
``shares.admit(spec, slots)`` (``slots``: the shards it can run at once) and runs the spec it
returns, which carries the shard's share; None means not now, and the engine starts another
ready shard and asks again later. It calls ``shares.release(shard_id)`` as soon as a run of the
shard ends, whatever its outcome, also when a run is lost and the shard queued again. Without
``shares`` (``UNSHARED``) every spec is admitted as it is. A progress delta whose ``shard_id``
is None carries only a ``note`` for the progress line, about the engine rather than a shard
(e.g. "no worker connected ..."; "" clears it). An engine that cannot go on at all (e.g. its
TaskVine library fails to start on every worker) raises ``EngineError``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Protocol

from ldawt.daemon.contract import ProgressCallback, ShardResult, ShardSpec

from ..errors import LdawtError
from ..hostcaps import HostShares


class EngineError(LdawtError, RuntimeError):
    """The engine cannot run the job (TaskVine missing, its library failing on every worker);
    the message says why and what to do. Exit status 2: nothing the job did is lost."""


class Engine(Protocol):
    def describe(self) -> str: ...

    def run(
        self, specs: list[ShardSpec], progress: ProgressCallback, shares: HostShares = ...
    ) -> Iterator[ShardResult]: ...


def taskvine_available() -> bool:
    try:
        return importlib.util.find_spec("ndcctools.taskvine") is not None
    except ImportError:  # no ndcctools at all
        return False
