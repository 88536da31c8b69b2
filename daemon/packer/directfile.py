"""A file written front to back around the page cache (O_DIRECT), through one aligned buffer.

Buffered writes cost the writing thread a copy into the page cache, the kernel's bookkeeping
per 4 KiB page (delayed allocation, buffer heads) and, at the shard's fsync, the writeback of
every dirty page: 48-50 us per member of the bench's corpus (134 KB on average), 19-24 us per
member of the small-image corpus (46 KB on average), and several times that in some runs on a
page cache busy with earlier writes.
Here members are copied into a 4 MiB staging buffer, written to the disk whole, aligned: 28-29
and 10-12 us, copy included (``bench/write_path.py``, bench/RESULTS.md). The page cache would
gain nothing from the tar: nothing reads it back soon (an upload reads it once), and the
commit's fsync no longer waits for gigabytes of dirty pages.

Each flush is one synchronous write of the buffer: on slow storage the writer thread waits for
the disk, its queue grows and the fetcher's byte budget holds the downloads back, as a full page
cache would, only sooner.

Where the filesystem refuses O_DIRECT (ramfs, some FUSE and network filesystems), or refuses a
write, the file goes on with ordinary writes of the same buffer. The end of the file, shorter
than the buffer and not aligned, is always an ordinary write.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from pathlib import Path

STAGING_BYTES = 4 << 20
"""Flushed whole, so every direct write is aligned for any filesystem. CPU per member of the
bench's corpus: 1 MiB 28 us, 2 MiB 25, 4 MiB 23, 8 MiB 22 (``bench/write_path.py
--staging-kib``, bench/RESULTS.md): 4 MiB keeps most of the gain at half 8's memory."""

O_DIRECT: int = getattr(os, "O_DIRECT", 0)
"""Linux's flag; 0 where the platform has none (macOS): ordinary writes there."""

NO_DIRECT_IO = (errno.EINVAL, errno.EOPNOTSUPP)
"""What an open or a write with O_DIRECT fails with where the filesystem has no direct I/O."""


class DirectFile:
    """Appends bytes to a new file at ``path`` (created or truncated, mode 0666 less umask).

    One thread writes. ``sync`` writes what is buffered and fsyncs; ``close`` releases the file
    and the buffer (whatever is still buffered is lost) and must be called. After a failed
    write every later ``write`` or ``sync`` raises that failure again.
    """

    def __init__(self, path: Path) -> None:
        # private anonymous pages: page-aligned, as O_DIRECT needs; not shared memory. Mapped
        # first: a failure leaves no file behind.
        self._buffer = mmap.mmap(-1, STAGING_BYTES, flags=mmap.MAP_PRIVATE)
        try:
            self._fd, self._direct = _open(path)
        except BaseException:
            self._buffer.close()
            raise
        self._view = memoryview(self._buffer)
        self._fill = 0
        self._failure: BaseException | None = None

    def write(self, data: bytes | bytearray) -> None:
        """Append ``data`` (a byte buffer; TypeError for other objects)."""
        self._check()
        self._put(data)

    def writev(self, parts: list[bytes]) -> None:
        """Append each of ``parts`` in turn (one call per tar member)."""
        self._check()
        for part in parts:
            self._put(part)

    def _put(self, data: bytes | bytearray) -> None:
        # Copied holding the GIL: releasing it for each body let the event loop's thread take
        # it, and the writer then waited for it back once per member (bench/RESULTS.md).
        fill = self._fill
        if type(data) is bytes and len(data) < STAGING_BYTES - fill:  # the common case
            self._view[fill : fill + len(data)] = data
            self._fill = fill + len(data)
            return
        view = memoryview(data).cast("B")
        size = view.nbytes
        done = 0
        while done < size:
            take = min(size - done, STAGING_BYTES - self._fill)
            self._view[self._fill : self._fill + take] = view[done : done + take]
            self._fill += take
            done += take
            if self._fill == STAGING_BYTES:
                self._flush()

    def sync(self) -> None:
        """Write what is buffered, then make the file durable (fsync)."""
        self._check()
        if self._fill:
            self._buffered()  # the tail is not a whole aligned block
            self._flush()
        try:
            os.fsync(self._fd)
        except BaseException as exc:
            self._failure = exc
            raise

    def close(self) -> None:
        """Release the file and the buffer; again: nothing."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            os.close(fd)
        finally:
            self._view.release()
            self._buffer.close()

    def _check(self) -> None:
        if self._fd < 0:
            raise ValueError("write to a closed DirectFile")
        if self._failure is not None:
            raise self._failure

    def _flush(self) -> None:
        try:
            self._write_buffer()
        except BaseException as exc:
            self._failure = exc  # the file's end is unknown now: no write may follow
            raise
        self._fill = 0

    def _write_buffer(self) -> None:
        done = 0
        while done < self._fill:
            # released even on a failure: a view left in a traceback would keep the buffer open
            with self._view[done : self._fill] as pending:
                try:
                    written = os.write(self._fd, pending)
                except OSError as exc:
                    if exc.errno not in NO_DIRECT_IO or not self._direct:
                        raise
                    self._buffered()  # the filesystem took the flag but refuses this write
                    continue
            if written == 0:
                raise OSError(errno.EIO, "the file took no byte")
            if done + written < self._fill:  # rare on a regular file; the offset is unaligned
                self._buffered()
            done += written

    def _buffered(self) -> None:
        if self._direct:
            flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
            fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~O_DIRECT)
            self._direct = False


def _open(path: Path) -> tuple[int, bool]:
    """The new file's descriptor, and whether it is open for direct I/O."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    if O_DIRECT:
        try:
            return os.open(path, flags | O_DIRECT, 0o666), True
        except OSError as exc:
            if exc.errno not in NO_DIRECT_IO:
                raise
    return os.open(path, flags, 0o666), False
