"""The tar writer's file: written around the page cache (O_DIRECT) where the filesystem allows,
with ordinary writes where it does not, and the same bytes either way."""

from __future__ import annotations

import io
import os
import random
import threading
from pathlib import Path

import pytest
from manager_support import mounted_filesystem

from ldawt.daemon.packer.directfile import GIL_FREE_COPY_BYTES, STAGING_BYTES, DirectFile


def _parts() -> list[bytes]:
    """Short and long parts, one longer than the staging buffer, ending off any alignment."""
    rng = random.Random(5)
    sizes = [512, 113_000, 1, GIL_FREE_COPY_BYTES - 1, GIL_FREE_COPY_BYTES]
    sizes += [STAGING_BYTES - 700, STAGING_BYTES + 3_333, 40_000, 0, 7]
    sizes += [rng.randrange(1, 300_000) for _ in range(30)]
    return [rng.randbytes(size) for size in sizes]


def _open_flags(path: Path) -> int:
    """The flags this process holds ``path`` open with (from /proc, as the kernel has them)."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
                    if line.startswith("flags:"):
                        return int(line.split()[1], 8)
        except FileNotFoundError:  # the listing's own descriptor, closed since
            continue
    raise AssertionError(f"{path} is not open")


def _write_all(path: Path, parts: list[bytes]) -> tuple[int, int]:
    """Write ``parts`` from another thread (as the tar writer does); the open flags seen
    after the first part and after the last one."""
    file = DirectFile(path)
    seen: list[int] = []

    def write() -> None:
        for index, part in enumerate(parts):
            file.write(part)
            if index in (0, len(parts) - 1):
                seen.append(_open_flags(path))
        file.sync()

    try:
        thread = threading.Thread(target=write)
        thread.start()
        thread.join()
    finally:
        file.close()
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
    file = DirectFile(path)
    try:
        file.write(b"x" * 1000)
        assert path.stat().st_size == 0  # still in the staging buffer
        file.sync()
    finally:
        file.close()
    assert path.read_bytes() == b"x" * 1000


def test_byte_buffers_only(tmp_path: Path) -> None:
    path = tmp_path / "f"
    file = DirectFile(path)
    try:
        file.write(bytearray(b"y" * GIL_FREE_COPY_BYTES))
        with pytest.raises(TypeError):
            file.write(io.BytesIO(b"z"))  # type: ignore[arg-type]
        file.sync()
    finally:
        file.close()
    assert path.read_bytes() == b"y" * GIL_FREE_COPY_BYTES
