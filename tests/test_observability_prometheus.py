"""A real Prometheus server on 127.0.0.1 scraping real metrics endpoints: first the daemon's
endpoint fed by HTTP traffic made here, then a whole job (daemon and manager) against a loopback
aiohttp origin, compared with the job's manifests."""

from __future__ import annotations

import asyncio
import json
import select
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web

from ldawt.daemon import metrics as daemon_metrics
from ldawt.daemon.contract import Status, status_for_http
from ldawt.manager import metrics as manager_metrics
from ldawt.manager.demo import serve_in_background
from ldawt.manager.images import make_jpeg

try:  # tests/ may be a package or a plain folder on sys.path
    from . import observability_exprs as ox
    from . import prometheus_server as prom
except ImportError:
    import observability_exprs as ox
    import prometheus_server as prom

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.skipif(prom.PROMETHEUS is None, reason="needs prometheus (Debian package)"),
]

LOOPBACK = "127.0.0.1"
JOB_SCRIPT = Path(__file__).with_name("observability_job.py")


# --- a loopback origin ----------------------------------------------------------------------

# Path prefix -> what the origin answers; rows cycle through KINDS.
KINDS = ("ok", "ok", "ok", "ok", "ok", "ok", "ok", "ok", "missing", "busy", "broken", "html")


async def _answer(request: web.Request) -> web.StreamResponse:
    kind = request.match_info["kind"]
    if kind == "ok":
        await asyncio.sleep(0.1)  # the job lasts long enough to be scraped while it runs
        return web.Response(body=make_jpeg(request.path, 4000), content_type="image/jpeg")
    if kind == "missing":
        raise web.HTTPNotFound()
    if kind == "busy":
        raise web.HTTPTooManyRequests(headers={"Retry-After": "0"})
    if kind == "broken":
        raise web.HTTPInternalServerError()
    return web.Response(text="<html><body>sign in</body></html>", content_type="text/html")


def origin_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/{kind}/{n}", _answer)
    return app


@pytest.fixture
def origin() -> Iterator[int]:
    with serve_in_background(origin_app()) as port:
        yield port


# --- the daemon endpoint fed by traffic made here ---------------------------------------------


async def _traffic(port: int, rows: int) -> Counter[str]:
    """Download ``rows`` URLs, recording each attempt as the daemon's fetcher does."""
    host_labels = daemon_metrics.BoundedHostLabels()
    statuses: Counter[str] = Counter()
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> None:
            url = f"http://{LOOPBACK}:{port}/{KINDS[i % len(KINDS)]}/{i}"
            daemon_metrics.IN_FLIGHT.inc()
            started = time.monotonic()
            try:
                async with session.get(url) as response:
                    daemon_metrics.TIME_TO_FIRST_BYTE.observe(time.monotonic() - started)
                    body = await response.read()
                    daemon_metrics.DOWNLOAD_BYTES.inc(len(body))
                    daemon_metrics.observe_response(host_labels(LOOPBACK), response.status)
                    ok = response.status == 200 and body.startswith(b"\xff\xd8")
                    status = Status.OK if ok else status_for_http(response.status)
                    if response.status == 200 and not ok:
                        status = Status.NOT_IMAGE
            finally:
                daemon_metrics.IN_FLIGHT.dec()
                daemon_metrics.REQUEST_DURATION.observe(time.monotonic() - started)
            daemon_metrics.IMAGES.labels(status).inc()
            statuses[status] += 1

        await asyncio.gather(*(one(i) for i in range(rows)))
    return statuses


def registry_vector(name: str, label: str) -> dict[str, float]:
    values = {}
    for family in daemon_metrics.REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name:
                values[sample.labels[label]] = sample.value
    return values


@pytest.fixture
def daemon_endpoint() -> Iterator[int]:
    daemon_metrics.stop_metrics_server()
    yield daemon_metrics.start_metrics_server(LOOPBACK, 0, 1)
    daemon_metrics.stop_metrics_server()


@pytest.fixture
def manager_endpoint() -> Iterator[int]:
    manager_metrics.stop_manager_metrics_server()
    yield manager_metrics.start_manager_metrics_server(LOOPBACK, 0)
    manager_metrics.stop_manager_metrics_server()


def sample(registry_name: str, **labels: str) -> float:
    value = daemon_metrics.REGISTRY.get_sample_value(registry_name, labels)
    return 0.0 if value is None else value


def test_prometheus_scrapes_daemon_traffic_and_evaluates_every_expression(
    tmp_path: Path, origin: int, daemon_endpoint: int, manager_endpoint: int
) -> None:
    jobs = {
        "ldawt-worker": [f"{LOOPBACK}:{daemon_endpoint}"],
        "ldawt-manager": [f"{LOOPBACK}:{manager_endpoint}"],
    }
    with prom.running_prometheus(tmp_path / "prometheus", jobs, rule_files=[ox.ALERTS]) as server:
        prom.wait_for_targets_up(server, 2)
        before = registry_vector("ldawt_images_total", "status")
        made = asyncio.run(_traffic(origin, 120))
        manager_metrics.record_shard_result({"ok": True, "counts": dict(made), "bytes": 1})
        after = registry_vector("ldawt_images_total", "status")
        # The registry counted exactly the traffic (other tests of this process count too).
        assert {s: after[s] - before.get(s, 0) for s in made} == made
        assert made == {"ok": 80, "http_404": 10, "http_429": 10, "http_500": 10, "not_image": 10}

        def scraped_all() -> bool:
            seen = server.vector('ldawt_images_total{job="ldawt-worker"}', "status")
            return all(seen.get(s) == after[s] for s in made)

        prom.wait_for(scraped_all, 20, "Prometheus to scrape the final counters")
        requests = server.vector('ldawt_request_duration_seconds_count{job="ldawt-worker"}')
        assert requests[""] == sample("ldawt_request_duration_seconds_count")
        throttled = server.vector("ldawt_host_throttled_responses_total", "host")
        assert throttled[LOOPBACK] == sample("ldawt_host_throttled_responses_total", host=LOOPBACK)
        assert (
            server.vector(
                "histogram_quantile(0.95, sum(rate("
                "ldawt_request_duration_seconds_bucket[1m])) by (le))"
            )[""]
            > 0
        )

        # Every dashboard and rule expression evaluates on the real server without an error.
        failures = {}
        for where, expr in ox.all_exprs():
            try:
                server.api("query", query=expr)
            except prom.PrometheusError as exc:
                failures[where] = str(exc)
        assert not failures

        def rules_evaluated() -> list[dict[str, Any]] | None:
            rules = [r for g in server.api("rules")["groups"] for r in g["rules"]]
            return rules if all(r["health"] != "unknown" for r in rules) else None

        rules = prom.wait_for(rules_evaluated, 20, "the alert rules to be evaluated")
        assert {r["name"] for r in rules} == {name for name, _ in ox.rule_exprs()}
        assert all(r["health"] == "ok" for r in rules), [r.get("lastError") for r in rules]


# --- a whole job: daemon and manager scraped while it runs ------------------------------------


def read_line(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError(f"no line from the job process within {timeout}s")
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"the job process exited with {process.wait(timeout=10)}")
    return json.loads(line)


def manifest_histogram(out: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    manifests = sorted(out.rglob("*.manifest.parquet"))
    assert manifests
    for path in manifests:
        counts.update(pq.read_table(path, columns=["status"]).column("status").to_pylist())
    return counts


def write_input(path: Path, port: int, rows: int, duplicates: int) -> None:
    """``rows`` URLs cycling through KINDS; the last ``duplicates`` repeat the first ones."""
    urls = [f"http://{LOOPBACK}:{port}/{KINDS[i % len(KINDS)]}/{i}" for i in range(rows)]
    urls[rows - duplicates :] = urls[:duplicates]
    table = pa.table(
        {
            "photo_url": urls,
            "taxon_name": [f"class{i % 3}" for i in range(rows)],
            "photo_id": list(range(rows)),
        }
    )
    pq.write_table(table, path)


def test_prometheus_during_a_real_job_matches_the_manifests(tmp_path: Path, origin: int) -> None:
    rows, shard_size, duplicates = 240, 60, 12
    write_input(tmp_path / "input.parquet", origin, rows, duplicates)
    out = tmp_path / "out"
    fetch = {
        "allow_private": True,
        "concurrency": 8,
        "per_host": 8,
        "retries": 1,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "retry_after_max": 0.1,
    }
    args = {
        "input": str(tmp_path / "input.parquet"),
        "out": str(out),
        "shard_size": shard_size,
        "fetch": fetch,
    }
    log = (tmp_path / "job.log").open("w")
    job = subprocess.Popen(
        [sys.executable, str(JOB_SCRIPT), json.dumps(args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        ports = read_line(job, 60)
        jobs = {
            "ldawt-worker": [f"{LOOPBACK}:{ports['daemon_port']}"],
            "ldawt-manager": [f"{LOOPBACK}:{ports['manager_port']}"],
        }
        with prom.running_prometheus(tmp_path / "prometheus", jobs) as server:
            prom.wait_for_targets_up(server, 2)
            assert job.stdin is not None
            job.stdin.write("run\n")
            job.stdin.flush()
            assert read_line(job, 240) == {"exit_status": 0}
            expected = manifest_histogram(out)
            assert sum(expected.values()) == rows
            assert expected[Status.OK] >= (rows - duplicates) * 8 // 12
            assert expected["http_429"] >= (rows - duplicates) // 12

            finished = time.time()
            prom.wait_for(
                lambda: min(server.vector("timestamp(up)", "job").values()) > finished + 0.1,
                20,
                "a scrape of both endpoints after the job",
            )
            daemon = server.vector(
                'sum by (status) (ldawt_images_total{job="ldawt-worker"})', "status"
            )
            fleet = server.vector(
                'sum by (status) (ldawt_fleet_images_total{job="ldawt-manager"})', "status"
            )
            nonzero = {s: n for s, n in daemon.items() if n}
            assert nonzero == dict(expected), "daemon counters differ from the manifests"
            assert {s: n for s, n in fleet.items() if n} == dict(expected)
            # The images counter equals the manifests' success count, failures by status too.
            assert daemon[Status.OK] == expected[Status.OK]
            failures = {s: n for s, n in nonzero.items() if s != Status.OK}
            assert failures == {s: n for s, n in expected.items() if s != Status.OK}

            shards = rows // shard_size
            done = server.vector('ldawt_shards_finished_total{job="ldawt-worker"}', "outcome")
            assert done == {"done": shards, "failed": 0}
            states = server.vector("ldawt_manager_shards", "state")
            assert states == {"pending": 0, "running": 0, "done": shards, "failed": 0}
            committed = server.vector("ldawt_manager_rows_total", "outcome")
            assert committed["ok"] == expected[Status.OK]
            assert committed["duplicate"] == expected[Status.DUPLICATE]
            assert committed["failed"] == rows - expected[Status.OK] - expected[Status.DUPLICATE]
            # Scraped while the job ran: a value between the first and the last one.
            history = server.query('ldawt_images_total{job="ldawt-worker",status="ok"}[10m]')
            values = [float(v) for _, v in history[0]["values"]]
            assert any(0 < v < expected[Status.OK] for v in values), values
            retries = server.vector('sum(ldawt_retries_total{job="ldawt-worker"})')
            assert retries[""] >= (rows - duplicates) // 12  # 429 and 500 are retried once
    finally:
        if job.stdin is not None:
            job.stdin.close()
        try:
            job.wait(timeout=30)
        except subprocess.TimeoutExpired:
            job.kill()
            job.wait(timeout=10)
        log.close()


def test_file_discovery_follows_the_targets_the_manager_writes(
    tmp_path: Path, daemon_endpoint: int
) -> None:
    targets = tmp_path / "targets" / "workers.json"
    manager_metrics.write_worker_targets(targets, [])
    jobs: dict[str, Any] = {"ldawt-worker": targets}
    with prom.running_prometheus(tmp_path / "prometheus", jobs) as server:
        instance = f"{LOOPBACK}:{daemon_endpoint}"
        manager_metrics.write_worker_targets(targets, [instance, instance], {"site": "test"})
        up = prom.wait_for(
            lambda: server.vector('up{job="ldawt-worker",site="test"}', "instance") or None,
            30,
            "the written target to be scraped",
        )
        assert up == {instance: 1.0}
        manager_metrics.write_worker_targets(targets, [])

        def active() -> list[dict[str, Any]]:
            return server.api("targets", state="active")["activeTargets"]

        prom.wait_for(lambda: not active(), 30, "the removed target to be dropped")
    assert json.loads(targets.read_text()) == []
