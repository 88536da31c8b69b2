"""Recognise image formats from their first bytes and name their canonical extension."""

from __future__ import annotations

HEAD_BYTES = 32

_ISO_BMFF_BRANDS = {
    b"avif": "avif",
    b"avis": "avif",
    b"heic": "heic",
    b"heix": "heic",
    b"heim": "heic",
    b"heis": "heic",
    b"hevc": "heic",
    b"hevx": "heic",
    b"mif1": "heic",
    b"msf1": "heic",
}


def image_extension(head: bytes) -> str | None:
    """The extension for the image whose file starts with ``head``, or None if not an image."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tif"
    if head[4:8] == b"ftyp":
        return _ISO_BMFF_BRANDS.get(head[8:12])
    if head[:2] == b"BM" and len(head) >= 14:
        return "bmp"
    return None


def describe_non_image(head: bytes, content_type: str | None) -> str:
    """A short, printable reason for the manifest's error column."""
    return f"content-type {content_type or 'missing'}, body starts {head[:16]!r}"
