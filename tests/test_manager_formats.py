"""Input formats: the same rows as parquet, CSV, TSV, text, JSON and JSON Lines, each plain and
gzip, bzip2 and zstd compressed, local, in a folder or at a URL, plan the same shards and fetch
the same outcomes; a remote list is streamed, and a job planned from one resumes; bad inputs are
one-line errors (exit status 2)."""

from __future__ import annotations

import asyncio
import csv
import gzip
import importlib
import io
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from manager_support import run_manager, running_origin, start_manager, wait_for

from ldawt.manager import formats
from ldawt.manager.cli import main
from ldawt.manager.demo import serve_in_background
from ldawt.manager.inputs import (
    ClassLabels,
    InputSource,
    check_files,
    estimate_rows,
    iter_batches,
    list_input_files,
    read_schema,
    resolve_columns,
    shard_tables,
)
from ldawt.manager.plan import PlanOptions, ShardWriter

RUN = ["--engine", "local", "--workers", "1", "--allow-private", "--retries", "0"]
COLUMNS = ("photo_url", "taxon_name", "photo_id", "license")
CLASSES = ("Apis mellifera", "", 'Quercus "robur", L.', "Æsculus hippocastanum")
COMPRESSIONS = {"": None, ".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}
TEXT_FORMATS = {"csv": ".csv", "tsv": ".tsv", "json": ".json", "jsonl": ".jsonl"}
VARIANTS = [("parquet", ".parquet")] + [
    (fmt, ext + suffix) for fmt, ext in TEXT_FORMATS.items() for suffix in COMPRESSIONS
]
TXT_VARIANTS = [".txt" + suffix for suffix in COMPRESSIONS]
# What a manifest says of a row that must not depend on the input's format.
COMPARED = ["row", "url", "class", "key", "label", "status", "http_status", "member", "sha256"]


def make_rows(url) -> list[dict]:
    """Rows with duplicates, 404s, blank URLs and classes, quotes, commas and non-ASCII."""
    rows = []
    for i in range(24):
        kind = "gone" if i % 7 == 3 else "img"
        photo_url = "" if i == 5 else "   " if i == 11 else url(kind, i % 9)
        rows.append(
            {
                "photo_url": photo_url,
                "taxon_name": CLASSES[i % len(CLASSES)],
                "photo_id": 1000 + i,
                "license": f"cc-{i % 3}",
            }
        )
    return rows


def fake_url(kind: str, n: int) -> str:
    return f"http://h{n % 3}.example/{kind}/{n}.jpg"


def encode(fmt: str, rows: list[dict]) -> bytes:
    """``rows`` written as ``fmt`` (txt: their URLs, one a line)."""
    if fmt == "csv":
        text = io.StringIO()
        writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return text.getvalue().encode()
    if fmt == "tsv":
        lines = ["\t".join(COLUMNS)] + ["\t".join(str(r[c]) for c in COLUMNS) for r in rows]
        return ("\n".join(lines) + "\n").encode()
    if fmt == "json":
        return json.dumps(rows, indent=2, ensure_ascii=False).encode()
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows).encode()
    if fmt == "txt":
        return "".join(r["photo_url"] + "\n" for r in rows).encode()
    raise AssertionError(fmt)


def write_bytes(path: Path, data: bytes, codec: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.output_stream(path, compression=codec) as stream:
        stream.write(data)
    return path


def write_variant(folder: Path, fmt: str, name: str, rows: list[dict]) -> Path:
    path = folder / name
    if fmt == "parquet":
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    suffix = next((s for s in COMPRESSIONS if s and name.endswith(s)), "")
    return write_bytes(path, encode(fmt, rows), COMPRESSIONS[suffix])


def txt_rows(rows: list[dict]) -> list[dict]:
    """What a text file of ``rows`` holds: their URLs (blank lines are skipped)."""
    return [{"photo_url": r["photo_url"]} for r in rows if r["photo_url"]]


def plan_table(tmp: Path, source, passthrough=("license",), **columns) -> pa.Table:
    files = list_input_files(source)
    mapped = resolve_columns(
        read_schema(files[0]), columns.get("url"), None, None, tuple(passthrough)
    )
    check_files(files, mapped)
    writer = ShardWriter(tmp / "shards", tmp / "spill", PlanOptions(shard_size=5))
    shards = writer.write(shard_tables(files, mapped, ClassLabels()), estimate_rows(files))
    return pa.concat_tables([pq.read_table(s.input_path) for s in shards])


def submit(capsys, source, out: Path, *extra: str) -> tuple[int, str]:
    status = main(["submit", str(source), "--out", str(out), *RUN, *extra])
    return status, capsys.readouterr().err


def outcomes(out: Path, extra: tuple[str, ...] = ()) -> list[dict]:
    tables = [
        pq.read_table(p, columns=[*COMPARED, *extra])
        for p in sorted(out.glob("*.manifest.parquet"))
    ]
    return pa.concat_tables(tables).sort_by("row").to_pylist()


# --- the same rows in every format ------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "name"), VARIANTS[1:], ids=[n for _, n in VARIANTS[1:]])
def test_every_format_plans_the_same_shards(tmp_path: Path, fmt: str, name: str):
    rows = make_rows(fake_url)
    reference = plan_table(tmp_path / "ref", write_variant(tmp_path, "parquet", "r.parquet", rows))
    source = write_variant(tmp_path / "in", fmt, f"urls{name}", rows)
    assert plan_table(tmp_path / "job", source).equals(reference)


@pytest.mark.parametrize("name", TXT_VARIANTS)
def test_a_text_file_is_a_list_of_urls(tmp_path: Path, name: str):
    rows = make_rows(fake_url)
    reference = write_variant(tmp_path, "parquet", "r.parquet", txt_rows(rows))
    source = write_variant(tmp_path / "in", "txt", f"urls{name}", rows)
    (file,) = list_input_files(source)
    assert read_schema(file) == pa.schema([("photo_url", pa.string())])
    assert plan_table(tmp_path / "job", source, ()).equals(
        plan_table(tmp_path / "ref", reference, ())
    )


def test_every_format_fetches_the_same_outcomes(tmp_path: Path, capsys):
    with running_origin() as origin:
        rows = make_rows(origin.url)
        source = write_variant(tmp_path, "parquet", "ref.parquet", rows)
        status, err = submit(capsys, source, tmp_path / "ref", "--passthrough", "license")
        assert status == 0, err
        reference = outcomes(tmp_path / "ref", ("license",))
        status, err = submit(
            capsys,
            write_variant(tmp_path, "parquet", "urls.parquet", txt_rows(rows)),
            tmp_path / "txt-ref",
        )
        assert status == 0, err
        txt_reference = outcomes(tmp_path / "txt-ref")
        assert {r["status"] for r in reference} == {"ok", "duplicate", "http_404", "bad_url"}

        for fmt, name in VARIANTS[1:]:
            source = write_variant(tmp_path / "in", fmt, f"urls{name}", rows)
            status, err = submit(capsys, source, tmp_path / name, "--passthrough", "license")
            assert status == 0, f"{name}: {err}"
            assert outcomes(tmp_path / name, ("license",)) == reference, name
        for name in TXT_VARIANTS:
            source = write_variant(tmp_path / "in", "txt", f"urls{name}", rows)
            status, err = submit(capsys, source, tmp_path / name)
            assert status == 0, f"{name}: {err}"
            assert outcomes(tmp_path / name) == txt_reference, name


def test_a_folder_of_mixed_formats_reads_each_file_by_its_name(tmp_path: Path):
    rows = make_rows(fake_url)
    parts = [
        ("parquet", "a.parquet"),
        ("csv", "b.csv.gz"),
        ("json", "c.json.bz2"),
        ("jsonl", "d.jsonl.zst"),
        ("tsv", "e.tsv"),
    ]
    folder = tmp_path / "lists"
    for (fmt, name), start in zip(parts, range(0, len(rows), 5), strict=False):
        write_variant(folder, fmt, name, rows[start : start + 5])
    # markers, hidden files and files of no known format are no tables
    (folder / "_SUCCESS").write_text("")
    (folder / ".partial.csv").write_text("garbage")
    (folder / "README.md").write_text("# lists")
    files = list_input_files(folder)
    assert [Path(f.location).name for f in files] == [name for _, name in parts]
    reference = write_variant(tmp_path, "parquet", "all.parquet", rows[:25])
    assert plan_table(tmp_path / "job", folder).equals(plan_table(tmp_path / "ref", reference))


def test_input_format_reads_a_file_whose_name_says_nothing(tmp_path: Path, capsys):
    rows = make_rows(fake_url)
    reference = plan_table(tmp_path / "ref", write_variant(tmp_path, "parquet", "r.parquet", rows))
    # gzip-compressed CSV named .dat: the format from the option, the compression from its bytes
    source = write_bytes(tmp_path / "export.dat", encode("csv", rows), "gzip")
    status, err = submit(capsys, source, tmp_path / "out")
    assert status == 2 and f"cannot tell the format of {source} from its name" in err
    assert "--input-format parquet|csv|tsv|txt|json|jsonl" in err
    forced = InputSource(source, "csv")
    assert plan_table(tmp_path / "job", forced).equals(reference)
    # a name that says another format: the option wins
    tsv = write_bytes(tmp_path / "urls.csv", encode("tsv", rows))
    assert plan_table(tmp_path / "job2", InputSource(tsv, "tsv")).equals(reference)
    # ... and a job records the format it was told, so another one is a changed input
    with running_origin() as origin:
        lines = [r["photo_url"] for r in txt_rows(make_rows(origin.url))[:4]]
        urls = write_bytes(tmp_path / "list.dat", "\n".join(["photo_url", *lines]).encode())
        status, err = submit(capsys, urls, tmp_path / "o", "--input-format", "csv")
        assert status == 0, err
        described = json.loads((tmp_path / "o" / "job" / "job.json").read_text())
        assert described["inputs"][0]["format"] == "csv"
        status, err = submit(capsys, urls, tmp_path / "o", "--input-format", "tsv")
        assert status == 2 and f"input {urls.resolve()} changed" in err


def test_a_text_files_column_is_named_by_url_col(tmp_path: Path, capsys):
    with running_origin() as origin:
        rows = make_rows(origin.url)[:6]
        source = write_bytes(tmp_path / "urls.txt.gz", encode("txt", rows), "gzip")
        status, err = submit(capsys, source, tmp_path / "out", "--url-col", "image")
        assert status == 0, err
        described = json.loads((tmp_path / "out" / "job" / "job.json").read_text())
        assert described["columns"]["url"] == "image" and described["columns"]["class"] is None
        manifest = outcomes(tmp_path / "out")
        assert [r["url"] for r in manifest] == [r["photo_url"] for r in txt_rows(rows)]
        assert {r["class"] for r in manifest} == {"unknown"}


def test_json_columns_of_mixed_types_and_nulls_read_as_text(tmp_path: Path, monkeypatch):
    # Batches and chunks small enough that types change between batches and objects straddle
    # chunk ends (Arrow's own JSON reader fixes each column's type from its first block).
    monkeypatch.setattr(formats, "BATCH_ROWS", 3)
    monkeypatch.setattr(formats, "JSON_CHUNK_CHARS", 7)
    rows = [
        {"photo_url": "http://h/1.jpg", "photo_id": None, "extra": None},
        {"photo_url": "http://h/2.jpg", "photo_id": None},
        {"photo_url": "http://h/3.jpg", "photo_id": None, "extra": True},
        {"photo_url": "http://h/4.jpg", "photo_id": 4, "extra": {"a": [1, 2.5]}, "late": 1},
        {"photo_url": "http://h/5.jpg", "photo_id": "k5", "extra": 1.5},
        {"photo_url": "http://h/6.jpg", "photo_id": 2**70, "extra": "x"},
    ]
    want_ids = [None, None, None, "4", "k5", str(2**70)]
    want_extra = [None, None, "true", '{"a":[1,2.5]}', "1.5", "x"]
    written = {  # pretty-printed and on one line
        "rows.json": encode("json", rows),
        "compact.json": json.dumps(rows).encode(),
        "rows.jsonl": encode("jsonl", rows),
    }
    for name, data in written.items():
        (file,) = list_input_files(write_bytes(tmp_path / name, data))
        assert read_schema(file).names == ["photo_url", "photo_id", "extra"]  # of the first 3
        table = pa.Table.from_batches(iter_batches(file, ["photo_url", "photo_id", "extra"]))
        assert table.column("photo_id").to_pylist() == want_ids, name
        assert table.column("extra").to_pylist() == want_extra, name
    # JSON Lines named .json, with blank lines
    lines = b"\n" + encode("jsonl", rows) + b"\n\n"
    (file,) = list_input_files(write_bytes(tmp_path / "lines.json", lines))
    assert pa.Table.from_batches(iter_batches(file, ["photo_id"])).num_rows == len(rows)
    (file,) = list_input_files(write_bytes(tmp_path / "blank.jsonl", lines))
    assert pa.Table.from_batches(iter_batches(file, ["photo_id"])).num_rows == len(rows)


# --- inputs at URLs ---------------------------------------------------------------------------


@contextmanager
def serving(folder: Path) -> Iterator[str]:
    """``folder`` over HTTP on 127.0.0.1 (range requests, ETag, Last-Modified)."""
    app = web.Application()
    app.router.add_static("/", folder)
    with serve_in_background(app) as port:
        yield f"http://127.0.0.1:{port}"


def test_a_list_at_a_url_fetches_like_the_local_file(tmp_path: Path, capsys):
    (tmp_path / "www").mkdir()
    with running_origin() as origin, serving(tmp_path / "www") as base:
        rows = make_rows(origin.url)
        local = write_variant(tmp_path, "parquet", "ref.parquet", rows)
        status, err = submit(capsys, local, tmp_path / "ref")
        assert status == 0, err
        reference = outcomes(tmp_path / "ref")
        for fmt, name in (
            ("csv", "list.csv.gz"),
            ("parquet", "list.parquet"),
            ("jsonl", "l.jsonl"),
        ):
            write_variant(tmp_path / "www", fmt, name, rows)
            status, err = submit(capsys, f"{base}/{name}", tmp_path / name)
            assert status == 0, f"{name}: {err}"
            assert outcomes(tmp_path / name) == reference, name
            (described,) = json.loads((tmp_path / name / "job" / "job.json").read_text())["inputs"]
            assert described["path"] == f"{base}/{name}"
            assert described["size"] == (tmp_path / "www" / name).stat().st_size
            assert described["etag"] and described["mtime"]
            # a URL that went through pathlib (a config file's parquets_directory) still reads
            (folded,) = list_input_files(Path(f"{base}/{name}"))
            assert folded.location == f"{base}/{name}" and folded.remote


class HeldList:
    """Serves one body over HTTP: all but its last bytes at once, the rest once released."""

    def __init__(self, body: bytes, held: int = 4096) -> None:
        self.body = body
        self.held = held
        self.released = threading.Event()
        self.completed = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{name}", self._serve)
        return app

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = len(self.body)
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        await response.write(self.body[: -self.held])
        await asyncio.to_thread(self.released.wait, 60)
        await response.write(self.body[-self.held :])
        self.completed = True
        await response.write_eof()
        return response


def test_a_list_at_a_url_is_read_as_a_stream(tmp_path: Path):
    """Rows come out while the server still holds back the end of the file: the list is parsed
    as it arrives, not downloaded first (to memory or disk)."""
    lines = [f"http://127.0.0.1:9/img/{i}.jpg,{i}" for i in range(200_000)]
    body = gzip.compress(("photo_url,photo_id\n" + "\n".join(lines) + "\n").encode())
    held = HeldList(body)
    with serve_in_background(held.app()) as port:
        try:
            (file,) = list_input_files(f"http://127.0.0.1:{port}/list.csv.gz")
            assert file.size() == len(body)
            batches = iter_batches(file, ["photo_url", "photo_id"])
            first = next(batches)
            assert first.num_rows > 0 and not held.completed
        finally:
            held.released.set()
        rows = first.num_rows + sum(batch.num_rows for batch in batches)
    assert held.completed and rows == len(lines)


def test_an_object_store_folder_reads_like_a_local_one(tmp_path: Path, capsys):
    """fsspec's in-memory filesystem stands for an object store: listing, ranged parquet reads,
    identity from its info()."""
    import fsspec

    fs = fsspec.filesystem("memory")
    rows = make_rows(fake_url)
    local = tmp_path / "lists"
    for fmt, name, part in (("parquet", "a.parquet", rows[:10]), ("csv", "b.csv.zst", rows[10:])):
        fs.pipe(f"/bucket/lists/{name}", write_variant(local, fmt, name, part).read_bytes())
    fs.pipe("/bucket/lists/_SUCCESS", b"")
    try:
        files = list_input_files("memory://bucket/lists/")
        assert [f.location for f in files] == [
            "memory:///bucket/lists/a.parquet",
            "memory:///bucket/lists/b.csv.zst",
        ]
        assert files[0].describe()["size"] == (local / "a.parquet").stat().st_size
        assert plan_table(tmp_path / "job", "memory://bucket/lists").equals(
            plan_table(tmp_path / "ref", local)
        )
    finally:
        fs.rm("/bucket", recursive=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_job_planned_from_a_url_resumes_and_notices_a_changed_list(tmp_path: Path):
    (tmp_path / "www").mkdir()
    with running_origin(delay_s=0.05) as origin, serving(tmp_path / "www") as base:
        urls = [origin.url("img", i) for i in range(300)]
        write_bytes(tmp_path / "www" / "list.txt.gz", "\n".join(urls).encode(), "gzip")
        source, out, log = f"{base}/list.txt.gz", tmp_path / "out", tmp_path / "run.log"
        args = ["submit", source, "--out", out, "--allow-private", "--shard-size", "50"]
        args += ["--engine", "local", "--workers", "1", "--concurrency", "4"]
        process = start_manager(*args, log=log)
        wait_for(lambda: len(list(out.glob("*_stats.json"))) >= 2, "two shards", process)
        process.kill()
        process.wait(timeout=30)
        committed = {p.name: p.read_text() for p in out.glob("*_stats.json")}
        hits = sum(origin.hits.values())

        done = run_manager(*args)
        assert done.returncode == 0, done.stderr
        assert "resuming the job" in done.stderr
        for name, text in committed.items():  # committed shards were not fetched again
            assert (out / name).read_text() == text
        assert sum(origin.hits.values()) - hits <= len(urls) - 50 * len(committed)
        assert len(outcomes(out)) == len(urls)

        write_bytes(tmp_path / "www" / "list.txt.gz", "\n".join(urls[:-1]).encode(), "gzip")
        changed = run_manager(*args)
        assert changed.returncode == 2
        assert f"input {source} changed (size or modification time)" in changed.stderr


# --- errors -----------------------------------------------------------------------------------


def _truncated_gzip() -> bytes:
    lines = "".join(f"http://h/{int.from_bytes(os.urandom(6), 'big')}.jpg\n" for _ in range(5000))
    data = gzip.compress(("photo_url\n" + lines).encode())
    return data[: len(data) // 2]


BAD_FILES = [
    ("urls.xlsx", b"photo_url\nhttp://h/1.jpg\n", "cannot tell the format of {path} from its name"),
    ("empty.csv", b"", "{path} is empty (0 bytes)"),
    ("empty.csv.gz", gzip.compress(b""), "{path} is empty (csv, gzip: no rows, no header)"),
    ("empty.txt.gz", gzip.compress(b"\n\n"), "{path} is empty (txt, gzip"),
    ("empty.json", b"[]", "{path} holds no JSON objects (no rows)"),
    ("cut.csv.gz", _truncated_gzip(), "(csv, gzip): Truncated compressed stream"),
    (
        "latin1.csv",
        "photo_url\nhttp://h/Æ.jpg\n".encode("latin-1"),
        "holds binary, not text URLs (text that is not UTF-8?)",
    ),
    ("latin1.jsonl", '{"photo_url": "Æ"}\n'.encode("latin-1"), "(jsonl): not UTF-8 text"),
    ("bad.json", b'[{"photo_url": "http://h/1.jpg"}, {"photo_url": ]', "row 2 is not valid JSON"),
    ("cut.json", b'[{"photo_url": "http://h/1.jpg"},', "{path} ends inside its JSON array"),
    ("cols.json", b'{"photo_url": ["http://h/1.jpg"]}', "holds an object of arrays (columns?)"),
    ("strings.json", b'["http://h/1.jpg"]', "row 1 is a JSON string, not an object"),
    ("bad.jsonl", b'{"photo_url": "a"}\n[1]\n', "line 2 holds a JSON array, not an object"),
    ("urls.parquet.gz", gzip.compress(b"PAR1"), "parquet is not read from a gzip-compressed"),
]


@pytest.mark.parametrize(("name", "data", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_bad_file_is_a_one_line_error(tmp_path: Path, capsys, name: str, data: bytes, message):
    path = write_bytes(tmp_path / name, data)
    status, err = submit(capsys, path, tmp_path / "out")
    assert status == 2
    errors = [line for line in err.splitlines() if line.startswith("ldawt: error:")]
    assert len(errors) == 1 and message.format(path=path) in errors[0], err
    assert "Traceback" not in err


def test_bad_urls_are_one_line_errors(tmp_path: Path, capsys):
    (tmp_path / "www").mkdir()
    with serving(tmp_path / "www") as base:
        cases = [
            (f"{base}/missing.csv", f"cannot read {base}/missing.csv: 404"),
            (f"http://127.0.0.1:{_free_port()}/list.csv", "Cannot connect to host 127.0.0.1"),
            ("nosuch://bucket/list.csv", "unknown URL scheme nosuch://"),
            ("file://otherhost/list.csv", "a file:// URL names a path on this machine"),
        ]
        for source, message in cases:
            status, err = submit(capsys, source, tmp_path / "out")
            errors = [line for line in err.splitlines() if line.startswith("ldawt: error:")]
            assert status == 2 and len(errors) == 1 and message in errors[0], (source, err)


def test_a_file_url_is_its_local_path(tmp_path: Path, capsys):
    with running_origin() as origin:
        source = write_variant(tmp_path, "jsonl", "urls.jsonl.bz2", make_rows(origin.url))
        status, err = submit(capsys, source.as_uri(), tmp_path / "out")
        assert status == 0, err
        (described,) = json.loads((tmp_path / "out" / "job" / "job.json").read_text())["inputs"]
        assert described["path"] == str(source.resolve()) and "mtime_ns" in described


def test_an_object_store_without_its_filesystem_says_what_to_install(
    tmp_path: Path, capsys, monkeypatch
):
    # s3fs is a test dependency: take it away, as on a machine without the s3 extra
    registry = importlib.import_module("fsspec.registry")  # fsspec.registry is a mapping

    monkeypatch.setitem(sys.modules, "s3fs", None)  # `import s3fs` raises ImportError
    monkeypatch.delitem(registry._registry, "s3", raising=False)
    status, err = submit(capsys, "s3://bucket/lists/urls.parquet", tmp_path / "out")
    assert status == 2
    assert "reading s3:// URLs needs s3fs, which is not installed: pip install s3fs" in err
    assert "ldawt[s3]" in err


def test_compression_comes_from_the_bytes(tmp_path: Path, caplog):
    """A .gz that is not (an HTTP server decompressed it in transit) is read as it is, with a
    warning; a compressed file named as plain is decompressed."""
    rows = make_rows(fake_url)
    reference = plan_table(tmp_path / "ref", write_variant(tmp_path, "parquet", "r.parquet", rows))
    plain = write_bytes(tmp_path / "plain.csv.gz", encode("csv", rows))
    assert plan_table(tmp_path / "job", plain).equals(reference)
    assert "its name says gzip, its first bytes do not: read as they are" in caplog.text
    packed = write_bytes(tmp_path / "packed.jsonl", encode("jsonl", rows), "zstd")
    assert plan_table(tmp_path / "job2", packed).equals(reference)
