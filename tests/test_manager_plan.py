"""Planning: shard inputs from one or many tables, duplicates, bad URLs, strategies, determinism."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from manager_support import plan_source, write_table

from ldawt.manager import plan as plan_module
from ldawt.manager.errors import InputError
from ldawt.manager.plan import PlanOptions, balance_classes

# The real lists live outside the repository: CI lays out <dir>/main (this repository) with
# <dir>/shared beside it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_LIST = SHARED_DATA / "inat_subset_45k.parquet"


def real_list() -> Path:
    """The real 45k-row list; missing, it fails the test in CI (``CI=true``), else skips it."""
    if REAL_LIST.is_file():
        return REAL_LIST
    why = f"{REAL_LIST} is missing (expected ../shared/data beside the repository)"
    if os.environ.get("CI", "").strip().lower() in ("true", "1"):
        pytest.fail(f"CI is set and {why}", pytrace=False)
    pytest.skip(why)


def _plan(tmp: Path, source: Path, options: PlanOptions, passthrough=(), **columns):
    named = (columns.get("url"), columns.get("class_"), columns.get("key"))
    writer, shards = plan_source(
        source, tmp / "shards", tmp / "spill", options, named, tuple(passthrough)
    )
    tables = [pq.read_table(s.input_path) for s in shards]
    assert [t.num_rows for t in tables] == [s.rows for s in shards]
    assert not (tmp / "spill").exists()
    return writer.stats, shards, tables


def test_duplicates_are_fetched_once_and_share_their_originals_shard(tmp_path: Path):
    urls = [f"http://h/{i % 7}.jpg" for i in range(40)] + [None, "", "  ", None]
    table = write_table(
        tmp_path / "in.parquet", {"photo_url": urls, "taxon_name": ["a"] * len(urls)}
    )
    stats, _, tables = _plan(tmp_path / "job", table, PlanOptions(shard_size=3))
    rows = pa.concat_tables(tables).to_pylist()
    assert sorted(r["row"] for r in rows) == list(range(44))
    fetched = [r for r in rows if r["dup_of"] is None and r["url"] and r["url"].strip()]
    assert sorted(r["url"] for r in fetched) == sorted(f"http://h/{i}.jpg" for i in range(7))
    assert all(r["row"] == int(r["url"][9:-4]) for r in fetched)  # the first row of each URL
    for shard in tables:
        in_shard = set(shard.column("row").to_pylist())
        assert {d for d in shard.column("dup_of").to_pylist() if d is not None} <= in_shard
    # bad URLs are never duplicates of one another: each is its own row, counted
    assert stats.bad_url == 4 and stats.duplicates == 33
    bad = [r for r in rows if not (r["url"] or "").strip()]
    assert len(bad) == 4 and all(r["dup_of"] is None for r in bad)


def test_fixed_shards_are_runs_of_consecutive_rows(tmp_path: Path):
    table = write_table(
        tmp_path / "in.parquet",
        {"photo_url": [f"http://h/{i}.jpg" for i in range(25)], "photo_id": list(range(25))},
    )
    stats, shards, tables = _plan(tmp_path / "job", table, PlanOptions(shard_size=10))
    assert [s.shard_id for s in shards] == ["00000", "00001", "00002"]
    assert [t.column("row").to_pylist() for t in tables] == [
        list(range(0, 10)),
        list(range(10, 20)),
        list(range(20, 25)),
    ]
    assert stats.classes == Counter({"unknown": 25})  # no class column: all counted unknown


def test_class_strategy_keeps_classes_whole_in_near_equal_groups(tmp_path: Path):
    sizes = {"a": 50, "b": 40, "c": 30, "d": 20, "e": 20, "f": 10, "g": 10}
    classes = [name for name, n in sizes.items() for _ in range(n)]
    table = write_table(
        tmp_path / "in.parquet",
        {"photo_url": [f"http://h/{i}.jpg" for i in range(len(classes))], "taxon_name": classes},
    )
    options = PlanOptions(strategy="class", groups=3)
    _, _, tables = _plan(tmp_path / "job", table, options)
    assert len(tables) == 3
    homes = Counter()
    for shard in tables:
        homes.update(set(shard.column("class").to_pylist()))
    assert all(n == 1 for n in homes.values())  # every class lives in one shard
    assert sorted(t.num_rows for t in tables) == [60, 60, 60]
    assert balance_classes(sizes, 3) == {"a": 0, "b": 1, "c": 2, "d": 2, "e": 1, "f": 0, "g": 2}


def test_many_files_csv_and_parquet_with_passthrough_and_null_classes(tmp_path: Path):
    folder = tmp_path / "tables"
    write_table(
        folder / "a.parquet",
        {
            "photo_url": ["http://h/1.jpg", "http://h/2.jpg"],
            "taxon_name": ["x", None],
            "license": ["cc0", "cc-by"],
        },
    )
    folder.joinpath("b.csv").write_text(
        "photo_url,taxon_name,license\nhttp://h/3.jpg,,cc0\nhttp://h/1.jpg,y,cc-by\n"
    )
    folder.joinpath("notes.md").write_text("not a table")
    stats, _, tables = _plan(tmp_path / "job", folder, PlanOptions(), passthrough=["license"])
    rows = pa.concat_tables(tables).to_pylist()
    assert [(r["row"], r["class"], r["license"], r["dup_of"]) for r in rows] == [
        (0, "x", "cc0", None),
        (1, "unknown", "cc-by", None),
        (2, "unknown", "cc0", None),
        (3, "y", "cc-by", 0),
    ]
    assert stats.classes["unknown"] == 2
    assert [r["key"] for r in rows] == ["1", "2", "3", "1"]  # from the URL path: no key column


def test_replanning_is_deterministic_whatever_the_partitioning(tmp_path: Path, monkeypatch):
    # the real list, with every tenth URL repeated later
    table = pq.read_table(real_list(), columns=["photo_url", "taxon_name", "photo_id"])
    table = pa.concat_tables([table, table.take(list(range(0, table.num_rows, 10)))])
    source = tmp_path / "list.parquet"
    pq.write_table(table, source)
    results = []
    variants = [(400_000, 768, "fixed"), (3_000, 768, "fixed"), (3_000, 4, "fixed")]
    for spill_rows, max_files, strategy in [*variants, (400_000, 768, "class")]:
        monkeypatch.setattr(plan_module, "SPILL_ROWS", spill_rows)
        monkeypatch.setattr(plan_module, "MAX_SPILL_FILES", max_files)
        for attempt in range(2 if spill_rows == 3_000 else 1):
            folder = tmp_path / f"job-{spill_rows}-{max_files}-{strategy}-{attempt}"
            stats, shards, tables = _plan(folder, source, PlanOptions(strategy=strategy))
            results.append((strategy, stats.to_dict(), [s.shard_id for s in shards], tables))
    fixed = [r for r in results if r[0] == "fixed"]
    assert all(r[1:3] == fixed[0][1:3] for r in fixed)
    for r in fixed[1:]:
        assert all(a.equals(b) for a, b in zip(r[3], fixed[0][3], strict=True))
    assert fixed[0][1]["duplicates"] == len(range(0, 45606, 10))
    assert sum(t.num_rows for t in results[-1][3]) == table.num_rows


def test_csv_read_as_text(tmp_path: Path):
    source = tmp_path / "ids.csv"
    pacsv.write_csv(
        pa.table({"photo_url": ["http://h/a.jpg"], "photo_id": ["007"], "taxon_name": ["1"]}),
        source,
    )
    _, _, tables = _plan(tmp_path / "job", source, PlanOptions())
    assert tables[0].select(["key", "class"]).to_pylist() == [{"key": "007", "class": "1"}]


def test_files_that_disagree_on_a_column_type(tmp_path: Path):
    write_table(tmp_path / "in" / "a.parquet", {"photo_url": ["http://h/1.jpg"], "n": [1]})
    write_table(tmp_path / "in" / "b.parquet", {"photo_url": ["http://h/2.jpg"], "n": ["x"]})
    with pytest.raises(InputError, match="the input files disagree on column types"):
        _plan(tmp_path / "job", tmp_path / "in", PlanOptions(), passthrough=["n"])
