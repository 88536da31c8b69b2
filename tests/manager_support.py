"""Shared pieces of the manager tests: a loopback origin whose URL paths say what it answers,
URL tables pointing at it, and the manager run as a real subprocess."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web

from ldawt.manager.demo import serve_in_background
from ldawt.manager.images import make_jpeg
from ldawt.manager.inputs import (
    ClassLabels,
    estimate_rows,
    list_input_files,
    read_schema,
    resolve_columns,
    shard_tables,
)
from ldawt.manager.plan import PlannedShard, PlanOptions, ShardWriter

CLASSES = ("Apis mellifera", "Danaus plexippus", "Quercus robur")
POLL_S = 0.005
WAIT_LIMIT_S = 120.0


class Origin:
    """``/img/<n>.jpg`` is a JPEG, ``/gone/<n>.jpg`` answers 404, ``/flaky/<n>.jpg`` answers 503
    while ``flaky_down`` is set. Counts the requests per path."""

    def __init__(self, delay_s: float = 0.0, image_bytes: int = 3000) -> None:
        self.delay_s = delay_s
        self.image_bytes = image_bytes
        self.hits: Counter[str] = Counter()
        self.flaky_down = True
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{kind}/{name}", self._serve)
        return app

    async def _serve(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        kind = request.match_info["kind"]
        if kind == "gone" or (kind == "flaky" and self.flaky_down):
            raise web.HTTPNotFound() if kind == "gone" else web.HTTPServiceUnavailable()
        return web.Response(
            body=make_jpeg(request.path, self.image_bytes), content_type="image/jpeg"
        )

    def url(self, kind: str, n: int) -> str:
        return f"http://127.0.0.1:{self.port}/{kind}/{n}.jpg"


@contextmanager
def running_origin(delay_s: float = 0.0, image_bytes: int = 3000) -> Iterator[Origin]:
    origin = Origin(delay_s, image_bytes)
    with serve_in_background(origin.app()) as port:
        origin.port = port
        yield origin


@contextmanager
def serving(app: web.Application, listeners: list[socket.socket]) -> Iterator[None]:
    """Serve ``app`` on each bound socket of ``listeners`` from a background thread."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    loop.run_until_complete(runner.setup())
    for listener in listeners:
        loop.run_until_complete(web.SockSite(runner, listener).start())
    thread = threading.Thread(target=loop.run_forever, name="test-origin", daemon=True)
    thread.start()
    try:
        yield
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def bound_socket(address: str, port: int = 0) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((address, port))
    return listener


@contextmanager
def origin_on(addresses: list[str], delay_s: float = 0.0) -> Iterator[int]:
    """One aiohttp app answering on every address (same port): /<name>.jpg is a JPEG, after
    ``delay_s``."""

    async def serve(request: web.Request) -> web.Response:
        if request.path == "/robots.txt":
            raise web.HTTPNotFound()
        await asyncio.sleep(delay_s)
        return web.Response(body=make_jpeg(request.path, 2000), content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    first = bound_socket(addresses[0])
    port = first.getsockname()[1]
    with serving(app, [first, *(bound_socket(address, port) for address in addresses[1:])]):
        yield port


def write_table(path: Path, columns: dict[str, list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def url_table(path: Path, urls: list[str | None], **extra: list) -> Path:
    """A table of ``photo_url`` with classes cycling over CLASSES and ``photo_id`` = position."""
    n = len(urls)
    columns: dict[str, list] = {
        "photo_url": urls,
        "taxon_name": [CLASSES[i % len(CLASSES)] for i in range(n)],
        "photo_id": list(range(n)),
    }
    columns.update(extra)
    return write_table(path, columns)


def run_python(code: str, env: dict[str, str] | None = None) -> str:
    """The standard output of ``code`` run by a fresh interpreter (exit 0 required)."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    return done.stdout.strip()


def manager_command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "ldawt.manager.cli", *map(str, args)]


def run_manager(*args: str | Path, timeout: float = WAIT_LIMIT_S) -> subprocess.CompletedProcess:
    return subprocess.run(
        manager_command(*args), capture_output=True, text=True, timeout=timeout, check=False
    )


def start_manager(*args: str | Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as handle:
        return subprocess.Popen(manager_command(*args), stdout=handle, stderr=handle)


def wait_for(condition: Callable[[], bool], what: str, process: subprocess.Popen | None = None):
    """Poll ``condition`` until true; fail if the process ends first or the limit passes."""
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"manager exited ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(POLL_S)


def partial_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.name.endswith(".partial"))


@contextmanager
def mounted_filesystem(folder: Path, fstype: str, options: str) -> Iterator[Path]:
    """A fresh memory filesystem (tmpfs, ramfs) at ``folder`` (as root) with mount ``options``,
    unmounted afterwards."""
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", fstype, "-o", options, fstype, str(folder)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {fstype} here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        _unmount(folder)


UNMOUNT_TRIES = 20
UNMOUNT_PAUSE_S = 0.25


def _unmount(folder: Path) -> None:
    """Unmount ``folder``, waiting a few seconds for whatever still uses it to let go (a
    thread or process of the test on its way out). Still busy after that: detached anyway (no
    mount left behind) and reported with the processes that hold it."""
    for _ in range(UNMOUNT_TRIES):
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode == 0:
            return
        time.sleep(UNMOUNT_PAUSE_S)
    holders = _holders(folder)
    subprocess.run(["umount", "--lazy", str(folder)], check=True)
    pytest.fail(f"{folder} stayed busy; held by {holders or 'no open file or cwd found'}")


def _holders(folder: Path) -> list[str]:
    """The processes (pid: command) with a working directory or an open file under ``folder``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = [proc / "cwd", *(proc / "fd").iterdir()]
            if any(str(link.readlink()).startswith(str(folder)) for link in links):
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append(f"{proc.name}: {command.strip()[:200]}")
        except OSError:  # gone, or not ours to read
            continue
    return found


def plan_source(
    source: Path,
    shard_dir: Path,
    spill_dir: Path,
    options: PlanOptions,
    columns: tuple[str | None, str | None, str | None] = (None, None, None),
    passthrough: tuple[str, ...] = (),
) -> tuple[ShardWriter, list[PlannedShard]]:
    """``source`` planned by the real planner as ``submit`` does; ``columns``: the URL, class
    and key columns asked for (None: found by name)."""
    files = list_input_files(source)
    mapped = resolve_columns(read_schema(files[0]), *columns, passthrough)
    writer = ShardWriter(shard_dir, spill_dir, options)
    return writer, writer.write(shard_tables(files, mapped, ClassLabels()), estimate_rows(files))
