"""Where each pixel goes: img2dataset 1.47's resize arithmetic, as a pure function.

img2dataset 1.47 (``resizer.py``, albumentations 1.4): ``keep_ratio`` and ``center_crop`` scale
the shorter side to ``image_size``, ``border`` and ``keep_ratio_largest`` the longer side, each
side rounded with Python's ``round`` and at least 1 px; ``center_crop`` then crops the centre
square, ``border`` pads to a square with white, ``pad_before = int((size - side) / 2.0)``. With
``resize_only_if_bigger`` an image not larger than the size (by the side that is fitted) is
left as it is, neither resized nor padded. img2dataset downscales with area averaging and
upscales with Lanczos; ``downscale`` says which applies.
"""

from __future__ import annotations

from dataclasses import dataclass

from .options import TransformOptions


@dataclass(frozen=True, slots=True)
class Plan:
    """The geometry of one image, in upright coordinates (EXIF orientation applied)."""

    resized: tuple[int, int] | None
    """(width, height) after scaling; None when the image keeps its size."""
    downscale: bool
    """Scaling makes it smaller rather than larger."""
    crop: tuple[int, int, int, int] | None
    """center_crop's box (left, top, right, bottom) in the resized image."""
    pad: tuple[int, int] | None
    """border's offset (left, top) of the resized image on the square canvas."""
    output: tuple[int, int]
    """(width, height) of the stored image."""

    @property
    def keeps_pixels(self) -> bool:
        """Nothing is scaled, cropped or padded: the stored pixels are the original's."""
        return self.resized is None and self.crop is None and self.pad in (None, (0, 0))


def plan(width: int, height: int, options: TransformOptions) -> Plan:
    """The geometry img2dataset 1.47 gives an upright ``width`` x ``height`` image."""
    mode, size = options.resize_mode, options.image_size
    if mode == "no":
        return Plan(None, False, None, None, (width, height))
    fitted = min(width, height) if mode in ("keep_ratio", "center_crop") else max(width, height)
    downscale = fitted > size
    if options.resize_only_if_bigger and not downscale:
        return Plan(None, False, None, None, (width, height))
    scale = size / fitted
    if scale != 1.0:
        new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
    else:
        new_width, new_height = width, height
    resized = None if (new_width, new_height) == (width, height) else (new_width, new_height)
    crop = pad = None
    output = (new_width, new_height)
    if mode == "center_crop":
        left, top = (new_width - size) // 2, (new_height - size) // 2
        if (new_width, new_height) != (size, size):
            crop = (left, top, left + size, top + size)
        output = (size, size)
    elif mode == "border":
        # albumentations' PadIfNeeded pads only a side shorter than the size
        output = (max(size, new_width), max(size, new_height))
        if output != (new_width, new_height):
            pad = (
                int((size - new_width) / 2.0) if new_width < size else 0,
                int((size - new_height) / 2.0) if new_height < size else 0,
            )
    return Plan(resized, downscale, crop, pad, output)
