"""The tar writer's file: written around the page cache (O_DIRECT) where the filesystem allows,
with ordinary writes where it does not, and the same bytes either way."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import random
import threading
from pathlib import Path

import pytest
from manager_support import mounted_filesystem

from ldawt.daemon.packer import directfile
from ldawt.daemon.packer.directfile import STAGING_BYTES, DirectFile
from ldawt.daemon.packer.tarwriter import TarWriter


def _parts() -> list[bytes]:
    """Short and long parts, one longer than the staging buffer, ending off any alignment."""
    rng = random.Random(5)
    sizes = [512, 113_000, 1, 16_384 - 1, 16_384]
    sizes += [STAGING_BYTES - 700, STAGING_BYTES + 3_333, 40_000, 0, 7]
    sizes += [rng.randrange(1, 300_000) for _ in range(30)]
    return [rng.randbytes(size) for size in sizes]


def _open_flags(path: Path) -> int:
    """The flags this process holds ``path`` open with (from /proc, as the kernel has them)."""
    for line in Path(f"/proc/self/fdinfo/{_fd_of(path)}").read_text().splitlines():
        if line.startswith("flags:"):
            return int(line.split()[1], 8)
    raise AssertionError("no flags in fdinfo")


def _write_all(path: Path, parts: list[bytes]) -> tuple[int, int]:
    """Write ``parts`` from another thread (as the tar writer does), by threes through
    ``writev`` and one by one through ``write`` in turn; the open flags seen after the first
    call and after the last one."""
    seen: list[int] = []

    def write(file: DirectFile) -> None:
        for start in range(0, len(parts), 3):
            group = parts[start : start + 3]
            if start % 2:
                file.writev(group)
            else:
                for part in group:
                    file.write(part)
            if start == 0 or start + 3 >= len(parts):
                seen.append(_open_flags(path))
        file.sync()

    with contextlib.closing(DirectFile(path)) as file:
        thread = threading.Thread(target=write, args=(file,))
        thread.start()
        thread.join()
    assert len(seen) == 2, "the writing thread failed"
    return seen[0], seen[1]


def test_bytes_written_around_the_page_cache(tmp_path: Path) -> None:
    parts = _parts()
    path = tmp_path / "s.tar.partial"
    first, last = _write_all(path, parts)
    assert first & os.O_DIRECT and last & os.O_DIRECT
    assert path.read_bytes() == b"".join(parts)


def test_a_filesystem_without_direct_io_gets_ordinary_writes(tmp_path: Path) -> None:
    parts = _parts()
    with mounted_filesystem(tmp_path / "ram", "ramfs", "mode=0700") as folder:
        path = folder / "s.tar.partial"
        first, last = _write_all(path, parts)
        assert not first & os.O_DIRECT and not last & os.O_DIRECT
        assert path.read_bytes() == b"".join(parts)


def test_a_file_shorter_than_the_buffer(tmp_path: Path) -> None:
    path = tmp_path / "small"
    with contextlib.closing(DirectFile(path)) as file:
        file.write(b"x" * 1000)
        assert path.stat().st_size == 0  # still in the staging buffer
        file.sync()
    assert path.read_bytes() == b"x" * 1000


def test_byte_buffers_only(tmp_path: Path) -> None:
    path = tmp_path / "f"
    with contextlib.closing(DirectFile(path)) as file:
        file.write(bytearray(b"y" * 16_384))
        with pytest.raises(TypeError):
            file.write(io.BytesIO(b"z"))  # type: ignore[arg-type]
        file.sync()
    assert path.read_bytes() == b"y" * 16_384


def test_exact_multiples_of_the_buffer_and_byte_arrays_across_it(tmp_path: Path) -> None:
    path = tmp_path / "f"
    parts = [bytes([1]) * (STAGING_BYTES - 10), bytearray(b"\2" * 20), b"\3" * (STAGING_BYTES - 10)]
    with contextlib.closing(DirectFile(path)) as file:
        for part in parts:
            file.write(part)
        assert path.stat().st_size == 2 * STAGING_BYTES  # both flushed: the buffer is empty
        file.sync()
    assert path.stat().st_size == 2 * STAGING_BYTES
    assert path.read_bytes() == b"".join(parts)


class _FaultyWrites:
    """Stands in for ``os.write`` on one descriptor: ``faults`` say what each call does first
    (an errno to raise, or "short" to write half), then real writes."""

    def __init__(self, faults: list[int | str]) -> None:
        self.faults = faults
        self.fd: int | None = None
        self.real = os.write
        self.flags_seen: list[int] = []

    def __call__(self, fd: int, data: memoryview) -> int:
        if fd != self.fd:
            return self.real(fd, data)
        self.flags_seen.append(fcntl.fcntl(fd, fcntl.F_GETFL))
        fault = self.faults.pop(0) if self.faults else None
        if fault == "short":
            return self.real(fd, data[: len(data) // 2])
        if isinstance(fault, int):
            raise OSError(fault, os.strerror(fault))
        return self.real(fd, data)


def _write_with_faults(
    path: Path, parts: list[bytes], faults: list[int | str], monkeypatch: pytest.MonkeyPatch
) -> _FaultyWrites:
    writes = _FaultyWrites(faults)
    monkeypatch.setattr(directfile.os, "write", writes)
    with contextlib.closing(DirectFile(path)) as file:
        writes.fd = _fd_of(path)
        for part in parts:
            file.write(part)
        file.sync()
    return writes


def _fd_of(path: Path) -> int:
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                return int(fd)
    raise AssertionError(f"{path} is not open")


@pytest.mark.parametrize("fault", [errno.EINVAL, "short"])
def test_a_refused_or_short_direct_write_goes_on_with_ordinary_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: int | str
) -> None:
    parts = _parts()
    path = tmp_path / "f"
    writes = _write_with_faults(path, parts, [fault], monkeypatch)
    assert path.read_bytes() == b"".join(parts)
    assert writes.flags_seen[0] & os.O_DIRECT  # the first write was direct, the next ones not
    assert not any(flags & os.O_DIRECT for flags in writes.flags_seen[1:])


def test_a_failed_write_fails_every_later_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = _FaultyWrites([errno.ENOSPC])
    monkeypatch.setattr(directfile.os, "write", writes)
    path = tmp_path / "f"
    with contextlib.closing(DirectFile(path)) as file:
        writes.fd = _fd_of(path)
        with pytest.raises(OSError, match="No space") as first:
            file.write(b"a" * (STAGING_BYTES + 1))
        for later in (lambda: file.write(b"b"), file.sync):
            with pytest.raises(OSError) as again:
                later()
            assert again.value is first.value
    assert path.stat().st_size == 0  # nothing written twice, nothing after the failure


def test_closed_is_closed(tmp_path: Path) -> None:
    file = DirectFile(tmp_path / "f")
    file.close()
    file.close()
    with pytest.raises(ValueError, match="closed"):
        file.write(b"x" * 16_384)


class _Fsyncs:
    """Stands in for ``os.fsync``: records the descriptors it is called with, then fsyncs."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.real = os.fsync

    def __call__(self, fd: int) -> None:
        self.fds.append(fd)
        self.real(fd)


def test_a_failed_gzip_tar_is_closed_unsynced_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gzip stream over a file whose write failed: commit reports the failure, the
    stream is closed in the writer thread, nothing is fsynced, no partial is left."""
    writes, fsyncs = _FaultyWrites([errno.ENOSPC]), _Fsyncs()
    monkeypatch.setattr(directfile.os, "write", writes)
    monkeypatch.setattr(directfile.os, "fsync", fsyncs)
    writer = TarWriter(tmp_path / "s.tar.gz", compress=True)
    writes.fd = _fd_of(writer.partial_path)
    rng = random.Random(9)
    for index in range(12):  # incompressible, more than the staging buffer
        writer.add(f"m{index}.jpg", rng.randbytes(700_000))
    with pytest.raises(OSError, match="No space"):
        writer.commit()
    assert writes.fd not in fsyncs.fds
    assert list(tmp_path.iterdir()) == []


def test_an_aborted_tar_is_not_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fsyncs = _Fsyncs()
    monkeypatch.setattr(directfile.os, "fsync", fsyncs)
    writer = TarWriter(tmp_path / "s.tar", compress=False)
    fd = _fd_of(writer.partial_path)
    writer.add("a.jpg", b"a" * 100_000)
    writer.abort()
    assert fd not in fsyncs.fds
    assert list(tmp_path.iterdir()) == []


def test_a_writer_that_cannot_start_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_memory(*_args: object, **_kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(directfile.mmap, "mmap", no_memory)
    with pytest.raises(MemoryError):
        TarWriter(tmp_path / "s.tar", compress=False)
    assert list(tmp_path.iterdir()) == []
