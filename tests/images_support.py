"""Real test images made with Pillow, hand-built decompression bombs and broken files, pixel
comparisons for the transform stage's tests, and a loopback origin serving such images byte for
byte (for tests through the real pipeline)."""

from __future__ import annotations

import hashlib
import io
import random
import struct
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web
from PIL import Image, ImageChops, ImageDraw, ImageOps, ImageStat

from ldawt.manager.demo import serve_in_background

QUADRANTS = ((220, 30, 30), (30, 200, 40), (40, 50, 210), (240, 230, 40))
"""Colours of the test pattern's top-left, top-right, bottom-left, bottom-right quadrants."""

# The transpose that undoes each EXIF orientation's display transform: the stored pixels of an
# image with orientation ``o`` are ``pattern.transpose(STORE[o])``.
STORE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def pattern(width: int, height: int) -> Image.Image:
    """An asymmetric RGB test pattern: four flat quadrants of ``QUADRANTS`` (flat areas survive
    JPEG and resizing, so orientation and colour are checked at the quadrant centres)."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    half_w, half_h = width // 2, height // 2
    boxes = [
        (0, 0, half_w - 1, half_h - 1),
        (half_w, 0, width - 1, half_h - 1),
        (0, half_h, half_w - 1, height - 1),
        (half_w, half_h, width - 1, height - 1),
    ]
    for box, colour in zip(boxes, QUADRANTS, strict=True):
        draw.rectangle(box, fill=colour)
    return image


def gradient(width: int, height: int) -> Image.Image:
    """A smooth RGB image (compresses well, resizes predictably)."""
    horizontal = Image.linear_gradient("L").rotate(90).resize((width, height))
    vertical = Image.linear_gradient("L").resize((width, height))
    return Image.merge("RGB", (horizontal, vertical, ImageChops.invert(horizontal)))


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def jpeg(image: Image.Image, quality: int = 95, **params) -> bytes:
    return encode(image, "JPEG", quality=quality, **params)


def png(image: Image.Image, **params) -> bytes:
    return encode(image, "PNG", **params)


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def oriented(upright: Image.Image, orientation: int) -> Image.Image:
    """The stored pixels that, with EXIF ``orientation``, display as ``upright``."""
    method = STORE[orientation]
    return upright if method is None else upright.transpose(method)


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()


def format_of(data: bytes) -> str | None:
    """Pillow's name of the format of ``data`` ("JPEG", "PNG", ...)."""
    with Image.open(io.BytesIO(data)) as image:
        return image.format


def reference(body: bytes) -> Image.Image:
    """A plain full decode, upright (Pillow's exif_transpose)."""
    with Image.open(io.BytesIO(body)) as image:
        return ImageOps.exif_transpose(image)


def on_white(image: Image.Image) -> Image.Image:
    """``image`` composited onto white, as RGB."""
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return background


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per channel value (0-255) of two same-size images."""
    assert a.size == b.size, (a.size, b.size)
    assert a.mode == b.mode, (a.mode, b.mode)
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / len(a.getbands())


def quadrant_colours(image: Image.Image) -> list[tuple[int, ...]]:
    """The colours at the centres of the four quadrants (TL, TR, BL, BR)."""
    width, height = image.size
    rgb = image.convert("RGB")
    points = [(width // 4, height // 4), (3 * width // 4, height // 4)]
    points += [(width // 4, 3 * height // 4), (3 * width // 4, 3 * height // 4)]
    return [rgb.getpixel(p) for p in points]


def close(colour: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour, expected, strict=True))


# --- decompression bombs, written by hand ----------------------------------------------------


def jpeg_bomb(width: int = 30_000, height: int = 30_000, size: int = 4096) -> bytes:
    """A JPEG of about ``size`` bytes whose frame header declares ``width`` x ``height`` px: a
    real 16 x 16 JPEG with its SOF0 dimensions rewritten, padded with a comment segment."""
    body = bytearray(jpeg(gradient(16, 16), quality=50))
    sof = body.index(b"\xff\xc0")
    body[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    padding = max(0, size - len(body) - 4)
    comment = b"\xff\xfe" + struct.pack(">H", padding + 2) + b"\0" * padding
    return bytes(body[:2] + comment + body[2:])


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A PNG of a few KB declaring ``width`` x ``height`` RGB px, whose IDAT is zlib-compressed
    zero rows (it would inflate to gigabytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + 3 * width) * 64, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")
    )


def png_with_exif(image: Image.Image, orientation: int) -> bytes:
    """A PNG with an eXIf chunk carrying ``orientation``."""
    return png(image, exif=exif_bytes(orientation))


# --- a loopback origin serving given bytes ---------------------------------------------------


class ImageOrigin:
    """Serves ``bodies[name]`` byte for byte at ``/<name>`` on 127.0.0.1 (404 for other names);
    ``bodies`` may change while it runs. Counts the requests per name."""

    def __init__(self, bodies: dict[str, bytes]) -> None:
        self.bodies = dict(bodies)
        self.hits: Counter[str] = Counter()
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{name}", self._serve)
        return app

    async def _serve(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.hits[name] += 1
        if name not in self.bodies:
            raise web.HTTPNotFound()
        return web.Response(body=self.bodies[name], content_type="application/octet-stream")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


@contextmanager
def image_origin(bodies: dict[str, bytes]) -> Iterator[ImageOrigin]:
    origin = ImageOrigin(bodies)
    with serve_in_background(origin.app()) as port:
        origin.port = port
        yield origin


def truncated_jpeg(width: int = 600, height: int = 400) -> bytes:
    """A JPEG cut in half: its header is whole, its scan is not."""
    body = jpeg(gradient(width, height), quality=90)
    return body[: len(body) // 2]


def noise_after_jpeg_header(width: int = 600, height: int = 400, seed: int = 7) -> bytes:
    """A real JPEG header (up to and including the start of scan) followed by random bytes."""
    body = jpeg(gradient(width, height))
    scan = body.index(b"\xff\xda")
    header_end = scan + 2 + int.from_bytes(body[scan + 2 : scan + 4], "big")
    return body[:header_end] + random.Random(seed).randbytes(20_000)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def tar_members(path: Path) -> dict[str, bytes]:
    """Every file member of the tar (or .tar.gz) at ``path``, name -> bytes."""
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
