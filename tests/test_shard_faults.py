"""One real shard against the fault-injecting origin: every row's status, every tar member."""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from fault_origin import DRIP_SECONDS, PNG_HEADER, FaultOrigin
from shard_input import write_shard_input

from ldawt.daemon import metrics
from ldawt.daemon.fetcher.budget import ByteBudget
from ldawt.daemon.shard import run_shard
from ldawt.manager.demo import serve_in_background

FAST_FETCH = {
    "allow_private": True,
    "retries": 2,
    "backoff_base": 0.05,
    "backoff_max": 0.2,
    "retry_after_max": 3.0,
    "read_timeout": 0.5,
    "total_timeout": 5.0,
    "max_bytes": 200_000,
}


@pytest.fixture
def origin() -> Iterator[tuple[FaultOrigin, str]]:
    fault_origin = FaultOrigin()
    with serve_in_background(fault_origin.app) as port:
        yield fault_origin, f"http://127.0.0.1:{port}"


def run_rows(
    tmp_path: Path,
    urls: list[Any],
    classes: list[str] | None = None,
    keys: list[str] | None = None,
    **spec: Any,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    n = len(urls)
    input_path = tmp_path / "in.parquet"
    write_shard_input(
        input_path, urls, classes or ["bird"] * n, keys or [f"k{i}" for i in range(n)]
    )
    fetch = {**FAST_FETCH, **spec.pop("fetch", {})}
    result = run_shard(
        {
            "shard_id": "s0",
            "input_path": str(input_path),
            "output_dir": str(tmp_path / "out"),
            "fetch": fetch,
            **spec,
        }
    )
    assert result["ok"], result
    manifest = pq.read_table(result["manifest_path"]).to_pylist()
    return result, manifest


def test_every_fault_maps_to_its_status(tmp_path: Path, origin: tuple[FaultOrigin, str]) -> None:
    fault_origin, base = origin
    cases = [
        (f"{base}/img/a.jpg", "ok", 200),
        (f"{base}/img/noext", "ok", 200),
        (f"{base}/png/liar.jpg", "ok", 200),
        (f"{base}/redirect/3/chained", "ok", 200),
        (f"{base}/loop/a", "redirect_loop", 302),
        (f"{base}/status/404", "http_404", 404),
        (f"{base}/status/410", "http_410", 410),
        (f"{base}/status/418", "http_4xx", 418),
        (f"{base}/retry-after/seconds/ra1", "ok", 200),
        (f"{base}/retry-after/date/ra2", "ok", 200),
        (f"{base}/flaky/500/1/f500", "ok", 200),
        (f"{base}/flaky/503/2/f503", "ok", 200),
        (f"{base}/flaky/503/9/never", "http_503", 503),
        (f"{base}/stall", "timeout", 200),
        (f"{base}/huge/cl", "too_large", 200),
        (f"{base}/huge/chunked", "too_large", 200),
        (f"{base}/truncated", "truncated", 200),
        (f"{base}/html", "not_image", 200),
        (f"{base}/reset", "connection_reset", None),
        ("http://no-such-host.invalid/x.jpg", "dns_error", None),
        ("http://169.254.169.254/latest/meta-data/", "blocked_address", None),
        (f"{base}/to-metadata", "blocked_address", 302),
        ("ftp://example.org/x.jpg", "bad_url", None),
        ("not a url", "bad_url", None),
        ("", "bad_url", None),
        (None, "bad_url", None),
    ]
    result, manifest = run_rows(tmp_path, [url for url, _, _ in cases])

    assert [row["status"] for row in manifest] == [status for _, status, _ in cases]
    assert [row["http_status"] for row in manifest] == [code for _, _, code in cases]
    assert result["rows"] == len(cases) == len(manifest)
    assert sum(result["counts"].values()) == len(cases)
    by_url = {row["url"]: row for row in manifest}

    # retried exactly as configured: 404 never, 503 until it works, persistent 503 to the limit
    assert by_url[f"{base}/status/404"]["attempts"] == 1
    assert by_url[f"{base}/flaky/503/2/f503"]["attempts"] == 3
    assert by_url[f"{base}/flaky/503/9/never"]["attempts"] == 3
    assert by_url[f"{base}/reset"]["attempts"] == 3
    assert by_url[f"{base}/html"]["attempts"] == 1
    # Retry-After was honoured (about one second), not replaced by the short backoff; the
    # HTTP-date form's wait is checked against the date in test_retry_after_http_date_is_waited_for
    for name in ("seconds/ra1", "date/ra2"):
        row = by_url[f"{base}/retry-after/{name}"]
        assert row["attempts"] == 2
        assert row["elapsed_ms"] >= 900 if name.startswith("seconds") else row["elapsed_ms"] > 0
    first, second = fault_origin.arrivals["/retry-after/seconds/ra1"]
    assert second - first >= 0.95
    assert fault_origin.hits["/status/404"] == 1
    assert [fault_origin.hits[f"/redirect/{n}/chained"] for n in (3, 2, 1)] == [1, 1, 1]
    # the extension comes from the bytes, not from the URL
    assert by_url[f"{base}/png/liar.jpg"]["member"] == "bird/k2.png"
    assert by_url[f"{base}/img/noext"]["member"] == "bird/k1.jpg"
    for row in manifest:
        if row["status"] != "ok":
            assert row["member"] is None and row["sha256"] is None
            assert row["error"], row

    expected = {
        "bird/k0.jpg": FaultOrigin.body("a.jpg"),
        "bird/k1.jpg": FaultOrigin.body("noext"),
        "bird/k2.png": PNG_HEADER,
        "bird/k3.jpg": FaultOrigin.body("chained"),
        "bird/k8.jpg": FaultOrigin.body("ra1"),
        "bird/k9.jpg": FaultOrigin.body("ra2"),
        "bird/k10.jpg": FaultOrigin.body("f500"),
        "bird/k11.jpg": FaultOrigin.body("f503"),
    }
    with tarfile.open(result["tar_path"]) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert members == expected
    ok_rows = [row for row in manifest if row["status"] == "ok"]
    assert len(ok_rows) == len(members)
    for row in ok_rows:
        data = members[row["member"]]
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert row["bytes"] == len(data)
    assert not list((tmp_path / "out").glob("*.partial"))


# asyncio may wake a sleeper up to a clock tick early; the origin's clock is the fetcher's
CLOCK_SLACK_S = 0.05


def test_retry_after_http_date_is_waited_for(
    tmp_path: Path, origin: tuple[FaultOrigin, str]
) -> None:
    """429 and 503 with ``Retry-After: <HTTP date about 2 s ahead>``: the retry arrives no
    earlier than that date. The normal backoff (at most 0.05 s here) would retry within the
    second, and the date is more than a second after the first request (whole seconds)."""
    fault_origin, base = origin
    codes = (429, 503)
    paths = [f"/retry-after/date/when{code}" for code in codes]
    urls = [f"{base}/retry-after/date/when{code}?code={code}&delay=2" for code in codes]
    _, manifest = run_rows(tmp_path, urls, fetch={"retry_after_max": 10.0})

    assert [(row["status"], row["http_status"], row["attempts"]) for row in manifest] == [
        ("ok", 200, 2),
        ("ok", 200, 2),
    ]
    for path, row in zip(paths, manifest, strict=True):
        first, second = fault_origin.arrivals[path]
        date = fault_origin.retry_after_dates[path]
        assert date > first + 1.0  # the origin named a time worth waiting for
        assert second >= date - CLOCK_SLACK_S, f"retried {date - second:.3f} s before the date"
        # ... and only that long: not the 10 s cap, not a second date-sized wait
        assert second < date + 1.5
        assert row["elapsed_ms"] >= (date - first - CLOCK_SLACK_S) * 1000


def test_retry_after_date_beyond_the_cap_waits_the_cap(
    tmp_path: Path, origin: tuple[FaultOrigin, str]
) -> None:
    """A date an hour ahead is waited for ``retry_after_max`` (1 s), not an hour; the shard's
    deadline bounds the test if the cap were ignored."""
    fault_origin, base = origin
    path = "/retry-after/date/far"
    _, manifest = run_rows(
        tmp_path, [f"{base}{path}?delay=3600"], deadline_s=6.0, fetch={"retry_after_max": 1.0}
    )
    assert (manifest[0]["status"], manifest[0]["attempts"]) == ("ok", 2)
    first, second = fault_origin.arrivals[path]
    assert fault_origin.retry_after_dates[path] > first + 3000
    assert 1.0 - CLOCK_SLACK_S <= second - first < 3.0


def test_loopback_refused_unless_allowed(tmp_path: Path, origin: tuple[FaultOrigin, str]) -> None:
    _, base = origin
    _, manifest = run_rows(tmp_path, [f"{base}/img/a.jpg"], fetch={"allow_private": False})
    assert manifest[0]["status"] == "blocked_address"
    assert "allow-private" in manifest[0]["error"]


def test_webdataset_layout_and_gzip(tmp_path: Path, origin: tuple[FaultOrigin, str]) -> None:
    _, base = origin
    urls = [f"{base}/img/w{i}.jpg" for i in range(5)] + [f"{base}/status/404"]
    keys = ["a.b", "a_b", "x", "x", "y", "z"]
    result, manifest = run_rows(tmp_path, urls, keys=keys, layout="webdataset", compress=True)
    assert result["tar_path"].endswith(".tar.gz")
    with tarfile.open(result["tar_path"], "r:gz") as tar:
        names = tar.getnames()
        stems = {name.split(".", 1)[0] for name in names}
        assert len(stems) == 5  # dotted and duplicate keys became unique stems
        for stem in stems:
            assert {f"{stem}.jpg", f"{stem}.json", f"{stem}.cls"} <= set(names)
        assert tar.extractfile(f"{manifest[0]['member']}").read() == FaultOrigin.body("w0.jpg")


def test_per_host_cap_and_memory_budget(tmp_path: Path, origin: tuple[FaultOrigin, str]) -> None:
    fault_origin, base = origin
    urls = [f"{base}/img/p{i}.jpg?slow=0.02" for i in range(60)]
    # a budget smaller than two images: downloads must wait for the writer, never deadlock
    result, _ = run_rows(
        tmp_path, urls, fetch={"per_host": 4, "concurrency": 32, "max_buffered_bytes": 40_000}
    )
    assert result["counts"] == {"ok": 60}
    assert fault_origin.max_in_flight <= 4
    assert metrics.REGISTRY.get_sample_value("ldawt_buffered_bytes") == 0
    assert result["connections_reused"] > result["connections_new"]


def test_buffered_bytes_sums_every_budget_of_the_process() -> None:
    """One budget per pool of options: the gauge is their sum, not the last one to change."""
    first, second = ByteBudget(1_000), ByteBudget(1_000)
    before = metrics.REGISTRY.get_sample_value("ldawt_buffered_bytes")
    first.charge(100)
    second.charge(50)
    assert metrics.REGISTRY.get_sample_value("ldawt_buffered_bytes") == before + 150
    first.release(100)
    assert metrics.REGISTRY.get_sample_value("ldawt_buffered_bytes") == before + 50
    second.release(50)
    assert metrics.REGISTRY.get_sample_value("ldawt_buffered_bytes") == before


def test_host_rate_limit(tmp_path: Path, origin: tuple[FaultOrigin, str]) -> None:
    _, base = origin
    urls = [f"{base}/img/r{i}.jpg" for i in range(10)]
    result, _ = run_rows(tmp_path, urls, fetch={"host_rps": 5.0})
    assert result["counts"] == {"ok": 10}
    # a burst of 5 tokens, then 5 more at 5/s: at least ~0.8 s whatever the machine's speed
    assert result["elapsed_s"] >= 0.75


def test_total_timeout_ends_a_body_that_keeps_coming(
    tmp_path: Path, origin: tuple[FaultOrigin, str]
) -> None:
    _, base = origin
    urls = [f"{base}/drip", f"{base}/img/a.jpg"]
    result, manifest = run_rows(tmp_path, urls, fetch={"total_timeout": 1.0, "retries": 0})
    assert [row["status"] for row in manifest] == ["timeout", "ok"]
    assert manifest[0]["error"] == "TimeoutError: took longer than 1 s (--timeout)"
    assert result["elapsed_s"] < DRIP_SECONDS / 2  # the request was ended, not the body


def test_deadline_cancels_unfinished_rows_and_still_commits(
    tmp_path: Path, origin: tuple[FaultOrigin, str]
) -> None:
    _, base = origin
    urls = [f"{base}/img/fast.jpg", f"{base}/img/slow.jpg?slow=20"]
    result, manifest = run_rows(tmp_path, urls, deadline_s=1.5, fetch={"read_timeout": 30})
    assert [row["status"] for row in manifest] == ["ok", "cancelled"]
    assert "deadline" in result["error"]
    with tarfile.open(result["tar_path"]) as tar:
        assert tar.getnames() == ["bird/k0.jpg"]


def test_bad_spec_is_a_result_not_an_exception(tmp_path: Path) -> None:
    result = run_shard(
        {
            "shard_id": "x",
            "input_path": str(tmp_path / "missing.parquet"),
            "output_dir": str(tmp_path),
        }
    )
    assert result["ok"] is False
    assert "missing.parquet" in result["error"]
    result = run_shard({"shard_id": "x", "bogus": 1})
    assert result["ok"] is False and "bogus" in result["error"]


def test_no_cookie_is_sent_back(tmp_path: Path, origin: tuple[FaultOrigin, str]) -> None:
    """A cookie set by an origin is not returned: not on the redirect it came with, not by the
    next rows (the daemon's session outlives shards and would carry every host's cookies)."""
    fault_origin, base = origin
    # by name: a cookie jar keeps no cookie of an IP address
    base = base.replace("127.0.0.1", "localhost")
    urls = [f"{base}/cookie/c{i}" for i in range(3)]
    _, manifest = run_rows(tmp_path, urls, fetch={"concurrency": 1})
    assert [row["status"] for row in manifest] == ["ok"] * 3
    assert [fault_origin.hits[f"/img/c{i}"] for i in range(3)] == [1, 1, 1]
    assert fault_origin.cookies == []
