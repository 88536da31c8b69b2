"""The image options through the whole command line (`submit`, `retry-failed`, `report`, in
process, local engine): real images made here, served by a loopback origin; manifests against
tars row by row, duplicates, expected hashes, resuming, bad values, and the report's refused rows
and stored sizes (also of manifests written before the size columns existed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from images_support import (
    gradient,
    image_origin,
    jpeg,
    jpeg_bomb,
    md5,
    pattern,
    png,
    reference,
    sha256,
    tar_members,
    truncated_jpeg,
)
from manager_support import run_manager, url_table

from ldawt.daemon.contract import EXPECTED_HASH
from ldawt.manager.cli import main
from ldawt.manager.report import Distribution

RUN = ["--engine", "local", "--workers", "1", "--allow-private", "--retries", "0"]
BORDER = ["--resize-mode", "border", "--image-size", "64"]
SIZES = ("width", "height", "orig_width", "orig_height", "stored_bytes")
SHARED = ("sha256", "member", "content_type", *SIZES)

BODIES = {
    "wide.jpg": jpeg(gradient(200, 100)),
    "tall.png": png(pattern(90, 150)),
    "square.jpg": jpeg(pattern(300, 300)),
    "tiny.png": png(gradient(30, 20)),
    "strip.jpg": jpeg(gradient(600, 60)),
    "cut.jpg": truncated_jpeg(),
    "bomb.jpg": jpeg_bomb(),
}
UPRIGHT = {
    "wide.jpg": (200, 100),
    "tall.png": (90, 150),
    "square.jpg": (300, 300),
    "tiny.png": (30, 20),
    "strip.jpg": (600, 60),
    "cut.jpg": (600, 400),
    "bomb.jpg": (30_000, 30_000),
}


def _submit(capsys, source: Path, out: Path, *extra: str) -> tuple[int, str]:
    status = main(["submit", str(source), "--out", str(out), *RUN, *extra])
    return status, capsys.readouterr().err


def _command(capsys, *args: str | Path) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _report(capsys, out: Path) -> dict[str, Any]:
    status, text, err = _command(capsys, "report", out, "--json")
    assert status == 0, err
    return json.loads(text)


def _manifest(out: Path) -> list[dict[str, Any]]:
    rows = [r for p in out.glob("*.manifest.parquet") for r in pq.read_table(p).to_pylist()]
    return sorted(rows, key=lambda r: r["row"])


def _latest(out: Path) -> dict[int, dict[str, Any]]:
    """Each row's outcome in the latest round that ran it."""
    latest: dict[int, tuple[int, dict[str, Any]]] = {}
    for path in out.glob("*.manifest.parquet"):
        round_ = int(path.name[1 : path.name.index("-")]) if path.name.startswith("r") else 0
        for row in pq.read_table(path).to_pylist():
            if row["row"] not in latest or latest[row["row"]][0] < round_:
                latest[row["row"]] = (round_, row)
    return {n: row for n, (_, row) in latest.items()}


def _name(row: dict[str, Any]) -> str:
    return row["url"].rsplit("/", 1)[1].split("?", 1)[0]


def assert_shards_agree(out: Path, layout: str) -> None:
    """In every shard, the manifest's ok rows are exactly the tar's images (no other members
    but the webdataset .json and .cls), each with its stored size and decoding to the
    manifest's size; duplicates point at a member of their own shard."""
    for manifest_path in sorted(out.glob("*.manifest.parquet")):
        stem = manifest_path.name.removesuffix(".manifest.parquet")
        members = tar_members(out / f"{stem}.tar")
        rows = pq.read_table(manifest_path).to_pylist()
        ok = [r for r in rows if r["status"] == "ok"]
        images = {n for n in members if not n.endswith((".json", ".cls"))}
        assert images == {r["member"] for r in ok} and len(images) == len(ok), stem
        for row in ok:
            data = members[row["member"]]
            assert row["stored_bytes"] == len(data)
            assert reference(data).size == (row["width"], row["height"])
            if layout == "webdataset":
                key = row["member"].rsplit(".", 1)[0]
                meta = json.loads(members[f"{key}.json"])
                assert {k: meta[k] for k in SIZES[:4]} == {k: row[k] for k in SIZES[:4]}
        if layout == "webdataset":
            keys = {r["member"].rsplit(".", 1)[0] for r in ok}
            assert set(members) == images | {f"{k}.{e}" for k in keys for e in ("json", "cls")}
        for row in rows:
            if row["status"] == "duplicate":
                assert row["member"] in images
            elif row["status"] != "ok":
                assert row["member"] is None and row["stored_bytes"] is None


# --- resized, filtered, duplicated -----------------------------------------------------------


def test_resized_filtered_and_duplicated_rows_through_submit(tmp_path: Path, capsys):
    names = [*BODIES, "wide.jpg", "tiny.png", "wide.jpg"]  # three duplicates
    with image_origin(BODIES) as origin:
        source = url_table(tmp_path / "in.parquet", [origin.url(n) for n in names])
        out = tmp_path / "out"
        status, err = _submit(
            capsys,
            source,
            out,
            *BORDER,
            "--min-image-size",
            "50",
            "--max-aspect-ratio",
            "5",
            "--layout",
            "webdataset",
            "--shard-size",
            "4",
        )
        hits = dict(origin.hits)
    assert status == 0, err
    hits.pop("robots.txt", None)  # asked for once per worker process (--robots obey)
    assert all(n == 1 for n in hits.values()) and len(hits) == len(BODIES)  # fetched once

    rows = _manifest(out)
    statuses = {_name(r): r["status"] for r in rows[: len(BODIES)]}
    assert statuses == {
        "wide.jpg": "ok",
        "tall.png": "ok",
        "square.jpg": "ok",
        "tiny.png": "too_small",
        "strip.jpg": "bad_aspect",
        "cut.jpg": "decode_error",
        "bomb.jpg": "image_too_large",
    }
    assert_shards_agree(out, "webdataset")
    for row in rows[: len(BODIES)]:
        name = _name(row)
        assert (row["orig_width"], row["orig_height"]) == UPRIGHT[name]
        assert row["bytes"] == len(BODIES[name])
        if row["status"] == "ok":
            assert (row["width"], row["height"]) == (64, 64)
            assert row["sha256"] == sha256(BODIES[name])  # of the downloaded bytes
            assert row["member"].endswith(".jpg")
    # duplicates share their original's outcome and sizes
    by_row = {r["row"]: r for r in rows}
    for row in rows[len(BODIES) :]:
        original = by_row[row["duplicate_of"]]
        assert _name(original) == _name(row)
        assert {k: row[k] for k in SHARED} == {k: original[k] for k in SHARED}
        if original["status"] == "ok":
            assert row["status"] == "duplicate" and row["width"] == 64
        else:
            assert row["status"] == "too_small" and "same URL as row" in row["error"]

    figures = _report(capsys, out)
    assert figures["by_status"] == {
        "ok": 3,
        "duplicate": 2,
        "too_small": 2,
        "bad_aspect": 1,
        "decode_error": 1,
        "image_too_large": 1,
    }
    assert figures["filtered"] == {
        "rows": 5,
        "by_status": {"too_small": 2, "image_too_large": 1, "bad_aspect": 1, "decode_error": 1},
    }
    stored = figures["stored_images"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert (stored["images"], stored["unmeasured"], stored["not_recorded"]) == (3, 0, 0)
    assert stored["width"] == stored["height"] == {"min": 64, "median": 64, "p95": 64, "max": 64}
    sizes = sorted(r["stored_bytes"] for r in ok)
    assert stored["stored_bytes"] == {
        "min": sizes[0],
        "median": sizes[1],
        "p95": sizes[2],
        "max": sizes[2],
    }
    assert stored["stored_bytes_total"] == sum(sizes)
    assert stored["downloaded_bytes_total"] == sum(r["bytes"] for r in ok)
    assert stored["longer_side"] == [{"min": 1, "max": 64, "images": 3}]

    status, text, err = _command(capsys, "report", out)
    assert status == 0, err
    assert "by status:" in text  # the list by status stays
    refused = text.split("refused by the image checks: 5 rows\n", 1)[1].splitlines()
    assert refused[0].split()[:2] == ["too_small", "2"]
    assert {line.split()[0] for line in refused[:4]} == {
        "too_small",
        "image_too_large",
        "bad_aspect",
        "decode_error",
    }
    assert "shorter side below --min-image-size" in refused[0]
    assert f"stored images: 3, {sum(sizes) / 1e6:,.1f} MB stored of " in text
    width_line = next(line for line in text.splitlines() if line.strip().startswith("width px"))
    assert width_line.split()[2:] == ["64", "64", "64", "64"]
    bytes_line = next(line for line in text.splitlines() if line.strip().startswith("bytes "))
    assert bytes_line.split()[1:] == [f"{v:,}" for v in (sizes[0], sizes[1], sizes[2], sizes[2])]
    assert "1-64 px" in text and "100.0%" in text


def test_default_submit_stores_originals_and_their_sizes(tmp_path: Path, capsys):
    names = ["wide.jpg", "tall.png", "cut.jpg", "bomb.jpg", "wide.jpg"]
    with image_origin(BODIES) as origin:
        source = url_table(tmp_path / "in.parquet", [origin.url(n) for n in names])
        out = tmp_path / "out"
        status, err = _submit(capsys, source, out)
    assert status == 0, err
    rows = _manifest(out)
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["duplicate"]
    members = tar_members(out / "00000.tar")
    assert len(members) == 4
    for row in rows[:4]:
        served = BODIES[_name(row)]
        assert members[row["member"]] == served  # byte for byte, even broken ones and bombs
        assert sha256(members[row["member"]]) == row["sha256"] == sha256(served)
        assert row["stored_bytes"] == row["bytes"] == len(served)
        assert (row["width"], row["height"]) == UPRIGHT[_name(row)]
        assert (row["orig_width"], row["orig_height"]) == UPRIGHT[_name(row)]
    assert {k: rows[4][k] for k in SHARED} == {k: rows[0][k] for k in SHARED}

    figures = _report(capsys, out)
    assert figures["filtered"] == {"rows": 0, "by_status": {}}
    stored = figures["stored_images"]
    assert stored["images"] == 4
    assert stored["width"] == {"min": 90, "median": 200, "p95": 30_000, "max": 30_000}
    assert [(b["max"], b["images"]) for b in stored["longer_side"]] == [
        (256, 2),
        (1024, 1),
        (None, 1),
    ]
    status, text, _ = _command(capsys, "report", out)
    assert "refused by the image checks" not in text
    assert "over 4,096 px" in text and "257-512 px" not in text


# --- expected hashes -------------------------------------------------------------------------


def test_verify_hash_col_and_retry_failed_verifies_again(tmp_path: Path, capsys):
    wide, tall, square = BODIES["wide.jpg"], BODIES["tall.png"], BODIES["square.jpg"]
    served = {"a.jpg": wide, "b.png": tall, "c.jpg": wide, "d.jpg": wide, "e.jpg": square}
    expected = [
        sha256(wide),  # a: SHA-256, ok
        md5(tall).upper(),  # b: MD5, ok
        sha256(square),  # c: serves the wrong image until fixed
        md5(square),  # d: MD5 of another image, for good
        "12345",  # e: not a hash at all
    ]
    names = list(served)
    with image_origin(served) as origin:
        source = url_table(
            tmp_path / "in.parquet", [origin.url(n) for n in names], checksum=expected
        )
        out = tmp_path / "out"
        status, err = _submit(
            capsys, source, out, *BORDER, "--verify-hash-col", "checksum", "--shard-size", "2"
        )
        assert status == 0, err
        rows = _manifest(out)
        assert [r["status"] for r in rows] == ["ok", "ok"] + ["hash_mismatch"] * 3
        assert_shards_agree(out, "class")
        assert rows[0]["sha256"] == sha256(wide) and rows[1]["sha256"] == sha256(tall)
        assert f"sha256 is {sha256(wide)}, the input says {sha256(square)}" in rows[2]["error"]
        assert f"md5 is {md5(wide)}, the input says {md5(square)}" in rows[3]["error"]
        assert rows[4]["error"] == (
            "expected hash '12345' is neither a hex SHA-256 (64 digits) nor MD5 (32)"
        )
        assert [r[EXPECTED_HASH] for r in rows] == expected  # carried for retry-failed
        assert _report(capsys, out)["filtered"] == {"rows": 3, "by_status": {"hash_mismatch": 3}}

        origin.bodies["c.jpg"] = square  # now the image c expects
        origin.bodies["d.jpg"] = tall  # still not the image d expects
        status, _, err = _command(
            capsys, "retry-failed", out, "--status", "hash_mismatch", *RUN[:4]
        )
        assert status == 0, err
        assert "retrying 3 row(s)" in err
        assert origin.hits["c.jpg"] == origin.hits["d.jpg"] == origin.hits["e.jpg"] == 2
        assert origin.hits["a.jpg"] == origin.hits["b.png"] == 1

    latest = _latest(out)
    assert [latest[n]["status"] for n in range(5)] == ["ok", "ok", "ok"] + ["hash_mismatch"] * 2
    assert latest[2]["sha256"] == sha256(square) and latest[2]["width"] == 64
    assert f"md5 is {md5(tall)}, the input says {md5(square)}" in latest[3]["error"]
    assert "neither a hex SHA-256" in latest[4]["error"]
    assert [latest[n][EXPECTED_HASH] for n in range(5)] == expected
    assert_shards_agree(out, "class")
    figures = _report(capsys, out)
    assert figures["by_status"] == {"ok": 3, "hash_mismatch": 2}
    assert figures["stored_images"]["images"] == 3


def test_verify_hash_col_without_a_transform_stores_originals(tmp_path: Path, capsys):
    wide = BODIES["wide.jpg"]
    with image_origin({"a.jpg": wide, "b.jpg": wide}) as origin:
        source = url_table(
            tmp_path / "in.parquet",
            [origin.url("a.jpg"), origin.url("b.jpg")],
            checksum=[md5(wide), md5(b"something else")],
        )
        out = tmp_path / "out"
        status, err = _submit(capsys, source, out, "--verify-hash-col", "checksum")
    assert status == 0, err
    ok, mismatch = _manifest(out)
    assert (ok["status"], mismatch["status"]) == ("ok", "hash_mismatch")
    assert tar_members(out / "00000.tar") == {ok["member"]: wide}


# --- resuming --------------------------------------------------------------------------------


def test_a_job_resumes_only_with_the_same_image_options(tmp_path: Path, capsys):
    with image_origin(BODIES) as origin:
        urls = [origin.url(n) for n in ("wide.jpg", "tall.png", "square.jpg")]
        source = url_table(tmp_path / "in.parquet", urls, checksum=["0" * 32] * 3)
        out = tmp_path / "out"
        assert _submit(capsys, source, out, *BORDER)[0] == 0

        status, err = _submit(capsys, source, out, "--resize-mode", "border", "--image-size", "96")
        assert status == 2 and "--force-new" in err
        assert "option transform" in err and "'image_size': 64" in err and "96" in err
        # without the image options: other options too, not a silent run without a transform
        status, err = _submit(capsys, source, out)
        assert status == 2 and "option transform" in err, err
        status, err = _submit(capsys, source, out, *BORDER, "--verify-hash-col", "checksum")
        assert status == 2 and "column verify_hash: None -> 'checksum'" in err, err
        # the same options, spelled with their defaults, resume
        status, err = _submit(capsys, source, out, *BORDER, "--encode-quality", "95")
        assert status == 0 and "1 shard(s), 1 already done" in err, err

        status, err = _submit(capsys, source, out, "--force-new")
        assert status == 0, err
        assert {(r["width"], r["height"]) for r in _manifest(out)} == {
            (200, 100),
            (90, 150),
            (300, 300),
        }

        hashed = tmp_path / "hashed"
        assert _submit(capsys, source, hashed, "--verify-hash-col", "checksum")[0] == 0
        status, err = _submit(capsys, source, hashed)
        assert status == 2 and "column verify_hash: 'checksum' -> None" in err, err


def test_a_job_planned_without_image_options_resumes(tmp_path: Path, capsys):
    with image_origin(BODIES) as origin:
        urls = [origin.url(n) for n in ("wide.jpg", "tall.png", "square.jpg")]
        source = url_table(tmp_path / "in.parquet", urls)
        out = tmp_path / "out"
        assert _submit(capsys, source, out, "--shard-size", "2")[0] == 0
        hits = sum(origin.hits.values())
        identity = json.loads((out / "job" / "job.json").read_text())
        # as a job planned before the image options existed recorded it
        assert "transform" not in identity["options"]
        assert "verify_hash" not in identity["columns"]
        for extra in ([], ["--resize-mode", "no", "--image-size", "256", "--min-image-size", "0"]):
            status, err = _submit(capsys, source, out, "--shard-size", "2", *extra)
            assert status == 0 and "2 shard(s), 2 already done" in err, err
        assert sum(origin.hits.values()) == hits
        status, err = _submit(capsys, source, out, "--shard-size", "2", "--min-image-size", "9")
        assert status == 2 and "option transform: None -> {" in err, err


# --- bad values ------------------------------------------------------------------------------

BAD_VALUES = {
    "png-quality": (
        ["--encode-format", "png", "--encode-quality", "95"],
        "encode_quality must be between 0 and 9",
    ),
    "negative-aspect": (["--max-aspect-ratio", "-1"], "max_aspect_ratio must be a number >= 1"),
    "nan-aspect": (["--max-aspect-ratio", "nan"], "max_aspect_ratio must be a number >= 1"),
    "huge-webp": (
        ["--encode-format", "webp", "--image-size", "20000"],
        "image_size must be between 1 and 16383",
    ),
    "no-such-column": (
        ["--verify-hash-col", "nosuchcol"],
        "--verify-hash-col column 'nosuchcol' not found; the columns present are: photo_url",
    ),
    "passthrough-clash": (
        ["--verify-hash-col", "expected_hash", "--passthrough", "expected_hash"],
        "--passthrough expected_hash clashes with the shard input column of --verify-hash-col",
    ),
    # it would be checked as expected hashes without --verify-hash-col
    "passthrough-expected-hash": (
        ["--passthrough", "expected_hash"],
        "pass --verify-hash-col expected_hash instead",
    ),
}


def assert_one_error(status: int, out: str, err: str, words: str) -> None:
    assert status == 2, err
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("ldawt: error: ")]
    assert len(errors) == 1 and words in errors[0], err
    assert all(line.startswith("ldawt: ") for line in err.splitlines()), err


def _bad_input(tmp_path: Path) -> Path:
    return url_table(
        tmp_path / "in.parquet", ["http://127.0.0.1:9/a.jpg"], expected_hash=["0" * 64]
    )


@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_image_options_are_one_error_line(case: str, tmp_path: Path, capsys):
    flags, words = BAD_VALUES[case]
    status, out, err = _command(
        capsys, "submit", _bad_input(tmp_path), "--out", tmp_path / "o", *RUN, *flags
    )
    assert_one_error(status, out, err, words)
    assert not (tmp_path / "o" / "job").exists()  # nothing ran


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--image-size", "0"], "argument --image-size: must be at least 1, got 0"),
        (["--max-image-area", "0"], "argument --max-image-area: must be at least 1, got 0"),
        (["--encode-quality", "high"], "argument --encode-quality: invalid int value: 'high'"),
        (["--resize-mode", "stretch"], "argument --resize-mode: invalid choice: 'stretch'"),
        (BAD_VALUES["png-quality"][0], BAD_VALUES["png-quality"][1]),
    ],
)
def test_bad_image_options_through_the_real_entry_point(tmp_path: Path, flags, words):
    """Values the parser refuses are its usage and one error line; values the options refuse
    are ldawt's one error line. Both exit 2, without a traceback."""
    done = run_manager("submit", _bad_input(tmp_path), "--out", tmp_path / "o", *RUN, *flags)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and words in errors[0], done.stderr


# --- the report of manifests without the size columns ----------------------------------------


def _drop_size_columns(path: Path) -> None:
    table = pq.read_table(path)
    pq.write_table(table.drop_columns([c for c in SIZES if c in table.column_names]), path)


def test_report_of_manifests_written_before_the_size_columns(tmp_path: Path, capsys):
    with image_origin(BODIES) as origin:
        names = ["wide.jpg", "tall.png", "square.jpg", "tiny.png"]
        source = url_table(tmp_path / "in.parquet", [origin.url(n) for n in names])
        out = tmp_path / "out"
        assert _submit(capsys, source, out, "--shard-size", "2", "--min-image-size", "50")[0] == 0
    first, second = sorted(out.glob("*.manifest.parquet"))

    _drop_size_columns(first)  # a job resumed by this version: some manifests have them
    stored = _report(capsys, out)["stored_images"]
    assert (stored["images"], stored["not_recorded"]) == (1, 2)
    assert stored["width"]["max"] == 300
    status, text, err = _command(capsys, "report", out)
    assert status == 0 and "Traceback" not in err
    assert "stored images: 1, " in text and "2 more in manifests written before" in text

    _drop_size_columns(second)  # a job written before them: no section
    figures = _report(capsys, out)
    assert figures["stored_images"] is None
    assert figures["by_status"] == {"ok": 3, "too_small": 1}
    assert figures["filtered"] == {"rows": 1, "by_status": {"too_small": 1}}
    status, text, err = _command(capsys, "report", out)
    assert status == 0, err
    assert "Traceback" not in err and "stored images" not in text
    assert "refused by the image checks: 1 rows" in text and "classes: " in text


def test_distribution_percentiles_and_rounding():
    values = Distribution()
    values.add(pa.array([5, 1, None, 3, 2, 4], pa.int64()))
    values.add(pa.chunked_array([pa.array([], pa.int64())]))
    assert values.summary() == {"min": 1, "median": 3, "p95": 5, "max": 5}
    big = Distribution()
    big.add(pa.array([123_456, 123_449, 7, 1_000_001], pa.int64()))
    # counted to four significant digits; the extremes exact, percentiles within them
    assert big.summary() == {"min": 7, "median": 123_400, "p95": 1_000_000, "max": 1_000_001}
    assert sorted(big.counts) == [7, 123_400, 123_500, 1_000_000]
    assert Distribution().summary() == {"min": None, "median": None, "p95": None, "max": None}
