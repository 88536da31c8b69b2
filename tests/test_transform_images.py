"""The transform stage on real images made here: orientation, colour modes, formats, broken
files, decompression bombs, filters, skip_reencode; each with its status, sizes and pixels
(against a plain Pillow decode)."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import textwrap
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from images_support import (
    QUADRANTS,
    close,
    decode,
    encode,
    exif_bytes,
    gradient,
    jpeg,
    jpeg_bomb,
    mean_abs_diff,
    on_white,
    oriented,
    pattern,
    png,
    png_bomb,
    png_with_exif,
    quadrant_colours,
    reference,
)
from PIL import Image, ImageOps

from ldawt.daemon.transform.header import measure
from ldawt.daemon.transform.options import TransformOptions
from ldawt.daemon.transform.stage import MAX_DECODE_PIXELS, transform

BORDER = TransformOptions(resize_mode="border", image_size=256)
# re-encode at the original size: keep_ratio to a size no image here exceeds, only if bigger
REENCODE = TransformOptions(resize_mode="keep_ratio", image_size=4096, resize_only_if_bigger=True)


def reencode(fmt: str, **changes) -> TransformOptions:
    return TransformOptions(
        resize_mode="keep_ratio",
        image_size=4096,
        resize_only_if_bigger=True,
        encode_format=fmt,
        encode_quality=9 if fmt == "png" else 95,
        **changes,
    )


def resized_reference(body: bytes, size: tuple[int, int]) -> Image.Image:
    return reference(body).convert("RGB").resize(size, Image.Resampling.LANCZOS)


# --- orientation -----------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["jpg", "png", "webp", "tiff"])
def test_exif_orientation_is_applied(orientation, fmt):
    upright = pattern(120, 80)
    stored = oriented(upright, orientation)
    if fmt == "jpg":
        body = jpeg(stored, exif=exif_bytes(orientation))
    elif fmt == "png":
        body = png_with_exif(stored, orientation)
    else:
        body = encode(stored, fmt.upper(), exif=exif_bytes(orientation))
    assert measure(body) == (120, 80)
    result = transform(body, REENCODE)
    assert result.status == "ok" and result.reencoded
    assert (result.width, result.height) == (result.orig_width, result.orig_height) == (120, 80)
    out = decode(result.data)
    assert out.size == (120, 80)
    assert out.getexif().get(0x0112) in (None, 1)  # no tag left to rotate it again
    for colour, expected in zip(quadrant_colours(out), QUADRANTS, strict=True):
        assert close(colour, expected), (orientation, quadrant_colours(out))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_orientation_with_reduced_scale_decode(orientation):
    """A large JPEG shrunk in the DCT domain, then oriented: the same upright pattern."""
    upright = pattern(1800, 1200)
    body = jpeg(oriented(upright, orientation), quality=90, exif=exif_bytes(orientation))
    result = transform(body, TransformOptions(resize_mode="keep_ratio_largest", image_size=240))
    assert result.status == "ok"
    assert (result.orig_width, result.orig_height) == (1800, 1200)
    assert (result.width, result.height) == (240, 160)
    out = decode(result.data)
    for colour, expected in zip(quadrant_colours(out), QUADRANTS, strict=True):
        assert close(colour, expected), quadrant_colours(out)
    assert mean_abs_diff(out, resized_reference(body, (240, 160))) < 3


# --- colour modes and formats ----------------------------------------------------------------


def test_cmyk_jpeg_becomes_rgb():
    cmyk = gradient(200, 150).convert("CMYK")
    body = jpeg(cmyk)
    assert Image.open(io.BytesIO(body)).mode == "CMYK"
    for options in (REENCODE, TransformOptions(resize_mode="border", image_size=100)):
        result = transform(body, options)
        assert result.status == "ok" and result.reencoded
        out = decode(result.data)
        assert out.mode == "RGB"
        expected = reference(body).convert("RGB")
        if out.size != expected.size:
            out = out.crop((0, 12, 100, 87))  # the 100 x 75 content inside the border
            expected = expected.resize((100, 75), Image.Resampling.LANCZOS)
        assert mean_abs_diff(out, expected) < 3
    # skip_reencode keeps an RGB JPEG but not a CMYK one
    assert transform(body, reencode("jpg", skip_reencode=True)).reencoded


def test_progressive_jpeg():
    image = gradient(1400, 1000)
    body = jpeg(image, quality=90, progressive=True)
    assert Image.open(io.BytesIO(body)).info.get("progressive")
    assert measure(body) == (1400, 1000)
    result = transform(body, BORDER)
    assert result.status == "ok" and (result.width, result.height) == (256, 256)
    out = decode(result.data)
    content = out.crop((0, 37, 256, 220))  # 256 x 183 inside the border
    assert mean_abs_diff(content, resized_reference(body, (256, 183))) < 3
    # the border is white
    assert close(out.getpixel((128, 5)), (255, 255, 255), 3)
    assert close(out.getpixel((128, 250)), (255, 255, 255), 3)


def test_sixteen_bit_png_is_scaled_not_clipped():
    values = Image.linear_gradient("L").resize((256, 64))  # 0..255 left to right
    sixteen = values.convert("I").point(lambda v: v * 257).convert("I;16")
    body = png(sixteen)
    assert Image.open(io.BytesIO(body)).mode.startswith("I")
    result = transform(body, REENCODE)
    assert result.status == "ok"
    out = decode(result.data)
    assert out.mode == "RGB" and out.size == (256, 64)
    # a clipping conversion would make everything from x = 1 on white
    assert mean_abs_diff(out, values.convert("RGB")) < 2
    assert abs(out.getpixel((128, 32))[0] - values.getpixel((128, 32))) <= 3


def palette_with_transparency() -> tuple[Image.Image, bytes]:
    image = Image.new("P", (64, 48), 0)
    image.putpalette([255, 255, 255, 200, 30, 30, 30, 40, 220] + [0] * (256 * 3 - 9))
    draw = Image.new("P", (32, 48), 1)
    image.paste(draw, (0, 0))  # left half colour 1 (red), right half colour 0 (transparent)
    image.paste(Image.new("P", (16, 16), 2), (40, 16))  # an opaque blue square in the right
    return image, png(image, transparency=0)


def test_palette_png_transparency_flattened_on_white_for_jpg():
    image, body = palette_with_transparency()
    result = transform(body, reencode("jpg"))
    assert result.status == "ok"
    out = decode(result.data)
    assert out.mode == "RGB"
    assert close(out.getpixel((10, 10)), (200, 30, 30))  # opaque red
    assert close(out.getpixel((60, 5)), (255, 255, 255), 3)  # transparent -> white
    assert close(out.getpixel((47, 23)), (30, 40, 220))  # opaque blue
    assert mean_abs_diff(out, on_white(image.convert("RGBA"))) < 3


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_palette_png_transparency_kept_for_png_and_webp(fmt):
    _, body = palette_with_transparency()
    result = transform(body, reencode(fmt))
    assert result.status == "ok" and result.extension == fmt
    out = decode(result.data)
    assert out.mode == "RGBA"
    assert out.getpixel((60, 5))[3] == 0  # transparent stays transparent
    assert out.getpixel((10, 10))[3] == 255
    assert close(out.getpixel((10, 10))[:3], (200, 30, 30))
    assert close(out.getpixel((47, 23))[:3], (30, 40, 220))


def test_transparent_image_border_is_transparent_for_png():
    image = Image.new("RGBA", (300, 100), (10, 120, 10, 255))
    result = transform(
        png(image), TransformOptions(resize_mode="border", encode_format="png", encode_quality=6)
    )
    out = decode(result.data)
    assert out.size == (256, 256) and out.mode == "RGBA"
    assert out.getpixel((128, 2))[3] == 0  # padding
    assert out.getpixel((128, 128)) == (10, 120, 10, 255)


def test_rgba_png_resized_with_alpha_flattened_for_jpg():
    image = Image.new("RGBA", (400, 400), (0, 0, 0, 0))
    image.paste((20, 90, 200, 255), (0, 0, 200, 400))
    result = transform(png(image), TransformOptions(resize_mode="keep_ratio", image_size=100))
    out = decode(result.data)
    assert out.size == (100, 100)
    assert close(out.getpixel((20, 50)), (20, 90, 200))
    assert close(out.getpixel((80, 50)), (255, 255, 255), 3)  # transparent black -> white


def test_grayscale_becomes_rgb():
    gray = gradient(300, 200).convert("L")
    for body in (jpeg(gray), png(gray)):
        result = transform(body, BORDER)
        assert result.status == "ok"
        out = decode(result.data)
        assert out.mode == "RGB"
        r, g, b = out.split()
        assert mean_abs_diff(r, g) < 1 and mean_abs_diff(g, b) < 1
        content = out.crop((0, 43, 256, 214))  # 256 x 171 inside the border
        expected = gray.resize((256, 171), Image.Resampling.LANCZOS).convert("RGB")
        assert mean_abs_diff(content, expected) < 3


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (90, 60), colour) for colour in QUADRANTS]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_images_give_their_first_frame(fmt):
    body = animated(fmt)
    assert Image.open(io.BytesIO(body)).n_frames == 4
    assert measure(body) == (90, 60)
    for options in (reencode("jpg"), reencode("webp"), reencode("png", skip_reencode=True)):
        result = transform(body, options)
        assert result.status == "ok" and result.reencoded
        out = decode(result.data)
        assert getattr(out, "n_frames", 1) == 1
        assert close(out.convert("RGB").getpixel((45, 30)), QUADRANTS[0], 16)
    # an animated WebP is re-encoded even when the format already matches
    if fmt == "WEBP":
        assert transform(body, reencode("webp", skip_reencode=True)).reencoded


@pytest.mark.parametrize("lossless", [False, True])
def test_webp_input(lossless):
    image = gradient(500, 300)
    body = encode(image, "WEBP", quality=90, lossless=lossless)
    assert measure(body) == (500, 300)
    result = transform(body, TransformOptions(resize_mode="keep_ratio", image_size=150))
    assert result.status == "ok" and (result.width, result.height) == (250, 150)
    assert mean_abs_diff(decode(result.data), resized_reference(body, (250, 150))) < 3


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp"])
def test_encode_formats(fmt):
    result = transform(
        jpeg(gradient(640, 480)),
        TransformOptions(
            resize_mode="center_crop",
            image_size=200,
            encode_format=fmt,
            encode_quality=6 if fmt == "png" else 90,
        ),
    )
    assert result.status == "ok" and result.extension == fmt
    assert Image.open(io.BytesIO(result.data)).format == {"jpg": "JPEG", "png": "PNG"}.get(
        fmt, "WEBP"
    )
    out = decode(result.data)
    assert out.size == (200, 200) and (result.width, result.height) == (200, 200)
    expected = resized_reference(jpeg(gradient(640, 480)), (267, 200)).crop((33, 0, 233, 200))
    assert mean_abs_diff(out.convert("RGB"), expected) < 3


def test_upscaling_uses_the_whole_image():
    image = pattern(60, 40)
    result = transform(png(image), TransformOptions(resize_mode="keep_ratio", image_size=200))
    assert (result.width, result.height) == (300, 200)
    out = decode(result.data)
    for colour, expected in zip(quadrant_colours(out), QUADRANTS, strict=True):
        assert close(colour, expected)


# --- broken files ----------------------------------------------------------------------------


def test_truncated_jpeg_is_a_decode_error():
    body = jpeg(gradient(600, 400), quality=90)
    result = transform(body[: len(body) // 2], BORDER)
    assert result.status == "decode_error"
    assert "truncated" in result.detail
    assert (result.orig_width, result.orig_height) == (600, 400)  # the header was fine
    assert result.data is None


def test_truncated_png_is_a_decode_error():
    body = png(gradient(600, 400))
    result = transform(body[: len(body) // 2], BORDER)
    assert result.status == "decode_error" and result.detail


def test_random_bytes_after_a_jpeg_header():
    body = jpeg(gradient(600, 400))
    scan = body.index(b"\xff\xda")
    header_end = scan + 2 + int.from_bytes(body[scan + 2 : scan + 4], "big")
    noise = random.Random(7).randbytes(20_000)
    result = transform(body[:header_end] + noise, BORDER)
    assert result.status == "decode_error" and result.detail
    # random bytes right after the start marker: no frame header at all
    result = transform(b"\xff\xd8\xff\xe0" + noise, BORDER)
    assert result.status == "decode_error"
    assert "unreadable image header" in result.detail
    assert measure(b"\xff\xd8\xff\xe0" + noise) is None


def test_not_an_image_and_empty_input():
    for body in (b"", b"<html>hello</html>", b"\x89PNG\r\n\x1a\n"):
        assert measure(body) is None
        assert transform(body, BORDER).status == "decode_error"
    # nothing asked: stored as is, unmeasured
    result = transform(b"GIF89a", TransformOptions())
    assert result.status == "ok" and result.width is None and result.data == b"GIF89a"


# --- decompression bombs ---------------------------------------------------------------------


@pytest.mark.parametrize("bomb", [jpeg_bomb, png_bomb], ids=["jpeg", "png"])
def test_decompression_bombs_are_refused_from_the_header(bomb):
    body = bomb()
    assert len(body) < 8_000
    assert measure(body) == (30_000, 30_000)
    for options in (BORDER, TransformOptions(min_image_size=10)):
        tracemalloc.start()
        started = time.perf_counter()
        result = transform(body, options)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert result.status == "image_too_large"
        assert "decompression bomb" in result.detail and "30000x30000" in result.detail
        assert (result.orig_width, result.orig_height) == (30_000, 30_000)
        assert elapsed < 10.0  # decoding 900 Mpx would take far longer
        assert peak < 1_000_000  # Python-side allocations; the process check is below


def test_decompression_bombs_never_allocate_their_pixels(tmp_path: Path):
    """In a fresh process whose address space is capped at 1 GiB (one 30,000 x 30,000 RGB
    image needs 2.5 GiB): both bombs are refused quickly and the peak RSS stays small."""
    pytest.importorskip("resource")
    (tmp_path / "bomb.jpg").write_bytes(jpeg_bomb())
    (tmp_path / "bomb.png").write_bytes(png_bomb())
    code = textwrap.dedent(
        f"""
        import json, resource, sys, time
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from ldawt.daemon.transform.options import TransformOptions
        from ldawt.daemon.transform.stage import transform
        out = {{}}
        for name in ("bomb.jpg", "bomb.png"):
            body = open({str(tmp_path)!r} + "/" + name, "rb").read()
            started = time.perf_counter()
            result = transform(body, TransformOptions(resize_mode="border"))
            out[name] = [result.status, time.perf_counter() - started]
        # VmHWM is this program's own peak: ru_maxrss keeps the forking pytest's across exec
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "linux":
            hwm = [x for x in open("/proc/self/status") if x.startswith("VmHWM")]
            peak = int(hwm[0].split()[1])
        out["maxrss_kb"] = peak
        print(json.dumps(out))
        """
    )
    if sys.platform != "linux":
        code = code.replace("resource.setrlimit(", "(lambda *a: None)(")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    for name in ("bomb.jpg", "bomb.png"):
        status, elapsed = out[name]
        assert status == "image_too_large"
        assert elapsed < 10.0  # decoding 900 Mpx would take far longer
    maxrss_mb = out["maxrss_kb"] / (1024 * 1024 if sys.platform == "darwin" else 1024)
    assert maxrss_mb < 150


def test_a_resize_that_would_make_a_bomb_is_refused():
    strip = png(Image.new("RGB", (20_000, 1), (9, 9, 9)))
    result = transform(strip, TransformOptions(resize_mode="keep_ratio", image_size=8192))
    assert result.status == "image_too_large"
    assert "would give" in result.detail


def test_the_limit_is_pillows_default():
    assert MAX_DECODE_PIXELS == 89_478_485
    just_over = jpeg_bomb(9460, 9460)
    assert MAX_DECODE_PIXELS < 9460 * 9460
    assert transform(just_over, BORDER).status == "image_too_large"


# --- filters ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["no", "border"])
def test_filters_and_their_statuses(mode):
    def run(width, height, **filters):
        body = jpeg(gradient(width, height))
        return transform(body, TransformOptions(resize_mode=mode, **filters))

    assert run(100, 60, min_image_size=60).status == "ok"
    small = run(100, 59, min_image_size=60)
    assert small.status == "too_small"
    assert small.detail == "image of 100x59 px: shorter side 59 < min_image_size 60"
    assert (small.orig_width, small.orig_height) == (100, 59) and small.data is None

    assert run(100, 60, max_image_area=6000).status == "ok"
    large = run(100, 61, max_image_area=6000)
    assert large.status == "image_too_large"
    assert large.detail == "image of 100x61 px (6,100 px) > max_image_area 6,000"

    assert run(300, 100, max_aspect_ratio=3).status == "ok"
    wide = run(301, 100, max_aspect_ratio=3)
    assert wide.status == "bad_aspect"
    assert wide.detail == "image of 301x100 px: aspect ratio 3.01 > max_aspect_ratio 3"
    assert run(100, 301, max_aspect_ratio=3).status == "bad_aspect"

    # img2dataset's order: size, then area, then aspect ratio
    both = run(400, 10, min_image_size=20, max_aspect_ratio=2)
    assert both.status == "too_small"


def test_filters_use_upright_sizes_and_do_not_decode():
    """Filters without a resize keep the original bytes and never decode: a truncated image
    that passes the header checks is stored as is."""
    body = jpeg(gradient(200, 100), exif=exif_bytes(6))
    truncated = body[: len(body) // 2]
    result = transform(truncated, TransformOptions(min_image_size=50))
    assert result.status == "ok" and result.data == truncated and not result.reencoded
    assert (result.width, result.height) == (100, 200)


# --- originals and skip_reencode -------------------------------------------------------------


def test_default_options_store_the_original_bytes():
    for body in (
        jpeg(gradient(300, 200), exif=exif_bytes(8)),
        png(gradient(30, 20)),
        animated("GIF"),
    ):
        result = transform(body, TransformOptions())
        assert result.status == "ok" and result.data is body and not result.reencoded
        assert (result.width, result.height) == measure(body)
        assert (result.orig_width, result.orig_height) == measure(body)
    assert transform(jpeg(gradient(300, 200)), TransformOptions()).extension == "jpg"


def test_skip_reencode_keeps_the_original_bytes():
    body = jpeg(gradient(200, 100))
    small = TransformOptions(
        resize_mode="border", image_size=256, resize_only_if_bigger=True, skip_reencode=True
    )
    kept = transform(body, small)
    assert kept.status == "ok" and kept.data is body and not kept.reencoded
    assert kept.extension == "jpg" and (kept.width, kept.height) == (200, 100)
    # without skip_reencode: re-encoded, same size, no padding (resize_only_if_bigger)
    redone = transform(body, TransformOptions(**{**small.to_dict(), "skip_reencode": False}))
    assert redone.reencoded and (redone.width, redone.height) == (200, 100)
    # a resize forces encoding
    resized = transform(body, TransformOptions(**{**small.to_dict(), "image_size": 100}))
    assert resized.reencoded and (resized.width, resized.height) == (100, 100)
    # another format forces encoding
    as_png = transform(png(gradient(200, 100)), small)
    assert as_png.reencoded and as_png.extension == "jpg"
    # the size already fitted (no scaling, crop or pad): the original
    fitted = TransformOptions(resize_mode="keep_ratio", image_size=100, skip_reencode=True)
    assert transform(body, fitted).data is body
    # a PNG with transparency stays a PNG with its bytes
    rgba = png(Image.new("RGBA", (50, 40), (1, 2, 3, 100)))
    keep_png = TransformOptions(**{**small.to_dict(), "encode_format": "png", "encode_quality": 9})
    assert transform(rgba, keep_png).data is rgba


# --- measure ---------------------------------------------------------------------------------


def measured_by_pillow(body: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(body)) as image:
        return ImageOps.exif_transpose(image).size


def formats() -> dict[str, bytes]:
    image = gradient(123, 77)
    rgba = image.convert("RGBA")
    rgba.putalpha(128)
    bodies = {
        "jpeg": jpeg(image),
        "jpeg progressive": jpeg(image, progressive=True),
        "jpeg grayscale": jpeg(image.convert("L")),
        "jpeg cmyk": jpeg(image.convert("CMYK")),
        "jpeg exif 6": jpeg(image, exif=exif_bytes(6)),
        "jpeg exif 3": jpeg(image, exif=exif_bytes(3)),
        "png": png(image),
        "png rgba": png(rgba),
        "png palette": png(image.convert("P")),
        "png 16-bit": png(image.convert("L").convert("I").point(lambda v: v * 257).convert("I;16")),
        "png exif 8": png_with_exif(image, 8),
        "gif": encode(image, "GIF"),
        "gif animated": animated("GIF"),
        "webp lossy": encode(image, "WEBP"),
        "webp lossless": encode(image, "WEBP", lossless=True),
        "webp alpha": encode(rgba, "WEBP"),
        "webp exif 6": encode(image, "WEBP", exif=exif_bytes(6)),
        "webp animated": animated("WEBP"),
        "bmp": encode(image, "BMP"),
        "bmp palette": encode(image.convert("P"), "BMP"),
        "tiff": encode(image, "TIFF"),
        "tiff exif 6": encode(image, "TIFF", exif=exif_bytes(6)),
    }
    Image.init()
    if "AVIF" in Image.SAVE:  # Pillow 11.2 and later
        bodies["avif"] = encode(image, "AVIF")
    return bodies


@pytest.mark.parametrize("name", list(formats()))
def test_measure_every_format(name):
    body = formats()[name]
    size = measure(body)
    assert size == measured_by_pillow(body), name
    assert size in ((123, 77), (77, 123), (90, 60))
    # and the stage's original size agrees with it
    result = transform(body, TransformOptions(resize_mode="keep_ratio", image_size=50))
    assert result.status == "ok", result.detail
    assert (result.orig_width, result.orig_height) == size


def test_measure_is_cheap():
    """The no-transform path measures every image: a few microseconds (about 5 on the
    benchmark machine); the bound here only catches a decode sneaking in."""
    body = jpeg(gradient(2000, 1500), quality=90, exif=exif_bytes(6))
    measure(body)
    calls = 2000
    started = time.perf_counter()
    for _ in range(calls):
        measure(body)
    per_call = (time.perf_counter() - started) / calls
    assert per_call < 100e-6, per_call


# --- threads ---------------------------------------------------------------------------------


def test_concurrent_transforms_give_the_serial_results():
    bodies = [
        jpeg(gradient(400 + 37 * i, 300 + 11 * i), exif=exif_bytes(1 + i % 8)) for i in range(12)
    ]
    options = TransformOptions(resize_mode="center_crop", image_size=128)
    serial = [transform(body, options) for body in bodies]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda body: transform(body, options), bodies))
    assert parallel == serial


def with_segment(body: bytes, marker: int, payload: bytes) -> bytes:
    """``body`` (a JPEG) with a marker segment inserted right after its start marker."""
    segment = bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload
    return body[:2] + segment + body[2:]


def test_measure_header_edge_cases():
    image = pattern(120, 80)
    plain = jpeg(image)
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    cases = {
        # Pillow falls back to an XMP orientation when EXIF has none
        "xmp orientation": with_segment(plain, 0xE1, b"http://ns.adobe.com/xap/1.0/\0" + xmp),
        # EXIF wins over XMP
        "exif and xmp": with_segment(
            with_segment(plain, 0xE1, b"http://ns.adobe.com/xap/1.0/\0" + xmp),
            0xE1,
            exif_bytes(3),  # starts with "Exif\0\0"
        ),
        # junk bytes between segments, which decoders skip
        "junk": plain[:20] + b"\0\0junk" + plain[20:],
        # an EXIF block without an orientation
        "exif without orientation": jpeg(image, exif=Image.Exif().tobytes()),
        "big comment": with_segment(plain, 0xFE, b"x" * 60_000),
    }
    for name, body in cases.items():
        assert measure(body) == measured_by_pillow(body), name
    assert measure(cases["xmp orientation"]) == (80, 120)
    assert measure(cases["exif and xmp"]) == (120, 80)
    # the stage turns the pixels the same way
    out = decode(transform(cases["xmp orientation"], REENCODE).data)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(cases["xmp orientation"])))
    assert out.size == expected.size == (80, 120)
    assert mean_abs_diff(out, expected.convert("RGB")) < 3
