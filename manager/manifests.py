"""The rows of a job's manifests, each input row once with its latest outcome.

Retry rounds rerun rows of earlier rounds, so a row may appear in several manifests; the latest
round wins. Manifests are read newest round first, remembering only the rows of retry rounds,
so memory grows with the number of retried rows, not with the job.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ldawt.daemon.storage import readable

from .job import JobRun
from .ledger import DONE


def latest_outcomes(run: JobRun, columns: list[str]) -> Iterator[pa.Table]:
    """``columns`` (``row`` is always included) of every committed manifest, without the rows
    a later round replaced."""
    wanted = list(dict.fromkeys(["row", *columns]))
    replaced: set[int] = set()
    current_round, excluded = None, pa.array([], pa.int64())
    for shard in sorted(run.ledger.shards([DONE]), key=lambda s: (-s.round, s.shard_id)):
        if shard.round != current_round:
            current_round, excluded = shard.round, pa.array(sorted(replaced), pa.int64())
        table = pq.read_table(readable(run.files(shard.shard_id).manifest), columns=wanted)
        if len(excluded):
            table = table.filter(pc.invert(pc.is_in(table.column("row"), value_set=excluded)))
        if shard.round > 0:
            replaced.update(table.column("row").to_pylist())
        yield table
