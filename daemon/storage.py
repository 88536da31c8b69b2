"""Shard files at an fsspec URL (``s3://bucket/prefix``): paths that behave like the few
``pathlib.Path`` methods the shard contract uses, and uploads that appear whole or not at all.

A shard whose ``output_dir`` is a URL is written to a local temporary folder as usual, then each
file is uploaded in the commit order (tar, manifest, stats last). An upload goes out in blocks
(s3fs: a multipart upload, ``default_block_size`` bytes a part) and is completed only once its
last block is sent; an upload that fails is aborted, and one that is killed is never completed,
so no object is ever visible in part. The object store's client is an optional extra
(``pip install 'ldawt[s3]'`` for s3://).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any

COPY_CHUNK = 8 * 1024 * 1024
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcsfs", "gcs": "gcsfs"}


class StorageError(Exception):
    """The object store cannot be used: client missing, no credentials, no bucket; worded for
    the user."""


def is_url(location: str | os.PathLike[str]) -> bool:
    """An fsspec URL rather than a local path (``file://`` counts as a URL)."""
    return "://" in str(location)


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path in it. Raises StorageError when the
    protocol's client is not installed."""
    import fsspec.core

    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except ImportError as exc:
        protocol = url.split("://", 1)[0]
        extra = EXTRAS.get(protocol)
        hint = (
            "pip install 'ldawt[s3]'"
            if extra == "s3"
            else f"pip install {extra}"
            if extra
            else "install the fsspec filesystem for it"
        )
        raise StorageError(
            f"{protocol}:// needs a client that is not installed ({hint}): {exc}"
        ) from None
    except (ValueError, TypeError) as exc:
        raise StorageError(f"cannot use {url}: {exc}") from exc


@dataclass(frozen=True)
class RemotePath:
    """One object at a URL, with the ``Path`` methods shard files need."""

    fs: Any
    path: str

    @classmethod
    def of(cls, url: str, storage_options: dict[str, Any] | None = None) -> RemotePath:
        fs, path = filesystem(url, storage_options)
        return cls(fs, path)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def __truediv__(self, name: str) -> RemotePath:
        return RemotePath(self.fs, f"{self.path.rstrip('/')}/{name}")

    def with_name(self, name: str) -> RemotePath:
        return RemotePath(self.fs, f"{self.path.rsplit('/', 1)[0]}/{name}")

    def __str__(self) -> str:
        return self.fs.unstrip_protocol(self.path)

    def _fresh(self) -> None:
        # Listings are cached; another process (a worker) may have written since.
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(self.path)

    def open(self, mode: str = "rb") -> IO[bytes]:
        if "r" in mode:
            self._fresh()
        return self.fs.open(self.path, mode)

    def read_text(self) -> str:
        with self.open("rb") as handle:
            return handle.read().decode()

    def stat(self) -> SimpleNamespace:
        self._fresh()
        return SimpleNamespace(st_size=int(self.fs.info(self.path)["size"]))

    def exists(self) -> bool:
        self._fresh()
        return bool(self.fs.exists(self.path))

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise
        self._fresh()


def readable(path: Path | RemotePath) -> Any:
    """What pyarrow's readers take for ``path``: the path itself, or an open object."""
    return path.open("rb") if isinstance(path, RemotePath) else path


def upload(local: Path, remote: RemotePath) -> None:
    """Copy ``local`` to ``remote`` so that the object appears whole or not at all: written in
    blocks, completed by ``close``; on any failure the upload is discarded (s3fs aborts the
    multipart upload) rather than completed."""
    target = remote.fs.open(remote.path, "wb")
    try:
        # in the file object's blocks: each goes out as one part, memory stays at one block
        size = min(COPY_CHUNK, getattr(target, "blocksize", None) or COPY_CHUNK)
        with open(local, "rb") as source:
            while chunk := source.read(size):
                target.write(chunk)
    except BaseException:
        # Not ``with``: leaving a file object's block closes it, which completes the upload.
        discard = getattr(target, "discard", None)
        with contextlib.suppress(Exception):
            if discard is not None:
                discard()
            target.closed = True  # else collecting it would close it: complete the upload
        raise
    target.close()
    remote._fresh()


def probe(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Check that shard files can be written under ``url``: the client is installed, the
    credentials work and the bucket exists. Writes and deletes one small object. Raises
    StorageError with what is wrong."""
    fs, path = filesystem(url, storage_options)
    marker = RemotePath(fs, f"{path.rstrip('/')}/.ldawt-probe-{os.getpid()}")
    try:
        with marker.fs.open(marker.path, "wb") as handle:
            handle.write(b"ldawt\n")
        marker.unlink(missing_ok=True)
    except Exception as exc:
        raise StorageError(f"cannot write shard files to {url}: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    lowered = text.lower()
    if "credential" in lowered:
        return (
            f"no usable credentials ({text}); set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
            "AWS_PROFILE, or pass them in --storage-options"
        )
    if isinstance(exc, FileNotFoundError) or "nosuchbucket" in lowered.replace(" ", ""):
        return f"the bucket does not exist ({text})"
    if isinstance(exc, PermissionError) or "accessdenied" in lowered or "signature" in lowered:
        return f"access denied: wrong credentials or no permission to write ({text})"
    return text
