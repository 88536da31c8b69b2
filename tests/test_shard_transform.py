"""The image transform stage through a real shard: real images made here, served by a loopback
origin, downloaded by ``run_shard``; every manifest row against the tar's members and the
served bytes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from images_support import (
    QUADRANTS,
    close,
    decode,
    encode,
    exif_bytes,
    format_of,
    gradient,
    image_origin,
    jpeg,
    jpeg_bomb,
    md5,
    noise_after_jpeg_header,
    oriented,
    pattern,
    png,
    png_bomb,
    quadrant_colours,
    reference,
    sha256,
    tar_members,
    truncated_jpeg,
)
from shard_input import write_shard_input

from ldawt.daemon.contract import EXPECTED_HASH
from ldawt.daemon.shard import run_shard

FETCH = {"allow_private": True, "retries": 0, "total_timeout": 10.0}
SIZE_COLUMNS = ("width", "height", "orig_width", "orig_height")


def _corpus() -> dict[str, tuple[bytes, tuple[int, int]]]:
    """name -> (bytes served, upright size)."""
    return {
        "wide.jpg": (jpeg(gradient(200, 100)), (200, 100)),
        "tall.png": (png(pattern(90, 150)), (90, 150)),
        # stored 120 x 160, shown 160 x 120 (EXIF orientation 6)
        "turned.jpg": (
            jpeg(oriented(pattern(160, 120), 6), exif=exif_bytes(6)),
            (160, 120),
        ),
        "small.webp": (encode(gradient(40, 30), "WEBP", quality=90), (40, 30)),
    }


CORPUS = _corpus()


@pytest.fixture(scope="module")
def origin() -> Iterator[Any]:
    with image_origin({name: body for name, (body, _) in CORPUS.items()}) as served:
        yield served


def run(
    tmp_path: Path,
    urls: list[str],
    transform: dict[str, Any] | None = None,
    layout: str = "class",
    expected: list[str | None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, bytes]]:
    """One shard of ``urls`` (keys k0, k1, ...): its result, manifest rows and tar members."""
    n = len(urls)
    input_path = tmp_path / "in.parquet"
    write_shard_input(input_path, urls, ["bird"] * n, [f"k{i}" for i in range(n)])
    if expected is not None:
        table = pq.read_table(input_path)
        pq.write_table(
            table.append_column(EXPECTED_HASH, pa.array(expected, pa.string())), input_path
        )
    spec = {
        "shard_id": "s0",
        "input_path": str(input_path),
        "output_dir": str(tmp_path / "out"),
        "layout": layout,
        "fetch": FETCH,
        "transform": transform or {},
    }
    result = run_shard(spec)
    assert result["ok"], result
    manifest = pq.read_table(result["manifest_path"]).to_pylist()
    return result, manifest, tar_members(Path(result["tar_path"]))


def assert_tar_agrees(
    manifest: list[dict[str, Any]],
    members: dict[str, bytes],
    layout: str,
    undecodable: tuple[str, ...] = (),
) -> None:
    """Every ok row's member is in the tar with its stored size and decodes (upright) to the
    manifest's size, but the ``undecodable`` ones stored as they are; no other images are in
    the tar; rows that are not ok have no member and no stored size."""
    ok = [row for row in manifest if row["status"] == "ok"]
    images = {name for name in members if not name.endswith((".json", ".cls"))}
    assert images == {row["member"] for row in ok}
    assert len(ok) == len(images)  # one member per row
    for row in ok:
        data = members[row["member"]]
        assert row["stored_bytes"] == len(data)
        if not row["url"].endswith(undecodable):
            assert reference(data).size == (row["width"], row["height"])
        if layout == "webdataset":
            stem = row["member"].rsplit(".", 1)[0]
            meta = json.loads(members[f"{stem}.json"])
            assert {k: meta[k] for k in SIZE_COLUMNS} == {k: row[k] for k in SIZE_COLUMNS}
            assert (meta["key"], meta["url"], meta["label"]) == (row["key"], row["url"], 0)
            assert members[f"{stem}.cls"] == b"0"
    if layout == "webdataset":
        stems = {row["member"].rsplit(".", 1)[0] for row in ok}
        assert set(members) == images | {f"{s}.json" for s in stems} | {f"{s}.cls" for s in stems}
    for row in manifest:
        if row["status"] != "ok":
            assert row["member"] is None and row["stored_bytes"] is None, row


# --- the default: originals byte for byte ----------------------------------------------------


@pytest.mark.parametrize("layout", ["class", "webdataset"])
def test_default_stores_the_original_bytes_and_measures_them(tmp_path: Path, origin, layout):
    names = list(CORPUS)
    result, manifest, members = run(tmp_path, [origin.url(n) for n in names], layout=layout)

    assert [row["status"] for row in manifest] == ["ok"] * len(names)
    assert result["counts"] == {"ok": len(names)}
    assert_tar_agrees(manifest, members, layout)
    for name, row in zip(names, manifest, strict=True):
        served, upright = CORPUS[name]
        stored = members[row["member"]]
        assert stored == served  # byte for byte
        assert sha256(stored) == row["sha256"] == sha256(served)
        assert row["stored_bytes"] == row["bytes"] == len(served)
        assert (row["width"], row["height"]) == upright  # from the header, EXIF applied
        assert (row["orig_width"], row["orig_height"]) == upright
        assert row["member"].endswith("." + name.rsplit(".", 1)[1])


def test_default_stores_an_undecodable_image_as_it_is(tmp_path: Path):
    """Without a transform nothing is decoded: a truncated JPEG is stored (its header gives its
    size); a body without a readable header is stored unmeasured."""
    bodies = {"cut.jpg": truncated_jpeg(), "noise.jpg": b"\xff\xd8\xff\xe0" + bytes(2000)}
    with image_origin(bodies) as served:
        _, manifest, members = run(tmp_path, [served.url(n) for n in bodies])
    cut, noise = manifest
    assert cut["status"] == noise["status"] == "ok"
    assert members[cut["member"]] == bodies["cut.jpg"]
    assert (cut["width"], cut["height"], cut["stored_bytes"]) == (600, 400, len(bodies["cut.jpg"]))
    assert members[noise["member"]] == bodies["noise.jpg"]
    assert all(noise[k] is None for k in SIZE_COLUMNS)
    assert noise["stored_bytes"] == len(bodies["noise.jpg"])


# --- resized ---------------------------------------------------------------------------------

# img2dataset's sizes at --image-size 64 for (upright) 200x100, 90x150, 160x120, 40x30
EXPECTED_SIZES = {
    "border": {n: (64, 64) for n in CORPUS},
    "keep_ratio": {
        "wide.jpg": (128, 64),
        "tall.png": (64, 107),
        "turned.jpg": (85, 64),
        "small.webp": (85, 64),  # upscaled
    },
    "center_crop": {n: (64, 64) for n in CORPUS},
}


@pytest.mark.parametrize(
    ("mode", "layout"),
    [
        ("border", "class"),
        ("border", "webdataset"),
        ("keep_ratio", "webdataset"),
        ("center_crop", "class"),
    ],
)
def test_resized_images_in_the_tar_and_the_manifest(tmp_path: Path, origin, mode, layout):
    names = list(CORPUS)
    transform = {"resize_mode": mode, "image_size": 64}
    result, manifest, members = run(tmp_path, [origin.url(n) for n in names], transform, layout)

    assert [row["status"] for row in manifest] == ["ok"] * len(names)
    assert_tar_agrees(manifest, members, layout)
    for name, row in zip(names, manifest, strict=True):
        served, upright = CORPUS[name]
        stored = members[row["member"]]
        assert row["member"].endswith(".jpg")
        assert format_of(stored) == "JPEG"
        assert (row["width"], row["height"]) == EXPECTED_SIZES[mode][name]
        assert (row["orig_width"], row["orig_height"]) == upright
        # sha256 and bytes are of what was downloaded, stored_bytes of what is stored
        assert row["sha256"] == sha256(served) != sha256(stored)
        assert row["bytes"] == len(served)
        assert row["stored_bytes"] == len(stored)
    if mode == "keep_ratio":  # the stored image is upright, whole: its quadrants in place
        turned = decode(members[manifest[names.index("turned.jpg")]["member"]])
        for colour, wanted in zip(quadrant_colours(turned), QUADRANTS, strict=True):
            assert close(colour, wanted, 20), (colour, wanted)
    assert result["members"] == len(members)


def test_png_output_keeps_the_extension_of_its_format(tmp_path: Path, origin):
    transform = {"resize_mode": "keep_ratio_largest", "image_size": 50, "encode_format": "png"}
    transform["encode_quality"] = 9
    _, manifest, members = run(tmp_path, [origin.url("wide.jpg")], transform)
    (row,) = manifest
    assert row["member"].endswith(".png") and format_of(members[row["member"]]) == "PNG"
    assert (row["width"], row["height"]) == (50, 25)


def test_skip_reencode_keeps_an_image_that_needs_nothing(tmp_path: Path, origin):
    transform = {
        "resize_mode": "keep_ratio",
        "image_size": 512,
        "resize_only_if_bigger": True,
        "skip_reencode": True,
    }
    _, manifest, members = run(tmp_path, [origin.url("wide.jpg")], transform)
    (row,) = manifest
    served = CORPUS["wide.jpg"][0]
    assert members[row["member"]] == served
    assert row["sha256"] == sha256(served) and row["stored_bytes"] == len(served)
    assert (row["width"], row["height"], row["orig_width"], row["orig_height"]) == (200, 100) * 2


# --- filters, broken images, bombs -----------------------------------------------------------


def test_filters_give_their_statuses_and_keep_the_rows_out_of_the_tar(tmp_path: Path):
    bodies = {
        "tiny.png": png(gradient(30, 20)),  # shorter side 20 < 50
        "big.png": png(gradient(400, 300)),  # 120,000 px > 100,000
        "strip.png": png(gradient(400, 60)),  # aspect 6.7 > 3
        "fine.jpg": jpeg(gradient(200, 100)),
        "square.png": png(pattern(300, 300)),  # 90,000 px: within the limit
    }
    transform = {
        "resize_mode": "border",
        "image_size": 64,
        "min_image_size": 50,
        "max_image_area": 100_000,
        "max_aspect_ratio": 3,
    }
    with image_origin(bodies) as served:
        result, manifest, members = run(tmp_path, [served.url(n) for n in bodies], transform)

    statuses = [row["status"] for row in manifest]
    assert statuses == ["too_small", "image_too_large", "bad_aspect", "ok", "ok"]
    assert result["counts"] == {"too_small": 1, "image_too_large": 1, "bad_aspect": 1, "ok": 2}
    assert_tar_agrees(manifest, members, "class")
    tiny, big, strip = manifest[:3]
    assert "shorter side 20 < min_image_size 50" in tiny["error"]
    assert "max_image_area 100,000" in big["error"]
    assert "max_aspect_ratio 3" in strip["error"]
    for row, size in zip(manifest[:3], [(30, 20), (400, 300), (400, 60)], strict=True):
        # the downloaded image's size is known (its header), nothing was stored
        assert (row["orig_width"], row["orig_height"]) == size
        assert row["width"] is None and row["height"] is None and row["sha256"] is None
        assert row["bytes"] == len(bodies[row["url"].rsplit("/", 1)[1]])


def test_filters_alone_store_originals(tmp_path: Path):
    """Filters without a resize refuse from the header and store the others byte for byte."""
    bodies = {"tiny.png": png(gradient(30, 20)), "fine.jpg": jpeg(gradient(200, 100))}
    with image_origin(bodies) as served:
        _, manifest, members = run(
            tmp_path, [served.url(n) for n in bodies], {"min_image_size": 50}
        )
    tiny, fine = manifest
    assert (tiny["status"], fine["status"]) == ("too_small", "ok")
    assert members == {fine["member"]: bodies["fine.jpg"]}
    assert fine["sha256"] == sha256(bodies["fine.jpg"])
    assert (fine["width"], fine["height"], fine["stored_bytes"]) == (
        200,
        100,
        len(bodies["fine.jpg"]),
    )


BROKEN = {
    "cut.jpg": truncated_jpeg(),
    "noise.jpg": noise_after_jpeg_header(),
    "headless.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40,
    "bomb.jpg": jpeg_bomb(),
    "bomb.png": png_bomb(),
    "fine.jpg": jpeg(gradient(200, 100)),
}


@pytest.mark.parametrize(
    "transform",
    [{"resize_mode": "border", "image_size": 64}, {"min_image_size": 1}],
    ids=["border", "filter-only"],
)
def test_broken_images_and_bombs(tmp_path: Path, transform):
    with image_origin(BROKEN) as served:
        result, manifest, members = run(tmp_path, [served.url(n) for n in BROKEN], transform)
    by_name = {row["url"].rsplit("/", 1)[1]: row for row in manifest}
    resizing = "resize_mode" in transform
    # Filters alone read headers only: a broken scan is found only by a decode.
    expected = {
        "cut.jpg": "decode_error" if resizing else "ok",
        "noise.jpg": "decode_error" if resizing else "ok",
        "headless.jpg": "decode_error",
        "bomb.jpg": "image_too_large",
        "bomb.png": "image_too_large",
        "fine.jpg": "ok",
    }
    assert {name: row["status"] for name, row in by_name.items()} == expected
    assert_tar_agrees(manifest, members, "class", () if resizing else ("cut.jpg", "noise.jpg"))
    if resizing:
        assert "truncated" in by_name["cut.jpg"]["error"]
        assert by_name["noise.jpg"]["error"]
    assert "unreadable image header" in by_name["headless.jpg"]["error"]
    for name in ("bomb.jpg", "bomb.png"):
        row = by_name[name]
        assert "decompression bomb" in row["error"]
        assert (row["orig_width"], row["orig_height"]) == (30_000, 30_000)
        assert row["bytes"] == len(BROKEN[name]) < 50_000
    assert sum(result["counts"].values()) == len(BROKEN)


# --- expected hashes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "transform", [{}, {"resize_mode": "center_crop", "image_size": 32}], ids=["default", "resized"]
)
def test_verify_hash_checks_the_downloaded_bytes(tmp_path: Path, origin, transform):
    wide, tall = CORPUS["wide.jpg"][0], CORPUS["tall.png"][0]
    cases = [  # (name, expected hash, status)
        ("wide.jpg", sha256(wide), "ok"),
        ("wide.jpg", sha256(wide).upper(), "ok"),
        ("tall.png", md5(tall), "ok"),
        ("tall.png", f"  {md5(tall).upper()} ", "ok"),
        ("wide.jpg", None, "ok"),  # nothing to check
        ("wide.jpg", sha256(tall), "hash_mismatch"),
        ("tall.png", md5(wide), "hash_mismatch"),
        ("wide.jpg", "not a hash", "hash_mismatch"),
        ("wide.jpg", "g" * 64, "hash_mismatch"),
        ("wide.jpg", sha256(wide)[:40], "hash_mismatch"),  # a SHA-1's length
    ]
    # every row its own URL: the shard fetches each once
    urls = [f"{origin.url(name)}?row={i}" for i, (name, _, _) in enumerate(cases)]
    _, manifest, members = run(tmp_path, urls, transform, expected=[c[1] for c in cases])

    assert [row["status"] for row in manifest] == [status for *_, status in cases]
    assert_tar_agrees(manifest, members, "class")
    for (name, _, status), row in zip(cases, manifest, strict=True):
        served = CORPUS[name][0]
        if status == "ok":
            assert row["sha256"] == sha256(served)
        else:
            assert row["sha256"] is None and row["member"] is None
    assert f"sha256 is {sha256(wide)}, the input says {sha256(tall)}" in manifest[5]["error"]
    assert f"md5 is {md5(tall)}, the input says {md5(wide)}" in manifest[6]["error"]
    for row in manifest[7:]:
        assert "is neither a hex SHA-256 (64 digits) nor MD5 (32)" in row["error"], row
    assert "'not a hash'" in manifest[7]["error"]


def test_the_expected_hash_rides_into_the_manifest_when_carried(tmp_path: Path, origin):
    """The manager carries the expected hashes as a passthrough column, so that retry-failed
    finds them in the manifests."""
    wide = CORPUS["wide.jpg"][0]
    input_path = tmp_path / "in.parquet"
    write_shard_input(input_path, [origin.url("wide.jpg")], ["bird"], ["k0"])
    table = pq.read_table(input_path).append_column(EXPECTED_HASH, pa.array([md5(b"other")]))
    pq.write_table(table, input_path)
    result = run_shard(
        {
            "shard_id": "s0",
            "input_path": str(input_path),
            "output_dir": str(tmp_path / "out"),
            "fetch": FETCH,
            "passthrough": [EXPECTED_HASH],
        }
    )
    (row,) = pq.read_table(result["manifest_path"]).to_pylist()
    assert row["status"] == "hash_mismatch" and row[EXPECTED_HASH] == md5(b"other")
    assert f"md5 is {md5(wide)}" in row["error"]
