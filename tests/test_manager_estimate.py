"""`ldawt-manager estimate INPUT` against a loopback origin whose images have known sizes, on
several loopback addresses (hosts to stratify by): one answers HEAD, one refuses HEAD with 405
(so the size comes from a ranged GET's Content-Range), one answers HEAD without a length, a
tail of small hosts, 404s, 503s, redirects and bad URLs. The estimate's interval holds the true
total, a census is exact, failure rates match, the per-host limits hold, and no image body is
downloaded: the origin records every byte of body it sends."""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import subprocess
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from manager_support import bound_socket, manager_command, serving

from ldawt.daemon.contract import FetchOptions
from ldawt.daemon.fetcher.probe import _range_total, probe_urls
from ldawt.manager import estimate as est
from ldawt.manager.cli import main

PLAIN = "127.0.0.1"  # HEAD gives Content-Length
NO_HEAD = "127.0.0.2"  # HEAD answers 405: the ranged GET gives the size
NO_LENGTH = "127.0.0.3"  # HEAD answers 200 without a length: the ranged GET gives it
TAIL = tuple(f"127.0.0.{i}" for i in range(10, 30))  # small hosts: pooled as "other hosts"
JPEG_START = b"\xff\xd8\xff\xe0"
PROBE = ["--allow-private", "--retries", "0"]


def size_of(address: str, n: int) -> int:
    return 1_000 + zlib.crc32(f"{address}/{n}".encode()) % 80_000


class SizedOrigin:
    """``/img/<n>`` is an image of ``size_of(address, n)`` bytes, ``/gone/<n>`` 404, ``/busy/<n>``
    503, ``/moved/<n>`` a 302 to ``/img/<n>``. Records each request with the body bytes sent,
    and the most requests in flight, per address and in all."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.ports: dict[str, int] = {}
        self.requests: list[dict] = []
        self.in_flight: Counter[str] = Counter()
        self.most_in_flight: Counter[str] = Counter()
        self.most_in_flight_total = 0

    def url(self, address: str, kind: str, n: int) -> str:
        return f"http://{address}:{self.ports[address]}/{kind}/{n}.jpg"

    async def serve(self, request: web.Request) -> web.StreamResponse:
        address = request.transport.get_extra_info("sockname")[0]
        record = {
            "address": address,
            "method": request.method,
            "path": request.path,
            "range": request.headers.get("Range"),
            "body": 0,
            "at": time.monotonic(),
        }
        self.requests.append(record)
        self.in_flight[address] += 1
        self.most_in_flight[address] = max(self.most_in_flight[address], self.in_flight[address])
        self.most_in_flight_total = max(self.most_in_flight_total, sum(self.in_flight.values()))
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            response = await self._answer(request, address, record)
        finally:
            self.in_flight[address] -= 1
        record["status"] = response.status
        return response

    async def _answer(self, request: web.Request, address: str, record: dict) -> web.StreamResponse:
        kind, n = request.match_info["kind"], int(request.match_info["n"])
        if request.method == "HEAD" and address == NO_HEAD:
            return web.Response(status=405, headers={"Allow": "GET"})
        if kind == "gone":
            return web.Response(status=404)
        if kind == "busy":
            return web.Response(status=503)
        if kind == "moved":
            return web.Response(status=302, headers={"Location": f"/img/{n}.jpg"})
        if kind == "metadata":  # to the cloud metadata address, always refused
            return web.Response(status=302, headers={"Location": "http://169.254.169.254/x"})
        if kind == "empty":  # an empty file: HEAD says 0, the ranged GET cannot be satisfied
            if request.method == "HEAD":
                return web.Response(headers={"Content-Length": "0"})
            return web.Response(status=416, headers={"Content-Range": "bytes */0"})
        size = size_of(address, n)
        if request.method == "HEAD":
            if kind == "zero":  # a HEAD that says 0 for an image that is not empty
                return web.Response(headers={"Content-Length": "0"})
            if address == NO_LENGTH:
                response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
                response.enable_chunked_encoding()
                await response.prepare(request)
                return response
            return web.Response(headers={"Content-Length": str(size), "Content-Type": "image/jpeg"})
        body = JPEG_START + bytes(size - len(JPEG_START))
        if request.headers.get("Range") == "bytes=0-0":
            record["body"] = 1
            return web.Response(
                status=206,
                body=body[:1],
                content_type="image/jpeg",
                headers={"Content-Range": f"bytes 0-0/{size}"},
            )
        record["body"] = size
        return web.Response(body=body, content_type="image/jpeg")


@contextmanager
def sized_origin(delay_s: float = 0.0) -> Iterator[SizedOrigin]:
    origin = SizedOrigin(delay_s)
    app = web.Application()
    app.router.add_route("*", "/{kind}/{n:\\d+}.jpg", origin.serve)
    listeners = {address: bound_socket(address) for address in (PLAIN, NO_HEAD, NO_LENGTH, *TAIL)}
    with serving(app, list(listeners.values())):
        origin.ports = {address: sock.getsockname()[1] for address, sock in listeners.items()}
        yield origin


def population(origin: SizedOrigin) -> tuple[list[str | None], int, Counter[str]]:
    """535 rows in shuffled order, the true total of their image bytes and their failures."""
    rows: list[tuple[str | None, int, str | None]] = []  # url, bytes, failure
    for n in range(240):
        rows.append((origin.url(PLAIN, "img", n), size_of(PLAIN, n), None))
    for n in range(240, 270):
        rows.append((origin.url(PLAIN, "gone", n), 0, "http_404"))
    for n in range(270, 280):
        rows.append((origin.url(PLAIN, "moved", n), size_of(PLAIN, n), None))
    for n in range(120):
        rows.append((origin.url(NO_HEAD, "img", n), size_of(NO_HEAD, n), None))
    for n in range(120, 130):
        rows.append((origin.url(NO_HEAD, "gone", n), 0, "http_404"))
    for n in range(50):
        rows.append((origin.url(NO_LENGTH, "img", n), size_of(NO_LENGTH, n), None))
    for n in range(50, 60):
        rows.append((origin.url(NO_LENGTH, "busy", n), 0, "http_503"))
    for address in TAIL:
        for n in range(3):
            rows.append((origin.url(address, "img", n), size_of(address, n), None))
    for bad in ("", None, "ftp://example.org/a.jpg", "not a url", "   "):
        rows.append((bad, 0, "bad_url"))
    random.Random(7).shuffle(rows)
    failures = Counter(failure for _, _, failure in rows if failure)
    return [url for url, _, _ in rows], sum(size for _, size, _ in rows), failures


def write_input(folder: Path, urls: list[str | None], fmt: str = "parquet") -> Path:
    table = pa.table({"photo_url": pa.array(urls, pa.string()), "photo_id": range(len(urls))})
    path = folder / f"urls.{fmt}"
    if fmt == "csv":
        pacsv.write_csv(table, path)
    else:
        pq.write_table(table, path, row_group_size=100)  # several batches
    return path


def run_estimate(capsys, *args: str | Path) -> dict:
    status = main(["estimate", *map(str, args), "--json", "-q"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return json.loads(captured.out)


def assert_no_body_downloaded(origin: SizedOrigin) -> None:
    """Only headers, or the one byte a ranged GET asks for, ever left the origin."""
    assert origin.requests
    for record in origin.requests:
        if record["method"] == "HEAD":
            assert record["body"] == 0, record
        else:
            assert record["method"] == "GET" and record["range"] == "bytes=0-0", record
            assert record["body"] <= 1, record


# --- the estimate -------------------------------------------------------------------------------


def test_a_sample_brackets_the_true_total_without_downloading_a_body(tmp_path: Path, capsys):
    with sized_origin() as origin:
        urls, truth, failures = population(origin)
        source = write_input(tmp_path, urls)
        figures = run_estimate(capsys, source, "--sample", "200", "--seed", "3", *PROBE)
        requests = list(origin.requests)
    assert_no_body_downloaded(origin)
    nbytes = figures["bytes"]
    assert nbytes["low"] <= truth <= nbytes["high"], (nbytes, truth)
    assert abs(nbytes["estimate"] - truth) / truth < 0.15
    assert nbytes["low"] < nbytes["estimate"] < nbytes["high"] and not nbytes["exact"]
    assert figures["rows"] == len(urls) == 535
    sample = figures["sample"]
    assert sample["rows"] == 200
    strata = {s["name"]: s for s in sample["strata"]}
    assert set(strata) == {PLAIN, NO_HEAD, NO_LENGTH, est.OTHER_HOSTS}
    assert strata[PLAIN]["rows"] == 280 and strata[est.OTHER_HOSTS]["rows"] == 60
    # proportional allocation: 200 of the 530 rows with a host
    assert [strata[h]["sampled"] for h in (PLAIN, NO_HEAD, NO_LENGTH)] == [106, 49, 23]
    assert strata[est.OTHER_HOSTS]["sampled"] == 22
    # each sampled row was probed once (HEAD), plus a ranged GET where HEAD gave no size
    heads = [r for r in requests if r["method"] == "HEAD"]
    gets = [r for r in requests if r["method"] == "GET"]
    assert {r["address"] for r in gets} == {NO_HEAD, NO_LENGTH}
    assert all(r["status"] == 405 for r in heads if r["address"] == NO_HEAD)
    assert sample["requests"] == {"HEAD": len(heads), "GET": len(gets)}
    assert set(sample["sizes_from"]) == {"HEAD", "GET 206"}
    # failure rates, stratified: bad_url exactly, the rest near the truth
    rates = figures["failures"]["by_status"]
    assert rates["bad_url"] == pytest.approx(5 / 535)
    for status, rows in failures.items():
        assert rates[status] == pytest.approx(rows / 535, abs=0.03), status
    assert figures["failures"]["rate"] == pytest.approx(sum(failures.values()) / 535, abs=0.03)
    top = figures["top_hosts"]
    assert [h["host"] for h in top[:3]] == [PLAIN, NO_HEAD, NO_LENGTH]
    assert [h["rows"] for h in top[:3]] == [280, 130, 60] and len(top) == 10
    assert figures["time"]["seconds"] == pytest.approx(535 / est.RATE_DEFAULT)


def test_the_interval_holds_the_truth_about_95_times_in_100(tmp_path: Path):
    """Over 20 seeds (samples of 100 of 535 rows), the 95% interval misses the true total at
    most 3 times (deterministic: the seeds fix the samples)."""
    options = FetchOptions(allow_private=True, retries=0)
    with sized_origin() as origin:
        urls, truth, _ = population(origin)
        source = write_input(tmp_path, urls)
        held = []
        for seed in range(20):
            nbytes = est.estimate(est.EstimateRequest(source, None, 100, seed, fetch=options))
            held.append(nbytes["bytes"]["low"] <= truth <= nbytes["bytes"]["high"])
    assert sum(held) >= 17, held


def test_the_same_seed_probes_the_same_rows_and_another_seed_others(tmp_path: Path, capsys):
    with sized_origin() as origin:
        source = write_input(tmp_path, population(origin)[0])

        def probed(seed: str) -> tuple[list[str], dict]:
            origin.requests.clear()
            figures = run_estimate(capsys, source, "--sample", "50", "--seed", seed, *PROBE)
            return sorted(r["path"] + r["address"] for r in origin.requests), figures

        first, figures = probed("11")
        again, figures_again = probed("11")
        other, _ = probed("12")
    assert first == again and first != other
    assert figures["bytes"] == figures_again["bytes"]


def test_a_census_is_exact(tmp_path: Path, capsys):
    with sized_origin() as origin:
        urls, truth, failures = population(origin)
        source = write_input(tmp_path, urls)
        figures = run_estimate(capsys, source, "--sample", "100000", *PROBE)
    assert_no_body_downloaded(origin)
    nbytes = figures["bytes"]
    assert nbytes["estimate"] == nbytes["low"] == nbytes["high"] == truth and nbytes["exact"]
    assert figures["sample"]["rows"] == 530  # every row with a host
    rates = figures["failures"]["by_status"]
    assert rates == pytest.approx({status: rows / 535 for status, rows in failures.items()})
    assert figures["images"] == 535 - sum(failures.values())
    assert nbytes["mean_per_image"] == pytest.approx(truth / figures["images"])


def test_every_input_format_gives_the_same_estimate(tmp_path: Path, capsys):
    """Read with submit's functions: CSV, text (one URL per line), gzipped JSON Lines, and a
    file whose name says nothing read with --input-format, sample the same rows."""
    with sized_origin() as origin:
        urls = [url for url in population(origin)[0] if url and url.strip()]
        text = "".join(f"{url}\n" for url in urls)
        (tmp_path / "urls.txt").write_text(text)
        (tmp_path / "urls.data").write_text(text)
        jsonl = "".join(json.dumps({"photo_url": url}) + "\n" for url in urls)
        (tmp_path / "urls.jsonl.gz").write_bytes(gzip.compress(jsonl.encode()))
        inputs = [
            [write_input(tmp_path, urls)],
            [write_input(tmp_path, urls, "csv")],
            [tmp_path / "urls.txt"],
            [tmp_path / "urls.jsonl.gz"],
            [tmp_path / "urls.data", "--input-format", "txt"],
        ]
        figures = [run_estimate(capsys, *given, "--sample", "80", *PROBE) for given in inputs]
    assert figures[0]["rows"] == len(urls)
    for other in figures[1:]:
        for key in ("rows", "bytes", "failures", "top_hosts"):
            assert other[key] == figures[0][key], (other["input"], key)


def test_text_output(tmp_path: Path, capsys):
    with sized_origin() as origin:
        source = write_input(tmp_path, population(origin)[0])
        status = main(
            ["estimate", str(source), "--sample", "60", "--rate", "10", "--top", "2", *PROBE]
        )
    out = capsys.readouterr().out
    assert status == 0
    assert "535 rows, 23 hosts" in out
    assert "total bytes:" in out and "95% interval" in out
    assert "http_404" in out and "bad_url" in out
    assert "rows per host (top 2):" in out and PLAIN in out and "127.0.0.10 " not in out
    assert "time at 10 images/s: 53.5 s" in out


def test_per_host_and_process_limits_hold(tmp_path: Path, capsys):
    with sized_origin(delay_s=0.03) as origin:
        urls = [origin.url(PLAIN, "img", n) for n in range(30)]
        urls += [origin.url(NO_HEAD, "img", n) for n in range(30)]
        source = write_input(tmp_path, urls)
        run_estimate(capsys, source, "--per-host", "2", "--concurrency", "3", *PROBE)
    assert_no_body_downloaded(origin)
    assert origin.most_in_flight[PLAIN] == 2 and origin.most_in_flight[NO_HEAD] <= 2
    assert origin.most_in_flight_total <= 3


def test_host_rps_spaces_the_requests(tmp_path: Path, capsys):
    with sized_origin() as origin:
        source = write_input(tmp_path, [origin.url(PLAIN, "img", n) for n in range(30)])
        figures = run_estimate(capsys, source, "--host-rps", "20", *PROBE)
    arrivals = sorted(r["at"] for r in origin.requests)
    assert len(arrivals) == 30
    assert arrivals[-1] - arrivals[0] >= 0.4  # a burst of 20, then 10 more at 20/s
    assert figures["time"]["largest_host_seconds"] == pytest.approx(30 / 20)


def test_the_address_guard_refuses_loopback_unless_allowed(tmp_path: Path, capsys):
    with sized_origin() as origin:
        source = write_input(tmp_path, [origin.url(PLAIN, "img", n) for n in range(20)])
        figures = run_estimate(capsys, source, "--retries", "0")
    assert origin.requests == []
    assert figures["failures"]["by_status"] == pytest.approx({"blocked_address": 1.0})
    assert figures["bytes"]["estimate"] == 0 and figures["images"] == 0


def test_only_bad_urls(tmp_path: Path, capsys):
    figures = run_estimate(capsys, write_input(tmp_path, ["", None, "mailto:a@b.c"]))
    assert figures["rows"] == 3 and figures["sample"]["rows"] == 0
    assert figures["failures"]["by_status"] == pytest.approx({"bad_url": 1.0})
    assert figures["bytes"]["estimate"] == 0 and figures["top_hosts"] == []


# --- the probe ----------------------------------------------------------------------------------


def test_a_server_ignoring_the_range_is_not_read():
    """HEAD refused, then a GET whose Range the server ignores: the size comes from the 200's
    Content-Length and the connection is closed after the headers, long before the body ends."""
    size = 40 * 1024 * 1024
    chunk = JPEG_START + bytes(256 * 1024 - len(JPEG_START))
    sent = {"bytes": 0, "done": threading.Event()}

    async def serve(request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(status=405)
        response = web.StreamResponse(
            headers={"Content-Length": str(size), "Content-Type": "image/jpeg"}
        )
        try:
            await response.prepare(request)
            while sent["bytes"] < size:
                await response.write(chunk)
                sent["bytes"] += len(chunk)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            sent["done"].set()
        return response

    app = web.Application()
    app.router.add_route("*", "/big.jpg", serve)
    listener = bound_socket(PLAIN)
    with serving(app, [listener]):
        options = FetchOptions(allow_private=True, retries=0, max_bytes=2 * size)
        port = listener.getsockname()[1]
        [probe] = probe_urls([f"http://{PLAIN}:{port}/big.jpg"], options)
        assert sent["done"].wait(30)
    assert (probe.status, probe.size, probe.method) == ("ok", size, "GET 200")
    assert sent["bytes"] < size // 4


def test_sizes_are_judged_like_a_download_judges_bodies():
    """Above --max-bytes: too_large; empty: not_image; a HEAD saying 0 is asked again."""
    with sized_origin() as origin:
        urls = [origin.url(PLAIN, "img", 1), origin.url(NO_HEAD, "img", 1), "nope", None]
        urls += [origin.url(PLAIN, "empty", 1), origin.url(PLAIN, "zero", 2)]
        options = FetchOptions(allow_private=True, retries=0, max_bytes=500)
        probes = probe_urls(urls, options)
        big = FetchOptions(allow_private=True, retries=0)
        [zero] = probe_urls([origin.url(PLAIN, "zero", 2)], big)
    assert_no_body_downloaded(origin)
    statuses = [p.status for p in probes]
    assert statuses == ["too_large", "too_large", "bad_url", "bad_url", "not_image", "too_large"]
    assert (zero.status, zero.size, zero.method) == ("ok", size_of(PLAIN, 2), "GET 206")
    assert zero.requests == {"HEAD": 1, "GET": 1}


def test_redirects_are_followed_once_and_checked():
    """The ranged GET goes where HEAD's redirects led; redirects to refused addresses are
    refused as a download refuses them."""
    with sized_origin() as origin:
        options = FetchOptions(allow_private=True, retries=0)
        [moved] = probe_urls([origin.url(NO_LENGTH, "moved", 5)], options)
        paths = [(r["method"], r["path"]) for r in origin.requests]
        [metadata] = probe_urls([origin.url(PLAIN, "metadata", 1)], options)
    assert (moved.status, moved.size, moved.method) == ("ok", size_of(NO_LENGTH, 5), "GET 206")
    assert paths == [("HEAD", "/moved/5.jpg"), ("HEAD", "/img/5.jpg"), ("GET", "/img/5.jpg")]
    assert moved.requests == {"HEAD": 2, "GET": 1}
    assert metadata.status == "blocked_address" and "link-local" in metadata.detail


@pytest.mark.parametrize(
    ("header", "total"),
    [
        ("bytes 0-0/1234", 1234),
        ("bytes */0", 0),
        ("BYTES 0-0 / 7", 7),
        ("bytes 0-0/*", None),
        ("", None),
        (None, None),
        ("items 0-0/5", None),
    ],
)
def test_content_range_totals(header: str | None, total: int | None):
    assert _range_total(header) == total


# --- the arithmetic -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("df", "t"), [(1, 12.7062), (2, 4.3027), (5, 2.5706), (30, 2.0423), (1e9, 1.9600)]
)
def test_t_quantiles(df: float, t: float):
    assert est.t_quantile(0.95, df) == pytest.approx(t, abs=1e-4)


def test_row_keys_do_not_depend_on_batches_and_follow_the_seed():
    whole = est.row_keys(0, 1000, 5).to_pylist()
    parts = est.row_keys(0, 300, 5).to_pylist() + est.row_keys(300, 700, 5).to_pylist()
    assert whole == parts and len(set(whole)) == 1000
    assert all(0 <= k < 1 for k in whole)
    assert est.row_keys(0, 1000, 6).to_pylist() != whole
    assert 0.45 < sum(whole) / len(whole) < 0.55


def test_strata_get_proportional_samples_and_the_tail_gets_two():
    counts = est.HostCounts(rows=10_100, bad=100)
    counts.hosts.update({"a": 6000, "b": 3000, "c": 990, "d": 10})
    strata = est.plan_strata(counts, 1000)
    # "d" would get 1 of 1,000: it joins "other hosts", which takes a second row from "a"
    assert [(s.name, s.rows, s.sample) for s in strata] == [
        ("a", 6000, 599),
        ("b", 3000, 300),
        ("c", 990, 99),
        (est.OTHER_HOSTS, 10, 2),
    ]
    assert [s.sample for s in est.plan_strata(counts, 1)] == [2]  # one stratum, two rows
    assert [s.sample for s in est.plan_strata(counts, 10**6)] == [6000, 3000, 990, 10]


# --- bad inputs ---------------------------------------------------------------------------------


def _one_error_line(status: int, err: str, message: str) -> None:
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ldawt: error: "), err
    assert message in lines[0] and "Traceback" not in err


def test_bad_inputs_are_one_error_line(tmp_path: Path, capsys):
    missing = tmp_path / "missing.parquet"
    assert main(["estimate", str(missing)]) == 2
    _one_error_line(2, capsys.readouterr().err, "does not exist")

    source = write_input(tmp_path, ["http://example.org/a.jpg"])
    status = main(["estimate", str(source), "--url-col", "url"])
    _one_error_line(status, capsys.readouterr().err, "URL column 'url' not found")

    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"photo_url": [1, 2]}), numbers)
    status = main(["estimate", str(numbers)])
    _one_error_line(status, capsys.readouterr().err, "not text URLs")

    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"photo_url": pa.array([], pa.string())}), empty)
    status = main(["estimate", str(empty)])
    _one_error_line(status, capsys.readouterr().err, "holds no rows")

    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all" * 10)
    status = main(["estimate", str(garbage)])
    _one_error_line(status, capsys.readouterr().err, str(garbage))


@pytest.mark.parametrize(
    "option", [["--sample", "0"], ["--rate", "0"], ["--rate", "fast"], ["--per-host", "0"]]
)
def test_bad_options_exit_2(tmp_path: Path, capsys, option: list[str]):
    with pytest.raises(SystemExit) as exited:
        main(["estimate", str(write_input(tmp_path, ["http://example.org/a.jpg"])), *option])
    assert exited.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_the_real_entry_point_reports_a_bad_input_in_one_line(tmp_path: Path):
    done = subprocess.run(
        manager_command("estimate", tmp_path / "nowhere.csv"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    _one_error_line(done.returncode, done.stderr, "does not exist")
    assert done.stdout == ""


def test_help_describes_the_estimate(capsys):
    with pytest.raises(SystemExit):
        main(["estimate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "headers only" in text and "95% interval" in text
    assert "about 2000 is what one machine's local engine did" in text
    assert "--per-host" in text and "--allow-private" in text
    assert "exit status: 0 when the estimate was printed" in text
