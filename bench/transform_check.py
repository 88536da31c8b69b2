"""The transform profiles' checks of what each client stored: output sizes against
img2dataset's, image by image, and image quality (PSNR) against a reference.

After a row runs, :func:`inspect_img2dataset` or :func:`inspect_ldawt` read its output before it
is deleted: the size of every stored image (decoded from the tars, keyed by URL), the manifest's
``width``/``height`` against them (ldawt), and one stored image per distinct corpus file (a
corpus file is served under many URLs and a client makes the same bytes from it every time).
Once every row ran, :func:`compare` fills ``Result.quality`` of each row of a transform profile:

* sizes: each image's size against img2dataset's for the same URL. ldawt applies EXIF
  orientation (stores images upright) and img2dataset does not, so for a corpus file whose
  orientation swaps the axes (5-8) ldawt's size must be img2dataset's transposed; those are
  counted apart;
* quality: the mean over the distinct corpus files of the PSNR of the stored image (border
  excluded) against a full-precision decode of the original, oriented as the client stores it,
  area-averaged in float to the same size (``bench/photos.py``, as in
  ``bench/transform_candidates.py``). The expected geometry is img2dataset 1.47's (below).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

PROFILES = {"border256": ("border", 256), "keep_ratio512": ("keep_ratio", 512)}
"""Transform profile -> (resize mode, image size)."""
TRANSPOSING = (5, 6, 7, 8)
"""EXIF orientations that swap width and height."""

SourceOf = Callable[[str], Path]
"""URL -> the corpus file the origin serves for it."""


@dataclass
class Stored:
    """What one row stored, read from its output."""

    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    """URL -> (width, height) of the stored image, decoded."""
    samples: dict[Path, bytes] = field(default_factory=dict)
    """Corpus file -> one stored image made from it."""
    stored_bytes: int = 0
    manifest_checked: int = 0
    """ldawt: ok rows whose manifest has width and height."""
    manifest_differs: int = 0
    """... of which the size differs from the stored image's."""
    manifest_note: str = ""
    upright: bool = False
    """The client applies EXIF orientation."""


def _size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.size


def _add(stored: Stored, url: str, data: bytes, source_of: SourceOf) -> tuple[int, int]:
    size = _size(data)
    stored.sizes[url] = size
    stored.stored_bytes += len(data)
    stored.samples.setdefault(source_of(url), data)
    return size


def inspect_img2dataset(out_dir: Path, source_of: SourceOf) -> Stored:
    """img2dataset's webdataset output: ``<key>.jpg`` members, the URL from the shard parquet."""
    import pyarrow.parquet as pq

    stored = Stored(upright=False)
    for tar_path in sorted(out_dir.glob("*.tar")):
        table = pq.read_table(tar_path.with_suffix(".parquet"), columns=["key", "url", "status"])
        urls = {row["key"]: row["url"] for row in table.to_pylist() if row["status"] == "success"}
        with tarfile.open(tar_path) as tar:
            for member in tar:
                stem, _, ext = member.name.rpartition(".")
                if not member.isfile() or ext not in ("jpg", "jpeg", "png", "webp"):
                    continue
                data = tar.extractfile(member).read()
                _add(stored, urls[stem], data, source_of)
    return stored


def inspect_ldawt(out_dir: Path, source_of: SourceOf) -> Stored:
    """ldawt's shards: the manifest's ``member`` of each ok row in the shard's tar; the
    manifest's ``width``/``height`` (when it has them) checked against the decoded image."""
    import pyarrow.parquet as pq

    stored = Stored(upright=True)
    for manifest in sorted(out_dir.rglob("*.manifest.parquet")):
        table = pq.read_table(manifest)
        has_size = {"width", "height"} <= set(table.column_names)
        rows = {
            row["member"]: row
            for row in table.to_pylist()
            if row["status"] == "ok" and row.get("member")
        }
        tar_path = manifest.with_name(manifest.name.replace(".manifest.parquet", ".tar"))
        with tarfile.open(tar_path) as tar:
            for member in tar:
                row = rows.get(member.name)
                if row is None or not member.isfile():
                    continue
                size = _add(stored, row["url"], tar.extractfile(member).read(), source_of)
                if has_size:
                    stored.manifest_checked += 1
                    stored.manifest_differs += (row["width"], row["height"]) != size
    if not stored.manifest_checked:
        stored.manifest_note = "the manifests have no width/height columns"
    return stored


def target(width: int, height: int, mode: str, size: int):  # -> photos.Target
    """img2dataset 1.47's geometry for a ``width`` x ``height`` image (``resize_only_if_bigger``
    off): ``keep_ratio`` fits the shorter side, ``border`` the longer one and pads to a white
    square, each side rounded with Python's round, the pad offset ``int((size - side) / 2)``."""
    from photos import Target

    fitted = min(width, height) if mode in ("keep_ratio", "center_crop") else max(width, height)
    scale = size / fitted
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    crop = pad = None
    output = new
    if mode == "center_crop":
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        crop, output = (left, top, left + size, top + size), (size, size)
    elif mode == "border":
        output = (max(size, new[0]), max(size, new[1]))
        pad = tuple(int((size - side) / 2.0) if side < size else 0 for side in new)
    return Target(new, crop, pad, output)


class Quality:
    """PSNR of stored images, with the references cached across rows."""

    def __init__(self, mode: str, size: int) -> None:
        self.mode, self.size = mode, size
        self._refs: dict[tuple, object] = {}
        self._sources: dict[Path, tuple[bytes, int, tuple[int, int]]] = {}

    def source(self, path: Path) -> tuple[bytes, int, tuple[int, int]]:
        """(bytes, EXIF orientation, raw size) of a corpus file."""
        if path not in self._sources:
            import photos

            body = path.read_bytes()
            self._sources[path] = (body, photos.orientation(body), _size(body))
        return self._sources[path]

    def psnr(self, path: Path, data: bytes, upright: bool) -> float | None:
        """PSNR of ``data`` (made from corpus file ``path``) against the reference; None when
        its size is not the one img2dataset's geometry gives."""
        import photos

        body, orientation, (width, height) = self.source(path)
        turned = upright and orientation in TRANSPOSING
        want = target(*((height, width) if turned else (width, height)), self.mode, self.size)
        if _size(data) != want.output:
            return None
        key = (path, upright and orientation != 1)
        if key not in self._refs:
            self._refs[key] = photos.reference(body, want, upright)
        return photos.psnr(photos.content(data, want), self._refs[key])


def compare(results: list, stored: dict[int, Stored], source_of: SourceOf) -> None:
    """Fill ``quality`` of every row of the transform profiles that stored images: sizes
    against the img2dataset row of the same profile, PSNR, stored KB. ``stored`` maps
    ``id(result)`` to what the row stored."""
    for profile, (mode, size) in PROFILES.items():
        rows = [r for r in results if r.profile == profile and id(r) in stored]
        if not rows:
            continue
        quality = Quality(mode, size)
        base = next((r for r in rows if r.is_img2dataset), None)
        base_sizes = stored[id(base)].sizes if base else {}
        for r in rows:
            got = stored[id(r)]
            psnrs = [quality.psnr(p, data, got.upright) for p, data in sorted(got.samples.items())]
            good = [v for v in psnrs if v is not None]
            q: dict = {
                "images": len(got.sizes),
                "mean_kb": got.stored_bytes / len(got.sizes) / 1e3 if got.sizes else None,
                "psnr_sources": len(good),
                "psnr_unexpected_size": len(psnrs) - len(good),
                "psnr_mean": sum(good) / len(good) if good else None,
                "psnr_min": min(good, default=None),
                "manifest_checked": got.manifest_checked,
                "manifest_differs": got.manifest_differs,
                "manifest_note": got.manifest_note,
            }
            if base is not None and r is not base:
                same = transposed = differs = missing = 0
                for url, want in base_sizes.items():
                    have = got.sizes.get(url)
                    if have is None:
                        missing += 1
                        continue
                    turned = got.upright and quality.source(source_of(url))[1] in TRANSPOSING
                    expect = want[::-1] if turned else want
                    if have != expect:
                        differs += 1
                    elif turned:
                        transposed += 1
                    else:
                        same += 1
                q.update(
                    compared=same + transposed + differs,
                    same=same,
                    transposed=transposed,
                    differs=differs,
                    missing=missing,
                    extra=len(got.sizes.keys() - base_sizes.keys()),
                )
            r.quality = q
        if base is not None and base.quality.get("psnr_mean") is not None:
            for r in rows:
                if r.quality.get("psnr_mean") is not None:
                    r.quality["psnr_vs_base"] = r.quality["psnr_mean"] - base.quality["psnr_mean"]


def source_finder(corpus_root: Path) -> SourceOf:
    """URL -> the corpus file (the origin's by3 mapping), cached."""
    import corpus

    cache: dict[str, Path] = {}

    def source_of(url: str) -> Path:
        path = urlsplit(url).path
        if path not in cache:
            cache[path] = corpus.corpus_file_for_path(corpus_root, path)
        return cache[path]

    return source_of
