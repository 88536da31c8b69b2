"""Per-shard overhead of the TaskVine FunctionCall path, against the in-process engine and the
seed's model (a plain TaskVine Task per shard that starts a fresh Python process).

Runs where TaskVine is installed, e.g. inside the Debian 13 root of the tests:

    bash tests/debian13/root.sh run python bench/taskvine_overhead.py            # ~1 min
    bash tests/debian13/root.sh run python bench/taskvine_overhead.py --rounds 2

The same shards (``--shards`` x ``--rows``, 1,000-row shards by default) against the same
loopback origin (aiohttp in a process of its own), in one run, one shard at a time in every mode:

- ``in-process``: the local engine with one worker: every shard on this process's warm runtime;
- ``functioncall``: the TaskVine engine with one local ``ldawt-worker`` holding one library
  process, shard files returned to the manager as declared outputs (as from any worker);
- ``functioncall-in-place``: the same as the embedded default (``--local-workers`` without
  ``--port``): shard files written in place, then moved into the output folder;
- ``task``: the seed's model on an ``ldawt-worker`` of one core: a plain Task per shard running
  ``python3 run_one.py``, a fresh interpreter that imports ldawt, runs the shard and exits.

Per-shard overhead is the time between shards that is not the shard's own work:
(wall time - the sum of the shards' run times as ``run_shard`` measures them) / shards, taken
from the first result to the last (steady state: start-up is reported apart). A fresh process
also pays for cold connections inside ``run_shard``, so the task row's overhead understates it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldawt.daemon.contract import FetchOptions, ShardSpec
from ldawt.daemon.worker.resources import detect_cores
from ldawt.manager.engines.local import LocalEngine
from ldawt.manager.engines.taskvine import TaskVineEngine
from ldawt.manager.engines.vine_options import VineOptions

# The hand-written shard input file shared with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from shard_input import write_shard_input

MODES = ("in-process", "functioncall", "functioncall-in-place", "task")
DISTINCT_IMAGES = 64
RUN_ONE = """\
import json, os, sys, time
started = time.monotonic()
from ldawt.daemon.shard import run_shard
imported = time.monotonic()
spec = json.load(open("spec.json"))
spec["input_path"] = os.path.abspath("input.parquet")
spec["output_dir"] = os.path.abspath("out")
result = run_shard(spec)
result["import_s"] = imported - started
json.dump(result, open("result.json", "w"))
sys.exit(0 if result["ok"] else 1)
"""


def serve_origin(image_bytes: int, ports: Any, stop: Any) -> None:
    """The origin process: a few distinct JPEGs of ``image_bytes``, chosen by the path."""
    from aiohttp import web

    from ldawt.manager.demo import serve_in_background
    from ldawt.manager.images import make_jpeg

    bodies = [make_jpeg(str(i), image_bytes) for i in range(DISTINCT_IMAGES)]

    async def image(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        return web.Response(body=bodies[n % DISTINCT_IMAGES], content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/img/{n}.jpg", image)
    with serve_in_background(app) as port:
        ports.put(port)
        stop.wait()


@contextlib.contextmanager
def origin(image_bytes: int) -> Iterator[int]:
    spawn = multiprocessing.get_context("spawn")
    ports, stop = spawn.Queue(), spawn.Event()
    proc = spawn.Process(target=serve_origin, args=(image_bytes, ports, stop), daemon=True)
    proc.start()
    try:
        yield ports.get(timeout=60)
    finally:
        stop.set()
        proc.join(timeout=30)


def make_inputs(folder: Path, port: int, shards: int, rows: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        numbers = range(s * rows, (s + 1) * rows)
        paths.append(folder / f"{s:05d}.parquet")
        write_shard_input(
            paths[-1],
            [f"http://127.0.0.1:{port}/img/{n}.jpg" for n in numbers],
            [f"c{n % 10}" for n in numbers],
            [str(n) for n in numbers],
            [n % 10 for n in numbers],
            s * rows,
        )
    return paths


def specs_for(inputs: list[Path], out: Path) -> list[ShardSpec]:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    fetch = FetchOptions(allow_private=True)
    return [ShardSpec(p.stem, str(p), str(out), fetch=fetch) for p in inputs]


@dataclass
class Row:
    mode: str
    shards: int
    rows: int
    ok: int
    wall_s: float
    first_s: float  # start to the first result: start-up plus one shard
    steady_s: float  # first result to last
    work_s: float  # run_shard time of shards 2..N
    extra: str = ""

    @property
    def steady_images_s(self) -> float:
        return self.rows * (self.shards - 1) / self.shards / self.steady_s

    @property
    def overhead_ms(self) -> float:
        return 1000 * (self.steady_s - self.work_s) / (self.shards - 1)


def timed(mode: str, results: Iterator[dict[str, Any]], rows: int) -> Row:
    started = time.monotonic()
    stamps, done = [], []
    for result in results:
        stamps.append(time.monotonic())
        done.append(result)
    failed = [r for r in done if not r.get("ok")]
    if failed:
        raise RuntimeError(f"{mode}: {len(failed)} shard(s) failed: {failed[0].get('error')}")
    order = sorted(range(len(done)), key=lambda i: stamps[i])
    work = sum(done[i]["elapsed_s"] for i in order[1:])
    extra = ""
    if "import_s" in done[0]:
        extra = f"imports {1000 * sum(r['import_s'] for r in done) / len(done):.0f} ms/shard"
    return Row(
        mode,
        len(done),
        rows * len(done),
        sum(r["counts"].get("ok", 0) for r in done),
        stamps[order[-1]] - started,
        stamps[order[0]] - started,
        stamps[order[-1]] - stamps[order[0]],
        work,
        extra,
    )


@contextlib.contextmanager
def ldawt_worker(port: int, workspace: Path) -> Iterator[subprocess.Popen]:
    """One 1-core worker, as deployed: ``ldawt-worker`` running vine_worker."""
    workspace.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ldawt.daemon.worker", f"--manager=127.0.0.1:{port}"]
    argv += [f"--workspace={workspace}", "--cores=1", "--memory-mb=4000", "--disk-mb=8000"]
    with open(workspace / "worker.log", "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def run_in_process(specs: list[ShardSpec], rows: int, work: Path) -> Row:
    return timed("in-process", LocalEngine(1).run(specs, lambda _delta: None), rows)


def run_functioncall(specs: list[ShardSpec], rows: int, work: Path) -> Row:
    # The engine's own local worker (ldawt-worker with every core) holding one library process;
    # an explicit port, so shard files travel back to the manager as they would from elsewhere.
    options = VineOptions(port=0, local_workers=1, library_cores=detect_cores())
    return timed("functioncall", TaskVineEngine(options).run(specs, lambda _delta: None), rows)


def run_functioncall_in_place(specs: list[ShardSpec], rows: int, work: Path) -> Row:
    # The embedded default (--local-workers, no --port): shard files written in place.
    options = VineOptions(local_workers=1, library_cores=detect_cores())
    results = TaskVineEngine(options).run(specs, lambda _delta: None)
    return timed("functioncall-in-place", results, rows)


def run_tasks(specs: list[ShardSpec], rows: int, work: Path) -> Row:
    from ndcctools.taskvine import Manager, Task

    m = Manager(port=0, run_info_path=str(work / "task-run-info"))
    script = work / "run_one.py"
    script.write_text(RUN_ONE)
    staged = work / "task-results"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()

    def results() -> Iterator[dict[str, Any]]:
        script_file = m.declare_file(str(script), cache=True)
        for spec in specs:
            task = Task("python3 run_one.py")
            task.set_tag(spec.shard_id)
            task.add_input(script_file, "run_one.py")
            task.add_input(m.declare_buffer(json.dumps(spec.to_dict()).encode()), "spec.json")
            task.add_input(m.declare_file(spec.input_path), "input.parquet")
            task.add_output(m.declare_file(str(staged / spec.shard_id)), "out")
            task.add_output(m.declare_file(str(staged / f"{spec.shard_id}.json")), "result.json")
            task.set_cores(1)
            m.submit(task)
        for _ in specs:
            task = None
            while task is None:
                task = m.wait(1)
            if not task.successful():
                raise RuntimeError(f"task {task.tag} failed: {task.result}: {task.std_output}")
            yield json.loads((staged / f"{task.tag}.json").read_text())

    try:
        with ldawt_worker(m.port, work / "task-worker"):
            return timed("task", results(), rows)
    finally:
        m._free()


RUNNERS: dict[str, Callable[[list[dict[str, Any]], int, Path], Row]] = {
    "in-process": run_in_process,
    "functioncall": run_functioncall,
    "functioncall-in-place": run_functioncall_in_place,
    "task": run_tasks,
}


def table(rows: list[Row]) -> str:
    base = {r.mode: r for r in rows}
    lines = [
        "| mode | shards x rows | ok | wall s | start-up + 1st shard s | steady images/s "
        "| vs in-process | overhead ms/shard | |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ratio = (
            r.steady_images_s / base["in-process"].steady_images_s if "in-process" in base else 0
        )
        lines.append(
            f"| {r.mode} | {r.shards} x {r.rows // r.shards:,} | {r.ok:,} | {r.wall_s:.1f} "
            f"| {r.first_s:.2f} | {r.steady_images_s:,.0f} | {ratio:.2f} | {r.overhead_ms:.0f} "
            f"| {r.extra} |"
        )
    return "\n".join(lines)


def verdict(rows: list[Row]) -> str:
    best = {r.mode: r for r in rows}
    inproc, task = best["in-process"], best["task"]
    lines = []
    for mode in ("functioncall", "functioncall-in-place"):
        fc = best[mode]
        speed = fc.steady_images_s / inproc.steady_images_s
        # An overhead at or below zero (within the measuring noise) counts as 1 ms.
        ratio = task.overhead_ms / max(1.0, fc.overhead_ms)
        lines.append(
            f"- {mode}: images/s = {speed:.0%} of in-process (target >= 90%: "
            f"{'met' if speed >= 0.9 else 'NOT met'}); task-per-shard overhead / its overhead "
            f"= {ratio:.1f}x (target >= 5x: {'met' if ratio >= 5 else 'NOT met'})"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=20, help="shards per mode (default 20)")
    parser.add_argument("--rows", type=int, default=1000, help="rows per shard (default 1,000)")
    parser.add_argument("--image-kb", type=int, default=20, help="image size (default 20 KB)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; best kept")
    parser.add_argument("--modes", default=",".join(MODES), help="modes to run, comma-separated")
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/ldawt-taskvine-overhead"), help="scratch folder"
    )
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    shutil.rmtree(args.work, ignore_errors=True)
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    kept: dict[str, Row] = {}
    seen: dict[str, list[float]] = {m: [] for m in modes}
    with origin(args.image_kb * 1024) as port:
        inputs = make_inputs(args.work / "job" / "shards", port, args.shards, args.rows)
        for _ in range(args.rounds):
            for mode in modes:
                specs = specs_for(inputs, args.work / mode)
                row = RUNNERS[mode](specs, args.rows, args.work)
                seen[mode].append(row.steady_images_s)
                if mode not in kept or row.steady_images_s > kept[mode].steady_images_s:
                    kept[mode] = row
                print(f"{mode}: {row.steady_images_s:,.0f} images/s", file=sys.stderr)
    rows = [kept[m] for m in modes]
    print(table(rows))
    print()
    print(
        f"rounds: {args.rounds} (images/s per round: "
        + "; ".join(f"{m} {', '.join(f'{v:,.0f}' for v in seen[m])}" for m in modes)
        + f"); load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; "
        f"{os.cpu_count()} CPUs; whole run {time.monotonic() - started:.0f} s"
    )
    if set(MODES) <= set(modes):
        print()
        print(verdict(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
