"""The warm state of one daemon process: a uvloop event loop in its own thread, one Fetcher
(one aiohttp connection pool) per set of pool options, and a pool of threads for pixel work
(decoding, resizing and encoding release the GIL), kept across shards.

The local engine's worker processes and the TaskVine library process both hold one runtime;
``get_runtime`` creates it on first use and then always returns the same one.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import ctypes
import gc
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from PIL import Image

from . import metrics
from .fetcher.fetch import Fetcher
from .fetcher.options import FetchOptions
from .worker.resources import detect_cores

T = TypeVar("T")

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
TLS_READ_BUFFER = 256 * 1024  # uvloop's read buffer, one per TLS connection
PILLOW_BLOCK_SIZE = 64 * 1024  # under TLS_READ_BUFFER: Pillow's blocks stay on the heap
PILLOW_BLOCKS_KEPT = 8
YOUNG_OBJECTS_PER_COLLECTION = 10_000  # CPython's default: 700 (2,000 from 3.13)


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # uvloop is optional on platforms it does not support
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def keep_tls_buffers_mapped() -> None:
    """Give uvloop's TLS read buffers mappings of their own instead of heap space.

    Left alone, glibc raises its mmap threshold past a block's size once such a block is freed,
    so after the first closed connection these buffers are carved from the heap, whose freed
    pages stay resident. With the threshold pinned at their size, a buffer costs only the pages
    its reads touched and goes back to the system with its connection: about 30 MB less peak
    RSS at 256 TLS connections (bench/RESULTS.md). Most images are smaller and stay on the heap.
    """
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, TLS_READ_BUFFER)


def keep_images_on_the_heap() -> None:
    """Let Pillow allocate images in blocks under the pinned mmap threshold, and keep a few
    freed ones. Its default 16 MiB blocks would each be a fresh mapping whose pages fault in
    (``keep_tls_buffers_mapped``): a fifth of a keep_ratio 512 resize's CPU, measured by
    bench/pillow_blocks.py (bench/RESULTS.md)."""
    Image.core.set_block_size(PILLOW_BLOCK_SIZE)
    Image.core.set_blocks_max(PILLOW_BLOCKS_KEPT)


def collect_cycles_less_often() -> None:
    """Run the cycle collector once 10,000 new container objects (not 700 or 2,000) are alive.

    With hundreds of requests in flight, tens of thousands of young objects (tasks, futures,
    aiohttp's request state) are alive at any time, and each young collection walks them all
    again: at the default, a worker process spent about 12% of its CPU in collections on the
    small-image profile, under 2% at this setting (bench/RESULTS.md). Reference counting frees
    nearly everything at once either way; only objects in reference cycles (an exception with
    its traceback) wait a little longer. A higher threshold already set is kept.
    """
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_OBJECTS_PER_COLLECTION), middle, old)


class DaemonRuntime:
    def __init__(self) -> None:
        keep_tls_buffers_mapped()
        keep_images_on_the_heap()
        collect_cycles_less_often()
        self.loop = new_event_loop()
        self._fetchers: dict[tuple[Any, ...], Fetcher] = {}
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="ldawt-loop", daemon=True
        )
        self._thread.start()
        self.pixels = concurrent.futures.ThreadPoolExecutor(
            detect_cores(), thread_name_prefix="ldawt-pixels"
        )
        metrics.mark_library_start()

    def call(
        self,
        work: Callable[[Fetcher], Awaitable[T]],
        options: FetchOptions,
        timeout: float,
    ) -> T:
        """Run ``work(fetcher)`` on the loop and wait for it at most ``timeout`` seconds."""
        future = asyncio.run_coroutine_threadsafe(self._with_fetcher(work, options), self.loop)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    async def _with_fetcher(
        self, work: Callable[[Fetcher], Awaitable[T]], options: FetchOptions
    ) -> T:
        key = options.session_key()
        fetcher = self._fetchers.get(key)
        if fetcher is None:
            fetcher = self._fetchers[key] = Fetcher(options)
        return await work(fetcher)

    def close(self) -> None:
        async def close_all() -> None:
            for fetcher in self._fetchers.values():
                await fetcher.close()
            self._fetchers.clear()

        asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.pixels.shutdown(cancel_futures=True)


_runtime: DaemonRuntime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> DaemonRuntime:
    """This process's runtime, created on first use."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = DaemonRuntime()
            atexit.register(_runtime.close)
        return _runtime
