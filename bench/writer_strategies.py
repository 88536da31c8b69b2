"""Micro-benchmark: how to append arriving images to one tar without stalling the event loop.

Same images (the bench corpus, cycled), same uvloop loop, same producers (``--producers``
tasks handing over one image each per loop turn), same tar bytes; only the I/O path differs:

* ``inline``   - ``tarfile.addfile`` called on the loop (the naive way; the baseline);
* ``aiofiles`` - ``await f.write(header + data + padding)`` through aiofiles (thread pool per
  call), serialised by an ``asyncio.Lock``;
* ``thread``   - one writer thread fed by a bounded ``queue.Queue`` (slots taken with an
  ``asyncio.Semaphore`` so a full queue suspends the producer, never blocks the loop).

Each ends with flush + fsync. A heartbeat task sleeps 1 ms at a time and records how late it
wakes: the loop lag. Prints images/s, MB/s, CPU and the lag percentiles per strategy.

    python3 bench/writer_strategies.py [--images 5000] [--repeat 2]   # uses the bench venv
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import queue
import resource
import sys
import tarfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
STRATEGIES = ("inline", "aiofiles", "thread")


def tar_entry(name: str, data: bytes, mtime: int) -> bytes:
    """One tar member: header, data, zero padding to the 512-byte block."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, 0o644
    pad = (-len(data)) % tarfile.BLOCKSIZE
    return info.tobuf(tarfile.GNU_FORMAT) + data + b"\0" * pad


def tar_trailer(written: int) -> bytes:
    """Two zero blocks, then zeros up to tarfile's 10 KiB record (what tarfile.close does)."""
    end = written + 2 * tarfile.BLOCKSIZE
    return b"\0" * (2 * tarfile.BLOCKSIZE + (-end) % tarfile.RECORDSIZE)


class LagMeter:
    """A task that sleeps ``tick_s`` repeatedly and records how late each wake-up is."""

    def __init__(self, tick_s: float = 0.001) -> None:
        self.tick_s, self.lags = tick_s, []
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.tick_s)
            self.lags.append(time.perf_counter() - t - self.tick_s)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def pct(self, q: float) -> float:
        s = sorted(self.lags) or [0.0]
        return s[min(len(s) - 1, int(q * len(s)))]


async def _produce(images: list[bytes], n: int, producers: int, put) -> None:
    """``producers`` tasks share the image indices; each yields once per image (an arrival)."""
    todo = iter(range(n))

    async def one() -> None:
        for i in todo:
            await asyncio.sleep(0)
            await put(f"{i:08d}.jpg", images[i % len(images)])

    await asyncio.gather(*(one() for _ in range(producers)))


async def write_inline(path: Path, images: list[bytes], n: int, producers: int) -> None:
    import io

    with open(path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as tf:

        async def put(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tf.addfile(info, io.BytesIO(data))

        await _produce(images, n, producers, put)
        tf.close()
        f.flush()
        os.fsync(f.fileno())


async def write_aiofiles(path: Path, images: list[bytes], n: int, producers: int) -> None:
    import aiofiles

    lock = asyncio.Lock()
    written = 0
    async with aiofiles.open(path, "wb") as f:

        async def put(name: str, data: bytes) -> None:
            nonlocal written
            entry = tar_entry(name, data, int(time.time()))
            async with lock:
                await f.write(entry)
                written += len(entry)

        await _produce(images, n, producers, put)
        await f.write(tar_trailer(written))
        await f.flush()
        await asyncio.get_running_loop().run_in_executor(None, os.fsync, f.fileno())


async def write_thread(
    path: Path, images: list[bytes], n: int, producers: int, depth: int = 64
) -> None:
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(depth)
    q: queue.Queue = queue.Queue(maxsize=depth)
    errors: list[BaseException] = []

    def writer() -> None:
        written = 0
        try:
            with open(path, "wb") as f:
                while (item := q.get()) is not None:
                    entry = tar_entry(*item, int(time.time()))
                    f.write(entry)
                    written += len(entry)
                    loop.call_soon_threadsafe(slots.release)
                f.write(tar_trailer(written))
                f.flush()
                os.fsync(f.fileno())
        except BaseException as e:  # reported by the loop side below
            errors.append(e)
            while q.get() is not None:  # keep draining so producers never wait forever
                loop.call_soon_threadsafe(slots.release)

    thread = threading.Thread(target=writer, name="tar-writer", daemon=True)
    thread.start()

    async def put(name: str, data: bytes) -> None:
        await slots.acquire()  # a free slot means put_nowait cannot block
        q.put_nowait((name, data))

    try:
        await _produce(images, n, producers, put)
    finally:
        await slots.acquire()  # room for the sentinel
        q.put_nowait(None)
        await loop.run_in_executor(None, thread.join, 60)
    if errors:
        raise errors[0]


WRITERS: dict[str, Callable[[Path, list[bytes], int, int], Awaitable[None]]] = {
    "inline": write_inline,
    "aiofiles": write_aiofiles,
    "thread": write_thread,
}


async def measure(name: str, path: Path, images: list[bytes], n: int, producers: int) -> dict:
    meter = LagMeter()
    meter.start()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    await asyncio.wait_for(WRITERS[name](path, images, n, producers), timeout=600)
    elapsed = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    await meter.stop()
    with tarfile.open(path) as tf:
        members = sum(1 for m in tf if m.isfile())
    if members != n:
        raise RuntimeError(f"{name}: tar holds {members} members, {n} written")
    size = path.stat().st_size
    path.unlink()
    return {
        "strategy": name,
        "images_s": n / elapsed,
        "mb_s": size / 1e6 / elapsed,
        "cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
        "lag_p50_ms": meter.pct(0.50) * 1e3,
        "lag_p99_ms": meter.pct(0.99) * 1e3,
        "lag_max_ms": max(meter.lags or [0.0]) * 1e3,
    }


def load_images(corpus_img: Path) -> list[bytes]:
    files = sorted(corpus_img.glob("*.jpg"))
    if not files:
        import corpus

        corpus.build_corpus(corpus_img.parent)
        files = sorted(corpus_img.glob("*.jpg"))
    return [p.read_bytes() for p in files]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="tar writer strategies on one event loop")
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--producers", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=2, help="rounds; the best round is shown")
    ap.add_argument("--work", type=Path, default=BENCH_DIR / ".work")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(BENCH_DIR))
    import benchenv

    benchenv.reexec_in_bench_venv(Path(__file__), args.work.resolve())
    images = load_images(args.work / "corpus" / "img")
    out_dir = args.work / "writer"
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        import uvloop

        new_loop = uvloop.new_event_loop
    except ImportError:
        new_loop = asyncio.new_event_loop
    avg = sum(map(len, images)) / len(images)
    print(
        f"{args.images:,} images (avg {avg / 1e3:.0f} KB, {len(images)} distinct), "
        f"{args.producers} producers, best of {args.repeat}, fsync included"
    )
    best: dict[str, dict] = {}
    for _ in range(args.repeat):
        for name in args.strategies.split(","):
            loop = new_loop()
            try:
                res = loop.run_until_complete(
                    measure(name, out_dir / f"{name}.tar", images, args.images, args.producers)
                )
            finally:
                loop.close()
            if name not in best or res["images_s"] > best[name]["images_s"]:
                best[name] = res
    print(
        f"{'strategy':<10}{'images/s':>10}{'MB/s':>8}{'CPU s':>8}"
        f"{'lag p50 ms':>12}{'lag p99 ms':>12}{'lag max ms':>12}"
    )
    for r in best.values():
        print(
            f"{r['strategy']:<10}{r['images_s']:>10,.0f}{r['mb_s']:>8,.0f}{r['cpu_s']:>8.2f}"
            f"{r['lag_p50_ms']:>12.2f}{r['lag_p99_ms']:>12.2f}{r['lag_max_ms']:>12.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
