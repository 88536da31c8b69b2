"""The transform stage: filter, resize and re-encode one downloaded image (Pillow).

``transform(body, options)`` never raises and is meant for a worker thread: Pillow releases
the GIL while it decodes, resizes and encodes, so a thread pool uses the cores. Its steps:

1. the header (``header.read_header``, pure Python) gives format, size and EXIF orientation;
   the filters and the decompression-bomb limit are checked there, before any pixel exists;
2. ``resize_mode="no"``, or ``skip_reencode`` with nothing to change: the original bytes;
3. otherwise decode, JPEGs at reduced scale in the DCT domain when the target is much smaller
   (``Image.draft``: 1/2, 1/4 or 1/8, keeping at least ``DRAFT_GAP`` times the target size),
   then one resize (Hamming-windowed, the closest Pillow filter to img2dataset's area average,
   to downscale; Lanczos, as img2dataset, to upscale), EXIF orientation, crop or pad, and
   encode. Output sizes are img2dataset 1.47's (``geometry.plan``).

Colour: CMYK, YCbCr, grayscale, palette, 1-bit and 16-bit images become 8-bit RGB (16-bit
scaled, not clipped); transparency is flattened onto white for JPEG and kept for PNG and WebP;
animated GIF/WebP/PNG give their first frame. Metadata (EXIF, ICC profile) is not copied.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from ..contract import Status
from ..fetcher.sniff import image_extension
from .geometry import Plan, plan
from .header import Header, read_header
from .options import TransformOptions

MAX_DECODE_PIXELS = 89_478_485
"""Images declaring more pixels are refused from their header (status image_too_large) even
with no max_image_area: Pillow's default decompression-bomb limit (1 GiB of 24-bit pixels / 3).
A resize whose result would be larger is refused too."""
DRAFT_GAP: float | None = 2.0
"""A JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps it at least this many
times the resized size; the resize does the rest. None: decode every pixel. Measured
(bench/transform_candidates.py, border 256 from 1024-2048 px JPEGs): 2.0 runs 1.7x
img2dataset's images/s per core at 0.13 dB PSNR below its images; 1.5 runs 2.0x at 0.34 dB
below (0.49 on a sharper corpus); 1.0 runs 2.2x but loses 0.9 dB."""
REDUCING_GAP: float | None = None
"""Pillow's ``reducing_gap`` for the resize: first average whole blocks (``Image.reduce``)
while at least this many times the target size remains, then filter. None: filter only (after
the draft the image is within a few times the target; measured, reducing first gains nothing)."""
DOWNSCALE_FILTER = Image.Resampling.HAMMING
"""Pillow's filter for downscaling. img2dataset uses OpenCV's area averaging; Pillow has no
exact area filter (its BOX gives whole pixels weight 0 or 1, poor at fractional ratios) and
its Hamming-windowed filter is the closest to area averaging at every ratio measured (about
50 dB PSNR against it, before encoding; bench/transform_candidates.py)."""
UPSCALE_FILTER = Image.Resampling.LANCZOS
"""img2dataset's upscale interpolation."""


@dataclass(frozen=True, slots=True)
class TransformResult:
    """One image through the stage. For ``ok``: ``data`` is what to store (the original bytes
    when ``reencoded`` is False), ``extension`` its extension, ``width``/``height`` the stored
    image's size and ``orig_width``/``orig_height`` the downloaded image's, upright (EXIF
    orientation applied). Sizes are None only when an image stored as is has an unreadable
    header (no transform asked). For failures: ``detail`` says why, and the original size is
    set when the header was read."""

    status: str
    detail: str | None = None
    data: bytes | None = None
    extension: str | None = None
    width: int | None = None
    height: int | None = None
    orig_width: int | None = None
    orig_height: int | None = None
    reencoded: bool = False

    @property
    def ok(self) -> bool:
        return self.status == Status.OK


def transform(body: bytes, options: TransformOptions) -> TransformResult:
    """Filter, resize and re-encode the image ``body`` as ``options`` say. Never raises."""
    header = read_header(body)
    try:
        return _transform(body, header, options)
    except Image.DecompressionBombError as exc:
        return _failed(Status.IMAGE_TOO_LARGE, _describe(exc), header)
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ...
        return _failed(Status.DECODE_ERROR, _describe(exc), header)


def _transform(body: bytes, header: Header | None, options: TransformOptions) -> TransformResult:
    if not options.active:
        if header is None:
            return TransformResult(Status.OK, data=body, extension=_extension(body))
        return _original(body, header)
    if header is None:
        return TransformResult(Status.DECODE_ERROR, f"unreadable image header ({_head(body)})")
    refused = _refusal(header, options)
    if refused is not None or not options.resizes:
        return refused or _original(body, header)

    with Image.open(io.BytesIO(body), formats=_PILLOW_FORMATS.get(header.extension)) as image:
        if image.size != (header.width, header.height):
            # the two header readers disagree (unusual GIF frames, odd files): trust the decoder
            header = Header(header.extension, *image.size, header.orientation)
            refused = _refusal(header, options)
            if refused is not None:
                return refused
        width, height = header.upright
        geometry = plan(width, height, options)
        refused = _oversized(header, geometry)
        if refused is not None:
            return refused
        if options.skip_reencode and geometry.keeps_pixels and _storable(image, header, options):
            return _original(body, header)
        pixels = _pixels(image, header, geometry, options.encode_format != "jpg")
    data = _encode(pixels, options)
    return TransformResult(
        Status.OK,
        data=data,
        extension=options.encode_format,
        width=pixels.width,
        height=pixels.height,
        orig_width=width,
        orig_height=height,
        reencoded=True,
    )


def _original(body: bytes, header: Header) -> TransformResult:
    width, height = header.upright
    return TransformResult(
        Status.OK,
        data=body,
        extension=header.extension,
        width=width,
        height=height,
        orig_width=width,
        orig_height=height,
    )


# --- checks from the header ------------------------------------------------------------------


def _refusal(header: Header, options: TransformOptions) -> TransformResult | None:
    """The filter that refuses this image, img2dataset's order after the bomb limit."""
    width, height = header.upright
    pixels = width * height
    size = f"{width}x{height} px"
    if pixels > MAX_DECODE_PIXELS:
        return _refused(
            Status.IMAGE_TOO_LARGE,
            f"image of {size} ({pixels:,} px) exceeds the decoder's limit of "
            f"{MAX_DECODE_PIXELS:,} px (decompression bomb?); not decoded",
            header,
        )
    shorter, longer = min(width, height), max(width, height)
    if shorter < options.min_image_size:
        return _refused(
            Status.TOO_SMALL,
            f"image of {size}: shorter side {shorter} < min_image_size {options.min_image_size}",
            header,
        )
    if options.max_image_area is not None and pixels > options.max_image_area:
        return _refused(
            Status.IMAGE_TOO_LARGE,
            f"image of {size} ({pixels:,} px) > max_image_area {options.max_image_area:,}",
            header,
        )
    if options.max_aspect_ratio is not None and longer / shorter > options.max_aspect_ratio:
        return _refused(
            Status.BAD_ASPECT,
            f"image of {size}: aspect ratio {longer / shorter:.3g} > max_aspect_ratio "
            f"{options.max_aspect_ratio:g}",
            header,
        )
    return None


def _oversized(header: Header, geometry: Plan) -> TransformResult | None:
    """A resize that would itself make a bomb (keep_ratio of a 1 x 50,000 px strip)."""
    for width, height in (geometry.resized or geometry.output, geometry.output):
        if width * height > MAX_DECODE_PIXELS:
            return _refused(
                Status.IMAGE_TOO_LARGE,
                f"resizing {header.upright[0]}x{header.upright[1]} px would give {width}x"
                f"{height} px, more than the limit of {MAX_DECODE_PIXELS:,} px",
                header,
            )
    return None


def _refused(status: str, detail: str, header: Header) -> TransformResult:
    width, height = header.upright
    return TransformResult(status, detail, orig_width=width, orig_height=height)


def _failed(status: str, detail: str, header: Header | None) -> TransformResult:
    if header is None:
        return TransformResult(status, detail)
    return _refused(status, detail, header)


# --- pixels ----------------------------------------------------------------------------------

_PILLOW_FORMATS = {
    "jpg": ("JPEG",),
    "png": ("PNG",),
    "gif": ("GIF",),
    "webp": ("WEBP",),
    "bmp": ("BMP",),
    "tif": ("TIFF",),
    "avif": ("AVIF",),
}
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_PAD_COLOURS = {"L": 255, "RGB": (255, 255, 255), "LA": (255, 0), "RGBA": (255, 255, 255, 0)}
"""border's padding: white, and transparent where the image keeps its transparency."""
_STORABLE_MODES = {"jpg": ("RGB", "L"), "png": None, "webp": None}
"""Modes an original may have to be kept as it is (None: any); a CMYK JPEG is converted."""


def _storable(image: Image.Image, header: Header, options: TransformOptions) -> bool:
    """skip_reencode: the original already is what re-encoding would make, pixel for pixel."""
    if header.extension != options.encode_format or getattr(image, "n_frames", 1) > 1:
        return False
    modes = _STORABLE_MODES[options.encode_format]
    return modes is None or image.mode in modes


def _pixels(image: Image.Image, header: Header, geometry: Plan, keep_alpha: bool) -> Image.Image:
    """Decode (at reduced scale when it pays), convert, resize, orient, crop or pad: the
    stored image, in mode RGB or (keep_alpha) RGBA."""
    resized = geometry.resized
    if resized is not None and header.orientation >= 5:
        resized = (resized[1], resized[0])  # the decoder's orientation
    box = None
    if DRAFT_GAP and resized and geometry.downscale and image.format in ("JPEG", "MPO"):
        wanted = (max(1, int(resized[0] * DRAFT_GAP)), max(1, int(resized[1] * DRAFT_GAP)))
        drafted = image.draft(None, wanted)
        if drafted is not None:
            box = drafted[1]
    image.load()
    pixels = _eight_bit(image, keep_alpha)
    if resized is not None:
        resample = DOWNSCALE_FILTER if geometry.downscale else UPSCALE_FILTER
        gap = REDUCING_GAP if geometry.downscale else None
        pixels = pixels.resize(resized, resample, box=box, reducing_gap=gap)
    if header.orientation in _TRANSPOSE:
        pixels = pixels.transpose(_TRANSPOSE[header.orientation])
    if geometry.crop is not None:
        pixels = pixels.crop(geometry.crop)
    if geometry.pad is not None:
        canvas = Image.new(pixels.mode, geometry.output, _PAD_COLOURS[pixels.mode])
        canvas.paste(pixels, geometry.pad)
        pixels = canvas
    if pixels.mode not in ("RGB", "RGBA"):
        pixels = pixels.convert("RGBA" if pixels.mode == "LA" else "RGB")
    return pixels


def _eight_bit(image: Image.Image, keep_alpha: bool) -> Image.Image:
    """The decoded image as L, RGB, LA or RGBA (8 bits a channel); transparency kept when
    ``keep_alpha``, else flattened onto white. L and LA stay single-channel until the end:
    cheaper to resize."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        image = _sixteen_to_eight(image)
    elif mode in ("F", "1"):
        image = image.convert("L")
    elif mode in ("P", "PA"):
        transparent = mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if transparent else "RGB")
    elif mode in ("L", "RGB") and "transparency" in image.info:
        image = image.convert("LA" if mode == "L" else "RGBA")
    elif mode in ("La", "RGBa"):
        image = image.convert("LA" if mode == "La" else "RGBA")
    elif mode not in ("L", "RGB", "LA", "RGBA"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX
    if image.mode in ("LA", "RGBA") and not keep_alpha:
        image = _flatten(image)
    return image


def _sixteen_to_eight(image: Image.Image) -> Image.Image:
    """16-bit grayscale (modes I;16* and I, which Pillow uses for 16-bit PNG and TIFF) to 8 bits
    by scaling 0-65535 onto 0-255, rounded; Pillow's own convert("L") clips everything above
    255 to white."""
    if image.mode != "I":
        image = image.convert("I")
    return image.point(lambda value: value * (1 / 257) + 0.5).convert("L")


def _flatten(image: Image.Image) -> Image.Image:
    """Composite onto white (out = pixel * alpha + 255 * (1 - alpha), as img2dataset)."""
    base_mode = "L" if image.mode == "LA" else "RGB"
    background = Image.new(base_mode, image.size, 255 if base_mode == "L" else (255, 255, 255))
    background.paste(image.convert(base_mode), mask=image.getchannel("A"))
    return background


def _encode(image: Image.Image, options: TransformOptions) -> bytes:
    out = io.BytesIO()
    if options.encode_format == "jpg":
        image.save(out, "JPEG", quality=options.encode_quality)
    elif options.encode_format == "png":
        image.save(out, "PNG", compress_level=options.encode_quality)
    else:
        image.save(out, "WEBP", quality=options.encode_quality)
    return out.getvalue()


# --- messages --------------------------------------------------------------------------------


def _extension(body: bytes) -> str | None:
    return image_extension(body[:32])


def _head(body: bytes) -> str:
    kind = _extension(body)
    return f"{kind or 'unknown format'}, {len(body):,} bytes, starts {body[:16]!r}"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
