"""Writes a shard's tar from one thread while the event loop keeps downloading.

The loop hands finished images to ``add``, which never blocks: the queue holds only bytes that
are already charged to the fetcher's byte budget, so its size is bounded by that budget. The
tar is written as ``<name>.partial`` and only renamed to its final name after an fsync, so a
killed shard never leaves a tar that looks complete.
"""

from __future__ import annotations

import gzip
import os
import queue
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..contract import fsync_directory, partial_path
from .directfile import DirectFile

Done = Callable[[], None]
GATHER_S = 0.005
"""How long the writer waits, once its queue is empty, before it sleeps on the queue: about
ten members at 2,000 images/s, held for at most that long."""
_STOP = object()
_ZEROS = bytes(tarfile.BLOCKSIZE)


class TarWriter:
    """A tar being written by a background thread; ``commit`` or ``abort`` must end it.

    Headers are those of ``tarfile.TarInfo`` (PAX format); header, body and padding go into
    the staging buffer of a ``DirectFile`` (written around the page cache; in a .tar.gz,
    zlib's output instead). ``TarFile.addfile`` would copy the body in 16 KiB writes, and each
    write gives the GIL away to the busy event loop thread for up to a switch interval, which
    made the writer fall behind the downloads; for the same reason the writer lets members
    gather in its queue (``GATHER_S``) and copies them holding the GIL. The writer does not hash
    members: ``sha256`` comes with the row (see ``shard._store``).
    """

    def __init__(self, final_path: Path, compress: bool) -> None:
        self.final_path = final_path
        self.partial_path = partial_path(final_path)
        # The file stays open across calls; the writer thread closes it.
        self._file = DirectFile(self.partial_path)
        try:
            # Images do not shrink under gzip; level 1 keeps the .tar.gz format at little CPU.
            self._gzip = (
                gzip.GzipFile(fileobj=self._file, mode="wb", compresslevel=1) if compress else None
            )
            self._offset = 0
            self._mtime = int(time.time())
            self._headers = HeaderTemplate(self._mtime)
            self._queue: queue.SimpleQueue = queue.SimpleQueue()
            self._error: BaseException | None = None
            self._abandoned = False
            self.members = 0
            self._thread = threading.Thread(target=self._run, name=f"tar:{final_path.name}")
            self._thread.start()
        except BaseException:  # no thread to close the file: close it and leave no partial
            self._file.close()
            self._remove_partial()
            raise

    def add(self, name: str, data: bytes, done: Done | None = None) -> None:
        """Queue one member. ``done`` is called from the writer thread once the writer is done
        with ``data``: written, or dropped after a write failed (commit raises that failure)."""
        self._queue.put((name, data, done))

    def commit(self) -> Path:
        """Finish the tar, make it durable and give it its final name (blocking)."""
        self._finish()
        if self._error is not None:
            self._remove_partial()
            raise self._error
        os.replace(self.partial_path, self.final_path)
        fsync_directory(self.final_path.parent)
        return self.final_path

    def abort(self) -> None:
        """Stop writing and delete the partial file (blocking)."""
        self._abandoned = True  # read by the writer thread after the stop below
        self._finish()
        self._remove_partial()

    def _finish(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()

    def _remove_partial(self) -> None:
        self.partial_path.unlink(missing_ok=True)

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not _STOP:
                name, data, done = item
                if self._error is None:  # after a failure the rest is drained; commit raises it
                    try:
                        self._write_member(name, data)
                        self.members += 1
                    except BaseException as exc:  # disk full, I/O error: reported by commit
                        self._error = exc
                if done is not None:
                    done()
                if self._queue.empty():
                    # Let the next members gather: the writer then takes the GIL from the busy
                    # event loop once per batch, not once per member (bench/RESULTS.md).
                    time.sleep(GATHER_S)
        finally:
            self._close_file()

    def _write_member(self, name: str, data: bytes) -> None:
        header = self._headers.header(name, len(data))
        self._emit([header, data, _ZEROS[: -len(data) % tarfile.BLOCKSIZE]])

    def _emit(self, parts: list[bytes]) -> None:
        if self._gzip is None:
            self._file.writev(parts)
        else:
            for part in parts:
                self._gzip.write(part)
        self._offset += sum(len(part) for part in parts)

    def _close_file(self) -> None:
        """End the archive, make it durable and close the file, keeping the first error: on a
        full disk each step fails too, and nothing may escape the writer thread."""
        if self._error is None and not self._abandoned:
            self._attempt(self._end_archive)
        if self._gzip is not None:  # here in any case, not later by the garbage collector
            self._attempt(self._gzip.close)
        if self._error is None and not self._abandoned:  # a tar to delete needs no fsync
            self._attempt(self._file.sync)
        self._attempt(self._file.close)

    def _end_archive(self) -> None:
        # two zero blocks end the archive; tar pads the whole to a 10 KiB record
        end = 2 * tarfile.BLOCKSIZE
        end += -(self._offset + end) % tarfile.RECORDSIZE
        self._emit([bytes(end)])

    def _attempt(self, step: Callable[[], None]) -> None:
        try:
            step()
        except BaseException as exc:
            self._error = self._error or exc


class HeaderTemplate:
    """The header of a regular file member (mode 644, one mtime), as ``tarfile.TarInfo.tobuf``
    writes it in the PAX format, at a fraction of its cost (about 60 us per member).

    A name of at most 100 ASCII bytes and a size of at most 11 octal digits need no PAX
    extended header: the header is then ``tarfile``'s own header of an empty name and size 0
    with those two fields and the checksum filled in. Other names go through ``TarInfo``.
    """

    _NAME = slice(0, tarfile.LENGTH_NAME)
    _SIZE = slice(124, 136)
    _CHKSUM = slice(148, 156)
    _MAX_SIZE = 8**11 - 1

    def __init__(self, mtime: int) -> None:
        self._mtime = mtime
        blank = bytearray(self._tarinfo("", 0))
        blank[self._CHKSUM] = b" " * 8  # the checksum is summed over spaces in its own field
        self._blank = bytes(blank)
        # the blank's sum without its name and size fields: a member's checksum adds only those
        self._fixed_sum = sum(blank) - sum(blank[self._NAME]) - sum(blank[self._SIZE])

    def header(self, name: str, size: int) -> bytes:
        if not (name.isascii() and len(name) <= tarfile.LENGTH_NAME and size <= self._MAX_SIZE):
            return self._tarinfo(name, size)
        encoded = name.encode("ascii")
        size_field = b"%011o\0" % size
        block = bytearray(self._blank)
        block[self._NAME] = encoded.ljust(tarfile.LENGTH_NAME, tarfile.NUL)
        block[self._SIZE] = size_field
        block[self._CHKSUM] = b"%06o\0 " % (self._fixed_sum + sum(encoded) + sum(size_field))
        return bytes(block)

    def _tarinfo(self, name: str, size: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = self._mtime
        info.mode = 0o644
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
