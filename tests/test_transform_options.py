"""TransformOptions: defaults, validation with clear messages, and the JSON round trip."""

from __future__ import annotations

import json

import pytest

from ldawt.daemon.transform.options import TransformOptions


def test_defaults_store_originals():
    options = TransformOptions()
    assert options.resize_mode == "no"
    assert options.image_size == 256
    assert options.encode_format == "jpg"
    assert options.encode_quality == 95
    assert not options.resizes and not options.filters and not options.active


@pytest.mark.parametrize(
    "changes",
    [
        {"resize_mode": "border"},
        {"min_image_size": 1},
        {"max_image_area": 10_000},
        {"max_aspect_ratio": 3},
    ],
)
def test_active_when_resizing_or_filtering(changes):
    assert TransformOptions(**changes).active


def test_round_trip_through_json():
    options = TransformOptions(
        resize_mode="center_crop",
        image_size=384,
        resize_only_if_bigger=True,
        encode_format="webp",
        encode_quality=80,
        skip_reencode=True,
        min_image_size=64,
        max_image_area=40_000_000,
        max_aspect_ratio=3,
    )
    values = json.loads(json.dumps(options.to_dict()))
    assert TransformOptions.from_dict(values) == options
    assert options.max_aspect_ratio == 3.0 and isinstance(options.max_aspect_ratio, float)
    assert TransformOptions.from_dict({}) == TransformOptions()


def test_unknown_keys_are_refused():
    with pytest.raises(ValueError, match=r"unknown transform option\(s\) \['resize'\]"):
        TransformOptions.from_dict({"resize": "border"})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"resize_mode": "fixed"}, "resize_mode must be one of no, border, keep_ratio"),
        ({"encode_format": "jpeg"}, "encode_format must be one of jpg, png, webp"),
        ({"image_size": 0}, "image_size must be between 1 and 65500"),
        ({"image_size": 20_000, "encode_format": "webp"}, "between 1 and 16383"),
        ({"image_size": 256.0}, "image_size must be an integer"),
        ({"image_size": True}, "image_size must be an integer"),
        ({"encode_quality": 101}, "encode_quality must be between 0 and 100"),
        # img2dataset's rule: for png the quality is the compression level
        ({"encode_format": "png"}, "between 0 and 9 (for png it is the zlib compression level"),
        ({"encode_format": "png", "encode_quality": -1}, "between 0 and 9"),
        ({"min_image_size": -1}, "min_image_size must be >= 0"),
        ({"max_image_area": 0}, "max_image_area must be >= 1"),
        ({"max_aspect_ratio": 0.5}, "max_aspect_ratio must be a number >= 1"),
        ({"max_aspect_ratio": float("inf")}, "max_aspect_ratio must be a number >= 1"),
        ({"max_aspect_ratio": "2"}, "max_aspect_ratio must be a number >= 1"),
        ({"skip_reencode": 1}, "skip_reencode must be true or false"),
        ({"resize_only_if_bigger": "yes"}, "resize_only_if_bigger must be true or false"),
    ],
)
def test_invalid_values_are_refused(changes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        TransformOptions(**changes)


def test_png_takes_a_compression_level():
    assert TransformOptions(encode_format="png", encode_quality=9).encode_quality == 9
    assert TransformOptions(encode_format="png", encode_quality=0).encode_quality == 0
