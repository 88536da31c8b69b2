"""An image's format, size and EXIF orientation from its first bytes, without decoding pixels.

Pure Python over the header structures of JPEG, PNG, GIF, WebP and BMP: 2-6 microseconds a
call, because ``measure`` runs for every image even when no transform is asked. Other formats
(TIFF, AVIF, HEIC when a plugin reads it) fall back to the Pillow plugin's open, which reads
headers only (about 100 microseconds).

Sizes are what Pillow reports for the same bytes (``Image.open(...).size``), so the stage's
checks and Pillow's decoder agree; ``orientation`` is the EXIF Orientation (1-8) that Pillow's
``ImageOps.exif_transpose`` would apply (for JPEG also the XMP ``tiff:Orientation`` Pillow falls
back to). Pillow's TIFF plugin reports TIFFs upright and turns their pixels itself on load, so
their headers say orientation 1.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from ..fetcher.sniff import image_extension

# SOF0-SOF15 but DHT (C4), JPG (C8) and DAC (CC)
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})
_EXIF_APP1 = b"Exif\x00\x00"
_XMP_APP1 = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')
_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True, slots=True)
class Header:
    """What the header says. ``width``/``height`` as stored (before orientation)."""

    extension: str
    """The canonical extension by the bytes (``ldawt.daemon.fetcher.sniff``): jpg, png, ..."""
    width: int
    height: int
    orientation: int = 1
    """EXIF orientation 1-8; 5-8 swap width and height when the image is shown upright."""

    @property
    def upright(self) -> tuple[int, int]:
        """(width, height) once EXIF orientation is applied: the size a viewer shows."""
        if self.orientation >= 5:
            return self.height, self.width
        return self.width, self.height


def read_header(body: bytes) -> Header | None:
    """The header of ``body``, or None when it is not an image or its header is unreadable.
    Never raises."""
    try:
        extension = image_extension(body[:32])
        if extension is None:
            return None
        size = _PARSERS.get(extension, _pillow_header)(body)
        if size is None or size[0] <= 0 or size[1] <= 0:
            return None
        return Header(extension, *size)
    except Exception:
        return None


def measure(body: bytes) -> tuple[int, int] | None:
    """The (width, height) of the image in ``body`` as shown upright (EXIF orientation
    applied), read from its header only; None when it is not a readable image. Never raises."""
    header = read_header(body)
    return header.upright if header is not None else None


# --- JPEG ------------------------------------------------------------------------------------


def _jpeg(body: bytes) -> tuple[int, int, int] | None:
    """Walk the marker segments up to the first scan: SOFn gives the size, the first Exif APP1
    the orientation (an XMP APP1 when Exif has none, as Pillow does)."""
    n = len(body)
    i = 2
    size: tuple[int, int] | None = None
    orientation: int | None = None
    xmp_orientation: int | None = None
    while i + 4 <= n:
        if body[i] != 0xFF:  # junk between segments: Pillow skips it too
            i += 1
            continue
        marker = body[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE_MARKERS:
            i += 2
            continue
        if marker == 0xD9 or marker == 0xDA:  # EOI, SOS: no more header
            break
        length = (body[i + 2] << 8) | body[i + 3]
        if length < 2:
            return None
        start, end = i + 4, i + 2 + length
        if marker in _SOF_MARKERS:
            if start + 5 > n:
                return None
            height, width = struct.unpack_from(">HH", body, start + 1)
            size = (width, height)
        elif marker == 0xE1:
            if orientation is None and body.startswith(_EXIF_APP1, start):
                orientation = _tiff_orientation(body, start + 6, min(end, n))
            elif xmp_orientation is None and body.startswith(_XMP_APP1, start):
                match = _XMP_ORIENTATION.search(body, start, min(end, n))
                xmp_orientation = int(match[2]) if match else None
        i = end
    if size is None:
        return None
    if orientation is None:
        orientation = xmp_orientation
    return size[0], size[1], _valid_orientation(orientation)


def _tiff_orientation(data: bytes, start: int, end: int) -> int | None:
    """The Orientation tag of IFD0 of the TIFF structure at ``data[start:end]`` (EXIF), or
    None when it has none."""
    order = data[start : start + 4]
    if order == b"II*\x00":
        e = "<"
    elif order == b"MM\x00*":
        e = ">"
    else:
        return None
    (ifd,) = struct.unpack_from(e + "I", data, start + 4)
    at = start + ifd
    if at + 2 > end:
        return None
    (count,) = struct.unpack_from(e + "H", data, at)
    at += 2
    for k in range(min(count, (end - at) // 12)):
        tag, kind = struct.unpack_from(e + "HH", data, at + 12 * k)
        if tag == _ORIENTATION_TAG:
            if kind == 3:  # SHORT
                return struct.unpack_from(e + "H", data, at + 12 * k + 8)[0]
            if kind == 4:  # LONG
                return struct.unpack_from(e + "I", data, at + 12 * k + 8)[0]
            return None
    return None


def _valid_orientation(value: int | None) -> int:
    return value if value is not None and 1 <= value <= 8 else 1


# --- PNG, GIF, WebP, BMP ---------------------------------------------------------------------


def _png(body: bytes) -> tuple[int, int, int] | None:
    """IHDR gives the size; an eXIf chunk (anywhere before IEND) the orientation."""
    if body[12:16] != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", body, 16)
    orientation = None
    n = len(body)
    i = 8
    while i + 8 <= n:
        length, kind = struct.unpack_from(">I4s", body, i)
        if kind == b"eXIf":
            data_start = i + 8
            # Pillow accepts the payload with or without the "Exif\0\0" prefix
            if body.startswith(_EXIF_APP1, data_start):
                data_start += 6
            orientation = _tiff_orientation(body, data_start, min(i + 8 + length, n))
            break
        if kind == b"IEND":
            break
        i += 12 + length
    return width, height, _valid_orientation(orientation)


def _gif(body: bytes) -> tuple[int, int, int] | None:
    """The logical screen, grown to the first frame's extent as Pillow grows it."""
    width, height, flags = struct.unpack_from("<HHB", body, 6)
    i = 13
    if flags & 0x80:  # global colour table
        i += 3 << ((flags & 7) + 1)
    n = len(body)
    while i < n:
        block = body[i]
        if block == 0x21:  # extension: label, then data sub-blocks
            i += 2
            while i < n and body[i]:
                i += body[i] + 1
            i += 1
        elif block == 0x2C:  # first image descriptor
            if i + 9 > n:
                break
            x0, y0, w, h = struct.unpack_from("<HHHH", body, i + 1)
            width, height = max(width, x0 + w), max(height, y0 + h)
            break
        else:
            break
    return width, height, 1


def _webp(body: bytes) -> tuple[int, int, int] | None:
    chunk = body[12:16]
    if chunk == b"VP8 ":
        if body[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack_from("<HH", body, 26)
        return width & 0x3FFF, height & 0x3FFF, 1
    if chunk == b"VP8L":
        if len(body) < 25 or body[20] != 0x2F:
            return None
        (bits,) = struct.unpack_from("<I", body, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, 1
    if chunk == b"VP8X":
        if len(body) < 30:
            return None
        width = int.from_bytes(body[24:27], "little") + 1
        height = int.from_bytes(body[27:30], "little") + 1
        orientation = None
        if body[20] & 0x08:  # has an EXIF chunk
            orientation = _webp_exif_orientation(body)
        return width, height, _valid_orientation(orientation)
    return None


def _webp_exif_orientation(body: bytes) -> int | None:
    n = len(body)
    i = 12
    while i + 8 <= n:
        kind, length = struct.unpack_from("<4sI", body, i)
        if kind == b"EXIF":
            start = i + 8
            if body.startswith(_EXIF_APP1, start):
                start += 6
            return _tiff_orientation(body, start, min(i + 8 + length, n))
        i += 8 + length + (length & 1)
    return None


def _bmp(body: bytes) -> tuple[int, int, int] | None:
    (dib_size,) = struct.unpack_from("<I", body, 14)
    if dib_size == 12:
        width, height = struct.unpack_from("<HH", body, 18)
    elif dib_size >= 40:
        width, height = struct.unpack_from("<ii", body, 18)
    else:
        return None
    return width, abs(height), 1


_PARSERS = {"jpg": _jpeg, "png": _png, "gif": _gif, "webp": _webp, "bmp": _bmp}


def _pillow_header(body: bytes) -> tuple[int, int, int] | None:
    """Other formats (TIFF, AVIF, HEIC when a plugin registers it): the Pillow plugin's own
    open, which reads headers only. Called directly rather than through ``Image.open``, whose
    decompression-bomb check warns or raises on sizes the stage refuses itself."""
    import io

    from PIL import Image

    pillow_format = _PILLOW_FORMATS.get(image_extension(body[:32]) or "")
    if pillow_format is None:
        return None
    if pillow_format not in Image.OPEN:
        Image.init()
    if pillow_format not in Image.OPEN:
        return None
    factory, accept = Image.OPEN[pillow_format]
    if accept is not None and accept(body[:16]) is not True:
        return None
    image = factory(io.BytesIO(body), None)
    try:
        width, height = image.size
        # Pillow's TIFF plugin reports the upright size and turns the pixels itself on load
        orientation = None if pillow_format == "TIFF" else image.getexif().get(_ORIENTATION_TAG)
    finally:
        image.close()
    return width, height, _valid_orientation(orientation if isinstance(orientation, int) else None)


_PILLOW_FORMATS = {"tif": "TIFF", "avif": "AVIF", "heic": "HEIF"}
