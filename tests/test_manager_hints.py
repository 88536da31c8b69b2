"""At the end of a run, when a large share of rows failed for a reason an option changes, the
manager names the option and the `retry-failed` command that fetches them again with it; that
command, run as printed, does."""

from __future__ import annotations

import json
import re
import shlex
from collections import Counter
from pathlib import Path

from manager_support import run_manager, running_origin, url_table

from ldawt.daemon.contract import FetchOptions
from ldawt.manager.submit import failure_hints


def test_every_row_blocked_names_allow_private_and_the_retry_that_fetches_them(tmp_path: Path):
    out = tmp_path / "out"
    with running_origin() as origin:
        source = url_table(tmp_path / "in.parquet", [origin.url("img", i) for i in range(6)])
        # loopback URLs without --allow-private: every row is blocked_address
        submitted = run_manager(
            "submit", source, "--out", out, "--engine", "local", "--workers", "1",
            "--shard-size", "4", "--retries", "0",
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        assert not origin.hits
        warnings = [
            line for line in submitted.stderr.splitlines() if line.startswith("ldawt: warning: ")
        ]
        assert len(warnings) == 1, submitted.stderr
        assert "6 of 6 rows failed with blocked_address" in warnings[0]
        assert "--allow-private" in warnings[0]
        printed = re.search(r"ldawt-manager (retry-failed .*--allow-private) \(", warnings[0])
        assert printed is not None, warnings[0]
        command = shlex.split(printed.group(1))
        assert command == [
            "retry-failed",
            str(out.resolve()),
            "--status",
            "blocked_address",
            "--allow-private",
        ]

        retried = run_manager(*command)
        assert retried.returncode == 0, retried.stderr
        assert "retrying 6 row(s) with status blocked_address" in retried.stderr
        assert "warning" not in retried.stderr
        hits = dict(origin.hits)
    assert hits == {f"/img/{i}.jpg": 1 for i in range(6)}

    figures = json.loads(run_manager("report", out, "--json").stdout)
    assert figures["by_status"] == {"ok": 6}
    assert figures["totals"]["rows"] == 6


def test_hints_need_a_large_share_and_an_option_that_would_change_the_outcome():
    out = Path("/data/my job")
    counts = Counter({"ok": 80, "blocked_address": 15, "timeout": 5})
    [hint] = failure_hints(counts, FetchOptions(), out)
    assert hint.startswith("15 of 100 rows failed with blocked_address")
    assert "ldawt-manager retry-failed '/data/my job' --status blocked_address --allow-private" in (
        hint
    )
    # already allowed: the address is not why, no option to name
    assert failure_hints(counts, FetchOptions(allow_private=True), out) == []
    assert failure_hints(Counter({"ok": 95, "blocked_address": 5}), FetchOptions(), out) == []
    many = Counter({"tls_error": 30, "too_large": 30, "timeout": 30, "http_429": 10})
    hints = failure_hints(many, FetchOptions(), out)
    assert [h.split(" rows failed with ")[1].split(":")[0] for h in hints] == [
        "tls_error",
        "too_large",
        "timeout",
        "http_429",
    ]
    assert "--ca-file FILE (or --insecure)" in hints[0]
    assert failure_hints(Counter(), FetchOptions(), out) == []
