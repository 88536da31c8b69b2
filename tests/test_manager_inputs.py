"""Bad input: each is refused with a message that says what is wrong, or accounted for."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from manager_support import mounted_filesystem, running_origin, url_table, write_table

from ldawt.manager.cli import main

RUN = ["--engine", "local", "--workers", "1", "--allow-private", "--retries", "0"]


def _submit(capsys, source: Path, out: Path, *extra: str) -> tuple[int, str]:
    status = main(["submit", str(source), "--out", str(out), *RUN, *extra])
    return status, capsys.readouterr().err


def test_a_file_that_is_no_table(tmp_path: Path, capsys):
    source = tmp_path / "photos.parquet"
    source.write_bytes(b"this is not parquet at all\n" * 10)
    status, err = _submit(capsys, source, tmp_path / "out")
    assert status == 2 and f"cannot read {source} as a table" in err


def test_a_file_named_as_no_table(tmp_path: Path, capsys):
    source = tmp_path / "photos.xlsx"
    source.write_text("photo_url\nhttp://h/1.jpg\n")
    status, err = _submit(capsys, source, tmp_path / "out")
    assert status == 2 and f"cannot tell the format of {source} from its name" in err


def test_an_empty_file(tmp_path: Path, capsys):
    source = tmp_path / "photos.parquet"
    source.touch()
    status, err = _submit(capsys, source, tmp_path / "out")
    assert status == 2 and f"{source} is empty (0 bytes)" in err


def test_a_table_without_rows(tmp_path: Path, capsys):
    source = tmp_path / "photos.parquet"
    pq.write_table(pa.table({"photo_url": pa.array([], pa.string())}), source)
    status, err = _submit(capsys, source, tmp_path / "out")
    assert status == 2 and "holds no rows" in err


def test_a_missing_column_lists_the_columns_present(tmp_path: Path, capsys):
    source = url_table(tmp_path / "photos.parquet", ["http://h/1.jpg"])
    status, err = _submit(capsys, source, tmp_path / "out", "--url-col", "image")
    assert status == 2
    assert "URL column 'image' not found; the columns present are: photo_url, taxon_name, " in err


def test_a_second_file_missing_a_column(tmp_path: Path, capsys):
    url_table(tmp_path / "in" / "a.parquet", ["http://h/1.jpg"])
    write_table(tmp_path / "in" / "b.parquet", {"photo_url": ["http://h/2.jpg"]})
    status, err = _submit(capsys, tmp_path / "in", tmp_path / "out")
    assert status == 2 and "b.parquet lacks column(s) taxon_name, photo_id" in err


def test_a_url_column_of_integers(tmp_path: Path, capsys):
    source = write_table(tmp_path / "photos.parquet", {"photo_url": [1, 2, 3]})
    status, err = _submit(capsys, source, tmp_path / "out")
    assert status == 2 and "URL column 'photo_url' holds int64, not text URLs" in err


def test_an_output_folder_that_is_a_file(tmp_path: Path, capsys):
    source = url_table(tmp_path / "photos.parquet", ["http://h/1.jpg"])
    (tmp_path / "out").write_text("")
    status, err = _submit(capsys, source, tmp_path / "out")
    assert status == 2 and "exists and is not a folder" in err


@pytest.fixture
def read_only_folder(tmp_path: Path):
    """A read-only tmpfs: not writable even for root."""
    with mounted_filesystem(tmp_path / "readonly", "tmpfs", "ro,size=1m") as folder:
        yield folder


def test_an_output_folder_that_is_not_writable(tmp_path: Path, read_only_folder: Path, capsys):
    source = url_table(tmp_path / "photos.parquet", ["http://h/1.jpg"])
    status, err = _submit(capsys, source, read_only_folder)
    assert status == 2 and f"output folder {read_only_folder} is not writable" in err


def test_null_classes_go_to_unknown_and_bad_urls_are_counted(tmp_path: Path, capsys):
    with running_origin() as origin:
        urls = [origin.url("img", 1), None, "", origin.url("img", 2), "not a url"]
        source = url_table(
            tmp_path / "photos.parquet", urls, taxon_name=["a", None, "b", None, "c"]
        )
        status, err = _submit(capsys, source, tmp_path / "out")
    assert status == 0, err
    assert "2 rows in class 'unknown'" in err and "2 bad URLs" in err
    described = json.loads((tmp_path / "out" / "job" / "job.json").read_text())
    assert described["plan"]["unknown_class"] == 2 and described["plan"]["bad_url"] == 2
    manifest = pq.read_table(tmp_path / "out" / "00000.manifest.parquet").sort_by("row")
    assert manifest.column("class").to_pylist() == ["a", "unknown", "b", "unknown", "c"]
    assert manifest.column("status").to_pylist() == ["ok", "bad_url", "bad_url", "ok", "bad_url"]
