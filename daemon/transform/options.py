"""Transform settings: one frozen, JSON-able record, like ``FetchOptions``, for the shard spec.

Names and meanings follow img2dataset's options (``--resize_mode``, ``--image_size``, ...). The
default, ``resize_mode="no"`` without filters, stores every original byte for byte; the stage
then only measures images (``TransformOptions.active`` is False).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..records import known_fields

RESIZE_MODES = ("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop")
ENCODE_FORMATS = ("jpg", "png", "webp")
MAX_IMAGE_SIZE = {"jpg": 65500, "png": 65500, "webp": 16383}
"""The largest side each output format can store (libjpeg's limit, WebP's 14-bit sizes)."""


@dataclass(frozen=True)
class TransformOptions:
    resize_mode: str = "no"
    """"no": store originals byte for byte (encode_* and skip_reencode do not apply);
    "border": fit the longer side to image_size and pad to a white square; "keep_ratio": fit the
    shorter side; "keep_ratio_largest": fit the longer side; "center_crop": fit the shorter side
    and crop the centre square."""
    image_size: int = 256
    resize_only_if_bigger: bool = False
    """Leave an image that is not larger than image_size as it is (no resize, no padding)."""
    encode_format: str = "jpg"
    """Format of re-encoded images: "jpg", "png" or "webp"."""
    encode_quality: int = 95
    """JPEG and WebP quality (0-100); for PNG, img2dataset's convention: the zlib compression
    level (0-9)."""
    skip_reencode: bool = False
    """Keep the original bytes when the pixels are stored unchanged (no resize, crop or pad)
    and the original already is an encode_format image that needs no conversion."""
    min_image_size: int = 0
    """Refuse images whose shorter side is smaller (status too_small)."""
    max_image_area: int | None = None
    """Refuse images of more pixels (status image_too_large); None: only the built-in
    decompression-bomb limit."""
    max_aspect_ratio: float | None = None
    """Refuse images whose longer side / shorter side is larger (status bad_aspect)."""

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(
                f"resize_mode must be one of {', '.join(RESIZE_MODES)}, got {self.resize_mode!r}"
            )
        if self.encode_format not in ENCODE_FORMATS:
            raise ValueError(
                f"encode_format must be one of {', '.join(ENCODE_FORMATS)}, "
                f"got {self.encode_format!r}"
            )
        for name in ("resize_only_if_bigger", "skip_reencode"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        largest = MAX_IMAGE_SIZE[self.encode_format]
        _check_int("image_size", self.image_size, 1, largest)
        if self.encode_format == "png":
            _check_int(
                "encode_quality",
                self.encode_quality,
                0,
                9,
                " (for png it is the zlib compression level, as in img2dataset)",
            )
        else:
            _check_int("encode_quality", self.encode_quality, 0, 100)
        _check_int("min_image_size", self.min_image_size, 0, None)
        if self.max_image_area is not None:
            _check_int("max_image_area", self.max_image_area, 1, None)
        if self.max_aspect_ratio is not None:
            ratio = self.max_aspect_ratio
            if (
                isinstance(ratio, bool)
                or not isinstance(ratio, int | float)
                or not math.isfinite(ratio)
                or ratio < 1
            ):
                raise ValueError(
                    f"max_aspect_ratio must be a number >= 1 (longer side / shorter side) "
                    f"or None, got {ratio!r}"
                )
            object.__setattr__(self, "max_aspect_ratio", float(ratio))

    @property
    def resizes(self) -> bool:
        """Images are resized and re-encoded (resize_mode is not "no")."""
        return self.resize_mode != "no"

    @property
    def filters(self) -> bool:
        """Some filter is set (min_image_size, max_image_area, max_aspect_ratio)."""
        return (
            self.min_image_size > 0
            or self.max_image_area is not None
            or self.max_aspect_ratio is not None
        )

    @property
    def active(self) -> bool:
        """The stage does more than measure: it resizes or filters. When False, every image
        is stored byte for byte and only its size is read (from the header)."""
        return self.resizes or self.filters

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TransformOptions:
        return cls(**known_fields(cls, values, "transform option"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_int(name: str, value: Any, low: int, high: int | None, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bounds}{note}, got {value}")
