"""The benchmark's inputs: a corpus of photo-like JPEGs and the rewritten URL lists.

The corpus has ``distinct`` real JPEG files (``img/NNNN.jpg``) plus 1,000 symlinks
``by3/000.jpg`` .. ``by3/999.jpg``; nginx maps a URL ``/photos/<photo_id>/medium.jpg`` to
``by3/<last three digits of photo_id>.jpg``, so every path of the real URL list is served with
no per-path file and the whole corpus stays a few tens of MB (and in the page cache).

The small-image profile's corpus (``SMALL``) is made the same way at iNaturalist's ``medium``
size (500 px on the long side, median near 40 kB), where the per-request cost dominates.

The transform profiles' corpus (:func:`build_transform_corpus`) has the same ``by3`` links, to
the larger photo-like JPEGs of ``bench/photos.py`` (1024-2048 px, a few with EXIF orientation).

Needs Pillow (only in the bench venv); everything else here is stdlib or pyarrow.
"""

from __future__ import annotations

import json
import random
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

CORPUS_VERSION = 2
BY3_COUNT = 1000


@dataclass(frozen=True)
class CorpusSpec:
    """How a photo-like corpus is drawn: long sides, sensor grain, JPEG quality, byte bounds."""

    long_sides: tuple[int, ...]
    grain: tuple[float, float]
    quality: tuple[int, int]
    min_bytes: int
    max_bytes: int


MIXED = CorpusSpec((500, 500, 500, 640, 800, 1024), (4, 40), (78, 94), 30_000, 300_000)
"""Profiles 1 and 2: 30-300 KB, median about 113 KB (iNat "medium" is 500 px, some larger)."""
SMALL = CorpusSpec((500,), (2, 20), (75, 90), 10_000, 150_000)
"""The small-image profile: iNaturalist's ``medium`` size, median about 40 KB."""


@dataclass(frozen=True)
class CorpusInfo:
    """Where the corpus lives and what it holds."""

    root: Path
    distinct: int
    sizes: list[int]
    kind: str = "JPEGs"

    def summary(self) -> str:
        s = sorted(self.sizes)
        return (
            f"{self.distinct} distinct {self.kind}, {BY3_COUNT} mapped names, sizes "
            f"min {s[0] / 1e3:.0f} KB / median {statistics.median(s) / 1e3:.0f} KB / "
            f"max {s[-1] / 1e3:.0f} KB, total {sum(s) / 1e6:.1f} MB"
        )


def _photo(rng: random.Random, width: int, height: int, grain: float):  # -> PIL.Image.Image
    """One photo-like RGB image: a shared luminance structure (gradient, soft blobs, texture)
    tinted per channel, plus sensor grain; grain and texture drive the JPEG size."""
    from PIL import Image, ImageChops, ImageFilter

    def gradient() -> Image.Image:
        g = Image.linear_gradient("L") if rng.random() < 0.6 else Image.radial_gradient("L")
        g = g.resize((512, 512), Image.BILINEAR).rotate(rng.uniform(0, 360))
        return g.crop((128, 128, 384, 384)).resize((width, height), Image.BILINEAR)

    def noise(div: int, sigma: float) -> Image.Image:
        small = Image.effect_noise((max(4, width // div), max(4, height // div)), sigma)
        return small.resize((width, height), Image.BICUBIC)

    luma = Image.blend(gradient(), noise(40, 64).filter(ImageFilter.GaussianBlur(4)), 0.55)
    luma = Image.blend(luma, noise(5, 48), rng.uniform(0.15, 0.35))
    channels = []
    for _ in range(3):
        tint = Image.blend(gradient(), noise(60, 40), 0.5)
        chan = Image.blend(luma, tint, rng.uniform(0.2, 0.45))
        chan = ImageChops.add(chan, Image.effect_noise((width, height), grain), offset=-128)
        channels.append(chan)
    return Image.merge("RGB", channels)


def build_corpus(
    root: Path, distinct: int = 300, seed: int = 7, spec: CorpusSpec = MIXED
) -> CorpusInfo:
    """Create (or reuse) the corpus under ``root``; returns its description."""
    marker = root / "corpus.json"
    wanted = {"version": CORPUS_VERSION, "distinct": distinct, "seed": seed}
    if spec != MIXED:  # today's corpus keeps its marker, hence its files
        wanted["spec"] = list(asdict(spec).values())
    if marker.exists():
        meta = json.loads(marker.read_text())
        if {k: meta.get(k) for k in wanted} == wanted:
            return CorpusInfo(root, distinct, meta["sizes"])

    rng = random.Random(seed)
    img_dir = root / "img"
    by3_dir = root / "by3"
    img_dir.mkdir(parents=True, exist_ok=True)
    by3_dir.mkdir(parents=True, exist_ok=True)
    sizes: list[int] = []
    for i in range(distinct):
        long_side = rng.choice(spec.long_sides)
        short_side = int(long_side * rng.choice([0.75, 0.75, 0.667, 1.0, 0.5625]))
        w, h = (long_side, short_side) if rng.random() < 0.7 else (short_side, long_side)
        img = _photo(rng, w, h, grain=rng.uniform(*spec.grain))
        path = img_dir / f"{i:04d}.jpg"
        quality = rng.randint(*spec.quality)
        img.save(path, "JPEG", quality=quality)
        while path.stat().st_size > spec.max_bytes and quality > 50:
            quality -= 8
            img.save(path, "JPEG", quality=quality)
        while path.stat().st_size < spec.min_bytes and quality < 98:
            quality += 3
            img.save(path, "JPEG", quality=quality)
        sizes.append(path.stat().st_size)
    for k in range(BY3_COUNT):
        link = by3_dir / f"{k:03d}.jpg"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path("..") / "img" / f"{k % distinct:04d}.jpg")
    marker.write_text(json.dumps({**wanted, "sizes": sizes}))
    return CorpusInfo(root, distinct, sizes)


def build_transform_corpus(root: Path, photo_base: Path, distinct: int, log) -> CorpusInfo:
    """``root/by3/NNN.jpg`` links to the first ``distinct`` photo-like JPEGs of
    ``bench/photos.py`` (made under ``photo_base`` when missing, shared with
    bench/transform_candidates.py); returns the corpus' description."""
    import photos
    from PIL import Image

    images = photos.build_corpus(photo_base, distinct, log=log)
    by3_dir = root / "by3"
    by3_dir.mkdir(parents=True, exist_ok=True)
    for k in range(BY3_COUNT):
        link = by3_dir / f"{k:03d}.jpg"
        target = images[k % distinct].resolve()
        if link.is_symlink() and link.readlink() == target:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    sizes, rotated, longest = [], 0, []
    for path in images:
        body = path.read_bytes()
        sizes.append(len(body))
        rotated += photos.orientation(body) != 1
        with Image.open(path) as image:
            longest.append(max(image.size))
    kind = (
        f"photo-like JPEGs of {min(longest)}-{max(longest)} px on the long side "
        f"(quality 90; {rotated} with an EXIF orientation)"
    )
    return CorpusInfo(root, distinct, sizes, kind)


def corpus_file_for_path(root: Path, url_path: str) -> Path:
    """The corpus file nginx serves for a URL path (mirrors the nginx mapping)."""
    photo_id = url_path.split("/")[2]
    return (root / "by3" / f"{photo_id[-3:]}.jpg").resolve()


def write_url_lists(source: Path, rows: int, out_dir: Path, bases: dict[str, str]) -> dict:
    """Write ``<name>.parquet`` per base URL: the first ``rows`` rows of ``source`` with the
    photo_url host replaced by the base (``http://127.0.0.1:PORT``), paths kept, all columns
    kept; and ``<name>.txt`` with one URL per line (for the bare client, which then needs no
    pyarrow in memory). Returns {name: parquet Path, name + "_txt": txt Path}."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(source).slice(0, rows)
    if table.num_rows < rows:
        raise SystemExit(f"{source} has only {table.num_rows} rows, {rows} asked")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    col = table.column("photo_url")
    for name, base in bases.items():
        new = pc.replace_substring_regex(col, pattern=r"^https?://[^/]+", replacement=base)
        idx = table.schema.get_field_index("photo_url")
        t = table.set_column(idx, pa.field("photo_url", pa.string()), new)
        path = out_dir / f"urls_{name}_{rows}.parquet"
        pq.write_table(t, path)
        txt = path.with_suffix(".txt")
        txt.write_text("\n".join(new.to_pylist()) + "\n")
        paths[name], paths[f"{name}_txt"] = path, txt
    return paths
