"""The progress line: rows from in-shard deltas or from final results alone."""

from __future__ import annotations

import io

from ldawt.manager.progress import Progress


def test_results_without_deltas_count_and_failed_shards_are_taken_back():
    stream = io.StringIO()
    progress = Progress(10, 2, stream)
    progress.add({"shard_id": "a", "counts": {"ok": 3}, "bytes": 300})
    assert progress.rows == 3
    progress.shard_finished({"shard_id": "a", "ok": False}, committed=False)
    assert (progress.rows, progress.ok, progress.shards) == (0, 0, 0)  # it runs again

    # an engine that cannot see inside a shard reports only its result
    result = {"shard_id": "b", "ok": True, "counts": {"ok": 4, "http_404": 1}, "bytes": 500}
    progress.shard_finished(result, committed=True)
    assert (progress.rows, progress.ok, progress.failed, progress.shards) == (5, 4, 1, 1)
    assert progress.bytes == 800  # bytes moved count, even those of the failed attempt

    # deltas then the result: nothing counted twice
    progress.add({"shard_id": "c", "counts": {"ok": 2}, "bytes": 100})
    progress.shard_finished(
        {"shard_id": "c", "counts": {"ok": 4, "duplicate": 1}, "bytes": 250}, committed=True
    )
    assert (progress.rows, progress.ok, progress.shards) == (10, 9, 2)
    assert progress.bytes == 1050
    progress.close()
    last = stream.getvalue().splitlines()[-1]
    assert last.startswith("[####################] 10/10 rows  2/2 shards")
    assert "failed 10.0%" in last and "ETA -" in last
