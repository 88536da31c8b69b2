"""Photo-like JPEGs of 1024-2048 px and the image-quality yardstick, shared by the transform
benchmarks (``bench/transform_candidates.py``: one image at a time per imaging library;
``bench/run.py --profiles transform``: whole clients against the loopback origin).

* :func:`build_corpus` makes (or reuses) ``count`` JPEGs with natural-image statistics, like
  iNaturalist's ``large`` and ``original`` sizes: 1024-2048 px on the long side, quality 90,
  every eighth with an EXIF orientation. Images depend only on (seed, index, grain), so a
  longer corpus starts with the images of a shorter one.
* :func:`reference`, :func:`content` and :func:`psnr`: the stored image's pixels (border
  excluded) against a full-precision decode, area-averaged in float to the same size and
  oriented as the client stores it.

Needs numpy, Pillow and OpenCV (``opencv-python-headless``: its float ``INTER_AREA`` is the
reference resize), imported lazily.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CORPUS_VERSION = 2
"""Bumped when :func:`photo` or :func:`build_corpus` would make different images."""
ORIENTATION_TAG = 0x0112


@dataclass
class Target:
    """What one resize asks of one image (in upright or raw coordinates, as the client stores
    it): the size after scaling, then a crop box in it or the offset of a pad around it."""

    resized: tuple[int, int]
    crop: tuple[int, int, int, int] | None
    pad: tuple[int, int] | None
    output: tuple[int, int]


# --- corpus ----------------------------------------------------------------------------------


def photo(rng, width: int, height: int, grain: tuple[float, float]):  # -> PIL.Image.Image
    """A photo-like image: a 1/f luminance field (natural images' amplitude spectrum), more or
    less out of focus (depth of field), a few hard-edged textured objects, soft low-frequency
    chroma, slight optical blur, sensor grain."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    def field(beta: float, blur: float = 0.0) -> np.ndarray:
        fy = np.fft.fftfreq(height)[:, None]
        fx = np.fft.rfftfreq(width)[None, :]
        f = np.sqrt(fx * fx + fy * fy)
        f[0, 0] = 1.0
        shape = (height, width // 2 + 1)
        spectrum = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / f**beta
        spectrum[0, 0] = 0
        if blur:  # a Gaussian blur of sigma `blur` px, in the frequency domain
            spectrum *= np.exp(-2 * (math.pi * blur * f) ** 2)
        out = np.fft.irfft2(spectrum, s=(height, width)).astype(np.float32)
        return out / (out.std() + 1e-9)

    luma = 118 + 38 * field(rng.uniform(1.0, 1.25), blur=rng.choice([0, 1, 2, 4]))
    detail = field(0.6)
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    for k in range(int(rng.integers(3, 8))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.05, 0.3) * min(width, height)
        if k % 2:
            draw.ellipse((x - r, y - r * rng.uniform(0.4, 1), x + r, y + r), fill=k + 1)
        else:
            angles = np.sort(rng.uniform(0, 2 * math.pi, int(rng.integers(3, 7))))
            draw.polygon([(x + r * math.cos(a), y + r * math.sin(a)) for a in angles], fill=k + 1)
    labels = np.asarray(mask)
    for k in np.unique(labels)[1:]:
        inside = labels == k
        luma[inside] = rng.uniform(40, 215) + 22 * detail[inside] * rng.uniform(0.3, 1.2)
    cb = 22 * field(1.6) + rng.uniform(-20, 20)
    cr = 22 * field(1.6) + rng.uniform(-20, 20)
    ycc = np.stack([luma, cb + 128, cr + 128], axis=-1).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(ycc, "YCbCr").convert("RGB")
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 0.9)))
    noise = rng.normal(0, rng.uniform(*grain), (height, width, 1)).astype(np.float32)
    noisy = np.asarray(image, dtype=np.float32) + noise
    return Image.fromarray(noisy.clip(0, 255).round().astype(np.uint8), "RGB")


def corpus_dir(base: Path, seed: int, grain: tuple[float, float]) -> Path:
    """The folder of one corpus (its images depend on the version, the seed and the grain)."""
    return base / f"v{CORPUS_VERSION}-seed{seed}-grain{grain[0]:g}-{grain[1]:g}"


def build_corpus(
    base: Path,
    count: int,
    seed: int = 11,
    grain: tuple[float, float] = (1.5, 4.5),
    log: Callable[[str], None] = print,
) -> list[Path]:
    """``corpus_dir(base, seed, grain)/NNNN.jpg`` for the first ``count`` images, making those
    missing; returns their paths."""
    import numpy as np
    from PIL import Image

    root = corpus_dir(base, seed, grain)
    paths = [root / f"{i:04d}.jpg" for i in range(count)]
    missing = [i for i, path in enumerate(paths) if not path.exists()]
    if missing:
        log(f"making {len(missing)} corpus images under {root}")
        root.mkdir(parents=True, exist_ok=True)
    for i in missing:
        rng = np.random.default_rng([seed, i])
        long_side = int(rng.integers(1024, 2049))
        ratio = rng.choice([4 / 3, 4 / 3, 3 / 2, 1.0, 16 / 9, 5 / 4])
        short_side = max(1, round(long_side / ratio))
        width, height = (long_side, short_side) if rng.random() < 0.7 else (short_side, long_side)
        image = photo(rng, width, height, grain)
        exif = Image.Exif()
        if i % 8 == 5:
            exif[ORIENTATION_TAG] = int(rng.choice([6, 6, 8, 3]))
        partial = paths[i].with_suffix(".partial")  # an interrupted run leaves no half image
        image.save(partial, "JPEG", quality=90, exif=exif.tobytes() if exif else b"")
        partial.rename(paths[i])
    return paths


def orientation(body: bytes) -> int:
    """The EXIF orientation of an image (1 when it has none)."""
    from PIL import Image

    with Image.open(io.BytesIO(body)) as image:
        return int(image.getexif().get(ORIENTATION_TAG, 1) or 1)


# --- quality ---------------------------------------------------------------------------------


def reference(body: bytes, target: Target, upright: bool):
    """Full-precision decode (Pillow, no draft), orientation as the candidate stores it, area
    average in float32 to the candidate's resized size, then its crop: the content to match."""
    import cv2
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(body)) as image:
        image = image.convert("RGB") if not upright else ImageOps.exif_transpose(image)
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    pixels = cv2.resize(pixels, target.resized, interpolation=cv2.INTER_AREA)
    if target.crop:
        left, top, right, bottom = target.crop
        pixels = pixels[top:bottom, left:right]
    return pixels


def content(data: bytes, target: Target):
    """The stored image's pixels without border padding."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    if target.pad:
        left, top = target.pad
        w, h = target.resized
        pixels = pixels[top : top + h, left : left + w]
    return pixels


def psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((a - b) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)
