"""Output sizes equal img2dataset 1.47's for every resize mode, size and aspect ratio.

``img2dataset_size`` restates img2dataset 1.47's ``resizer.py`` with albumentations 1.4's
transforms (SmallestMaxSize / LongestMaxSize: ``max(1, round(side * scale))``; CenterCrop;
PadIfNeeded), independently of ldawt's ``geometry.plan``. The property is checked on the plan
over a wide range of sizes, and on real images through the whole stage (JPEG sources take the
reduced-scale decode when they shrink).
"""

from __future__ import annotations

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from images_support import decode, gradient, jpeg, png

from ldawt.daemon.transform.geometry import plan
from ldawt.daemon.transform.options import RESIZE_MODES, TransformOptions
from ldawt.daemon.transform.stage import transform


def img2dataset_size(
    width: int, height: int, mode: str, size: int, only_if_bigger: bool
) -> tuple[int, int]:
    if mode == "no":
        return width, height
    if mode in ("keep_ratio", "center_crop"):
        if only_if_bigger and not min(width, height) > size:
            return width, height
        scale = size / min(height, width)
    else:  # border, keep_ratio_largest
        if only_if_bigger and not max(width, height) > size:
            return width, height
        scale = size / max(height, width)
    new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
    if mode == "center_crop":
        return size, size
    if mode == "border":  # PadIfNeeded pads a side shorter than the size
        return max(size, new_width), max(size, new_height)
    return new_width, new_height


modes = st.sampled_from(RESIZE_MODES)


@settings(max_examples=3000, deadline=None)
@given(
    width=st.integers(1, 100_000),
    height=st.integers(1, 100_000),
    size=st.integers(1, 4096),
    mode=modes,
    only_if_bigger=st.booleans(),
)
def test_plan_matches_img2dataset(width, height, size, mode, only_if_bigger):
    options = TransformOptions(
        resize_mode=mode, image_size=size, resize_only_if_bigger=only_if_bigger
    )
    geometry = plan(width, height, options)
    assert geometry.output == img2dataset_size(width, height, mode, size, only_if_bigger)
    if geometry.pad is not None:  # albumentations' PadIfNeeded offsets
        left, top = geometry.pad
        new_width, new_height = geometry.resized or (width, height)
        assert left == (int((size - new_width) / 2.0) if new_width < size else 0)
        assert top == (int((size - new_height) / 2.0) if new_height < size else 0)
    if geometry.crop is not None:  # CenterCrop's box
        new_width, new_height = geometry.resized or (width, height)
        left, top = (new_width - size) // 2, (new_height - size) // 2
        assert geometry.crop == (left, top, left + size, top + size)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    width=st.integers(1, 700),
    height=st.integers(1, 700),
    size=st.integers(1, 400),
    mode=st.sampled_from([m for m in RESIZE_MODES if m != "no"]),
    only_if_bigger=st.booleans(),
    source=st.sampled_from(["jpg", "png"]),
)
def test_stage_output_sizes_match_img2dataset(width, height, size, mode, only_if_bigger, source):
    expected = img2dataset_size(width, height, mode, size, only_if_bigger)
    scale = size / min(width, height)
    assume(width * height * scale * scale <= 4_000_000)  # keep upscaled strips small
    image = gradient(width, height)
    body = jpeg(image) if source == "jpg" else png(image)
    options = TransformOptions(
        resize_mode=mode, image_size=size, resize_only_if_bigger=only_if_bigger
    )
    result = transform(body, options)
    assert result.status == "ok", result.detail
    assert (result.width, result.height) == expected
    assert (result.orig_width, result.orig_height) == (width, height)
    assert decode(result.data).size == expected
