"""The progress display: rows from in-shard deltas or from final results alone, rates of
images, the same failure share as the summary, and a line that fits the terminal."""

from __future__ import annotations

import io

from ldawt.manager.console import ProgressDisplay, configure_logging


def test_results_without_deltas_count_and_failed_shards_are_taken_back():
    stream = io.StringIO()
    configure_logging(0, stream)
    progress = ProgressDisplay(10, 2, stream=stream)
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


def test_rates_count_images_and_failures_share_the_summary_denominator():
    stream = io.StringIO()
    configure_logging(0, stream)
    # a resumed job: 6 rows already failed, 2 already ok, out of 10
    progress = ProgressDisplay(10, 2, {"blocked_address": 6, "ok": 1, "duplicate": 1}, 1, stream)
    assert "failed 75.0%" in progress.line()  # 6 of the 8 rows with an outcome
    progress.add({"shard_id": "b", "counts": {"blocked_address": 2}, "bytes": 0})
    assert progress.images == 0 and " 0 img/s" in progress.line()  # blocked rows are no images
    assert "failed 80.0%" in progress.line()
    progress.add({"shard_id": "b", "counts": {"ok": 0}, "bytes": 0})
    progress.shard_finished({"shard_id": "b", "counts": {"blocked_address": 2}}, committed=True)
    assert (progress.rows, progress.shards) == (10, 2)


def test_the_line_fits_the_width_dropping_the_least_useful_fields_first():
    progress = ProgressDisplay(1_000_000, 200, stream=io.StringIO())
    progress.add({"shard_id": None, "note": "no worker connected to host:9123; start one with..."})
    wide = progress.line()
    assert "no worker connected" in wide and len(wide) > 100
    for width in (100, 80, 60, 40):
        narrow = progress.line(width)
        assert len(narrow) <= width
        assert narrow.startswith("[")
    assert "ETA" in progress.line(80) and "rows" in progress.line(80)
    assert "no worker" not in progress.line(80)
