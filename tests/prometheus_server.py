"""A real Prometheus server for tests: 127.0.0.1, a free port, a temporary storage folder, short
scrape interval, bounded waits, always terminated."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from metrics_support import LOOPBACK, free_port

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
T = TypeVar("T")


class PrometheusError(RuntimeError):
    pass


@dataclass
class PrometheusServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; returns ``data`` or raises PrometheusError with the error."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query evaluated now; returns the result list (vector) or [scalar]."""
        data = self.api("query", query=expr)
        return data["result"] if data["resultType"] in ("vector", "matrix") else [data["result"]]

    def vector(self, expr: str, label: str | None = None) -> dict[str, float]:
        """An instant vector as ``{value of label: value}`` (``""`` for label-less results)."""
        return {
            (sample["metric"].get(label, "") if label else ""): float(sample["value"][1])
            for sample in self.query(expr)
        }

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
    """Call ``probe`` until it returns something other than None/False, at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (OSError, PrometheusError) as exc:
            last_error, value = exc, None
        if value is not None and value is not False:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


def write_config(
    path: Path,
    jobs: dict[str, Sequence[str] | Path],
    scrape_interval: str,
    rule_files: Sequence[Path] = (),
) -> None:
    config = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": scrape_interval,
        },
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [_scrape_config(job, targets) for job, targets in jobs.items()],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _scrape_config(job: str, targets: Sequence[str] | Path) -> dict[str, Any]:
    if isinstance(targets, Path):  # file-based discovery, re-read every second
        return {
            "job_name": job,
            "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}],
        }
    return {"job_name": job, "static_configs": [{"targets": list(targets)}]}


@contextmanager
def running_prometheus(
    workdir: Path,
    jobs: dict[str, Sequence[str] | Path],
    scrape_interval: str = "500ms",
    rule_files: Sequence[Path] = (),
    start_timeout: float = 30.0,
) -> Iterator[PrometheusServer]:
    """Run Prometheus scraping ``jobs`` until the block ends. A job maps to its ``host:port``
    targets, or to a file of targets for file-based discovery."""
    if PROMETHEUS is None:
        raise PrometheusError("prometheus is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    write_config(config, jobs, scrape_interval, rule_files)
    server = None
    for _attempt in range(3):  # the free port may be taken between probing and binding
        server = _start(workdir, config, start_timeout)
        if server.process.poll() is None:
            break
        if "address already in use" not in server.log_tail():
            raise PrometheusError(f"prometheus exited at start:\n{server.log_tail()}")
    assert server is not None
    if server.process.poll() is not None:
        raise PrometheusError(f"prometheus could not bind a port:\n{server.log_tail()}")
    try:
        yield server
    finally:
        _stop(server.process)


def _start(workdir: Path, config: Path, timeout: float) -> PrometheusServer:
    """Start Prometheus on a free port; returns once it is ready or has exited."""
    assert PROMETHEUS is not None
    port = free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={LOOPBACK}:{port}",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
        )
    server = PrometheusServer(f"http://{LOOPBACK}:{port}", process, log_path)
    try:
        wait_for(
            lambda: process.poll() is not None or _ready(server.url),
            timeout,
            "prometheus to be ready",
        )
    except BaseException:
        _stop(process)
        raise
    return server


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def wait_for_targets_up(server: PrometheusServer, count: int, timeout: float = 20.0) -> None:
    """Wait until ``count`` targets report ``up == 1``."""
    wait_for(
        lambda: sum(server.vector("up", "instance").values()) >= count or None,
        timeout,
        f"{count} scrape targets up",
    )
