"""The job's index (`OUT/index.parquet`): every input row exactly once with its latest outcome,
after kills, resumes and retry rounds; its `ok` rows are exactly the tars' members; `index OUT`
rebuilds the same table, also for jobs whose manifests predate the columns it reads."""

from __future__ import annotations

import signal
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from manager_support import (
    partial_files,
    run_manager,
    running_origin,
    start_manager,
    url_table,
    wait_for,
)

from ldawt.daemon.contract import RETRY_ROUND, failure_result
from ldawt.manager import index
from ldawt.manager.cli import main
from ldawt.manager.job import Job
from ldawt.manager.ledger import DONE, Ledger

ROWS = 1200
UNIQUE = 900  # rows past it repeat earlier URLs: duplicates
SHARD_SIZE = 25
RUN = ["--engine", "local", "--workers", "1", "--allow-private", "--retries", "0"]
# the manifest columns a job made before the index existed lacks
NEWER_COLUMNS = [RETRY_ROUND, "width", "height", "orig_width", "orig_height", "stored_bytes"]


def _kind(n: int) -> str:
    return {0: "gone", 1: "flaky"}.get(n % 10, "img")


def _urls(origin, rows: int, unique: int) -> list[str]:
    return [origin.url(_kind(i % unique), i % unique) for i in range(rows)]


def _index(out: Path) -> pa.Table:
    return pq.read_table(Job(out).index_path)


def _tar_members(out: Path) -> Counter[tuple[str, str]]:
    """(shard, member name) of every committed tar, counted."""
    found: Counter[tuple[str, str]] = Counter()
    for path in sorted(out.glob("*.tar")):
        with tarfile.open(path) as tar:
            found.update((path.name.removesuffix(".tar"), name) for name in tar.getnames())
    return found


def _latest_from_manifests(out: Path) -> dict[int, tuple[str, str, str | None]]:
    """What the manifests alone say: per row, the outcome of its highest ``retry_round``."""
    latest: dict[int, tuple[int, str, str, str | None]] = {}
    for path in out.glob("*.manifest.parquet"):
        shard = path.name.removesuffix(".manifest.parquet")
        table = pq.read_table(path, columns=["row", RETRY_ROUND, "status", "member"])
        for row in table.to_pylist():
            seen = latest.get(row["row"])
            assert seen is None or seen[0] != row[RETRY_ROUND], "a row twice in one round"
            if seen is None or row[RETRY_ROUND] > seen[0]:
                latest[row["row"]] = (row[RETRY_ROUND], shard, row["status"], row["member"])
    return {row: outcome[1:] for row, outcome in latest.items()}


def _check_one_row_per_input_row(table: pa.Table, rows: int) -> None:
    assert table.num_rows == rows
    assert sorted(table.column("row").to_pylist()) == list(range(rows))


def _pairs(table: pa.Table, status: str) -> list[tuple[str, str]]:
    """(shard, member) of the rows with ``status``."""
    rows = table.filter(pc.equal(table["status"], status))
    return list(zip(rows["shard"].to_pylist(), rows["member"].to_pylist(), strict=True))


def _check_members(out: Path, table: pa.Table) -> int:
    """``ok`` rows are exactly the tars' members; ``duplicate`` rows point at one of them.
    Returns the number of duplicate rows."""
    members = _tar_members(out)
    assert members and all(n == 1 for n in members.values())
    assert Counter(_pairs(table, "ok")) == members
    duplicates = _pairs(table, "duplicate")
    assert all(pair in members for pair in duplicates)
    return len(duplicates)


def _outcomes_by_kind(table: pa.Table) -> dict[str, Counter[str]]:
    """URL kind -> counts of "<status>@<round>" (r0 for the first round's shards)."""
    found: dict[str, Counter[str]] = {}
    columns = (table[c].to_pylist() for c in ("url", "status", "shard"))
    for url, status, shard in zip(*columns, strict=True):
        kind = url.split("/")[3]
        round_ = shard.split("-")[0] if shard.startswith("r") else "r0"
        found.setdefault(kind, Counter())[f"{status}@{round_}"] += 1
    return found


def _kill(process) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def test_killed_resumed_and_retried_job_has_each_input_row_once(tmp_path: Path):
    out = tmp_path / "out"
    log = tmp_path / "manager.log"
    options = [
        "--out",
        out,
        "--allow-private",
        "--retries",
        "0",
        "--shard-size",
        SHARD_SIZE,
        "--workers",
        "2",
        "--concurrency",
        "4",
        "--passthrough",
        "license,shard",  # "shard" is an index column: the index calls it input_shard
    ]
    retry = ["--engine", "local", "--workers", "2"]
    with running_origin(delay_s=0.02) as origin:
        licenses = [f"cc-{i % 4}" for i in range(ROWS)]
        source = url_table(
            tmp_path / "in.parquet",
            _urls(origin, ROWS, UNIQUE),
            license=licenses,
            shard=[-i for i in range(ROWS)],
        )
        submit = ["submit", source, *options]

        # killed mid-run: the index, rebuilt, has the committed rows and the rest pending
        process = start_manager(*submit, log=log)
        wait_for(
            lambda: len(list(out.glob("*_stats.json"))) >= 3 and bool(partial_files(out)),
            "three shards committed and one half written",
            process,
        )
        _kill(process)
        rebuilt = run_manager("index", out)
        assert rebuilt.returncode == 0, rebuilt.stderr + log.read_text()
        table = _index(out)
        _check_one_row_per_input_row(table, ROWS)
        with Ledger(Job(out).ledger_path) as ledger:
            unfinished = {s.shard_id for s in ledger.shards() if s.state != DONE}
        pending = table.filter(pc.equal(table["status"], "pending"))
        assert unfinished and set(pending["shard"].to_pylist()) == unfinished
        assert pc.all(pc.is_null(pending["member"])).as_py()
        _check_members(out, table.filter(pc.not_equal(table["status"], "pending")))

        # resumed, then two retry rounds: the flaky rows now work, the 404s are tried again
        resumed = run_manager(*submit)
        assert resumed.returncode == 0, resumed.stderr
        assert "index: 1,200 rows, one per input row" in resumed.stderr
        origin.flaky_down = False
        first = run_manager("retry-failed", out, *retry)
        assert first.returncode == 0, first.stderr
        second = run_manager("retry-failed", out, "--status", "http_404", *retry)
        assert second.returncode == 0, second.stderr

    manifest_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in out.glob("*.manifest.parquet"))
    assert manifest_rows > ROWS  # read together, the manifests list retried rows twice
    table = _index(out)
    _check_one_row_per_input_row(table, ROWS)
    assert _check_members(out, table) > 0
    by_kind = _outcomes_by_kind(table)
    gone = (UNIQUE // 10) + (ROWS - UNIQUE) // 10
    assert by_kind["gone"] == {"http_404@r2": gone}  # fetched once per URL, duplicates included
    assert set(by_kind["flaky"]) <= {"ok@r1", "duplicate@r1"}
    assert set(by_kind["img"]) <= {"ok@r0", "duplicate@r0"}
    # the manifests alone (their retry_round) say the same
    latest = _latest_from_manifests(out)
    assert {
        row: (shard, status, member)
        for row, shard, status, member in zip(
            *(table[c].to_pylist() for c in ("row", "shard", "status", "member")), strict=True
        )
    } == latest
    # passthrough columns ride along, renamed where an index column has the name
    ordered = table.sort_by("row")
    assert ordered["license"].to_pylist() == licenses
    assert ordered["input_shard"].to_pylist() == [-i for i in range(ROWS)]

    rebuilt = run_manager("index", out)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "index: 1,200 rows, one per input row" in rebuilt.stderr
    assert _index(out).equals(table)
    assert not partial_files(out)


def _small_job(tmp_path: Path, capsys, *extra: str) -> Path:
    """12 rows in 3 shards (5 images and 3 duplicates of them, 2 flaky, 2 gone), and a retry
    round that fixes the flaky ones."""
    out = tmp_path / "out"
    with running_origin() as origin:
        urls = [origin.url("img", i % 5) for i in range(8)]
        urls += [origin.url("flaky", i) for i in range(2)] + [
            origin.url("gone", i) for i in range(2)
        ]
        source = url_table(tmp_path / "in.parquet", urls, license=[f"l{i}" for i in range(12)])
        command = ["submit", str(source), "--out", str(out), "--shard-size", "5", *RUN, *extra]
        assert main([*command, "--passthrough", "license"]) == 0
        origin.flaky_down = False
        assert main(["retry-failed", str(out), "--engine", "local", "--workers", "1"]) == 0
    capsys.readouterr()
    return out


@pytest.mark.parametrize("retry_column", ["absent", "zero"])
def test_a_job_made_before_the_index_existed_indexes_fine(
    tmp_path: Path, capsys, retry_column: str
):
    out = _small_job(tmp_path, capsys)
    expected = _index(out)
    assert {shard for shard, _ in _pairs(expected, "ok")} == {"00000", "r1-00000"}
    # the previous layout: manifests without the newer columns, and no index; a retry shard
    # planned before retry_round existed but run after says 0
    for path in out.glob("*.manifest.parquet"):
        table = pq.read_table(path)
        if retry_column == "zero" and path.name.startswith("r1-"):
            table = table.set_column(
                table.schema.get_field_index(RETRY_ROUND),
                RETRY_ROUND,
                pa.repeat(pa.scalar(0, pa.int32()), table.num_rows),
            )
            table = table.drop_columns(NEWER_COLUMNS[1:])
        else:
            table = table.drop_columns(NEWER_COLUMNS)
        pq.write_table(table, path)
    Job(out).index_path.unlink()

    assert main(["index", str(out)]) == 0
    assert "index: 12 rows, one per input row" in capsys.readouterr().err
    table = _index(out)
    assert table.schema == expected.schema
    assert table.drop_columns(["width", "height"]).equals(
        expected.drop_columns(["width", "height"])
    )
    assert table["width"].null_count == table["height"].null_count == 12


def test_a_run_ending_with_a_failed_shard_indexes_its_rows_as_pending(
    tmp_path: Path, capsys, monkeypatch
):
    from ldawt.daemon import shard

    real = shard.run_shard

    def failing(spec, progress=None):
        if spec.shard_id == "00001":
            return failure_result(spec.shard_id, "the disk went away")
        return real(spec, progress)

    with running_origin() as origin:
        source = url_table(tmp_path / "in.parquet", [origin.url("img", i) for i in range(12)])
        out = tmp_path / "out"
        command = ["submit", str(source), "--out", str(out), "--shard-size", "5", *RUN]
        monkeypatch.setattr(shard, "run_shard", failing)
        assert main([*command, "--shard-retries", "0"]) == 1
        assert "index: 12 rows, one per input row, in " in capsys.readouterr().err
        table = _index(out).sort_by("row")
        statuses = table["status"].to_pylist()
        assert statuses == ["ok"] * 5 + ["pending"] * 5 + ["ok"] * 2
        assert set(table["shard"].to_pylist()[5:10]) == {"00001"}
        assert table["url"].to_pylist() == [origin.url("img", i) for i in range(12)]

        monkeypatch.setattr(shard, "run_shard", real)
        assert main(command) == 0
        assert "index: 12 rows" in capsys.readouterr().err
        assert _index(out)["status"].to_pylist() == ["ok"] * 12
        written = Job(out).index_path.stat().st_mtime_ns

        assert main(command) == 0  # nothing changed: the index is not written again
        assert "index: " not in capsys.readouterr().err
        assert Job(out).index_path.stat().st_mtime_ns == written


def test_index_of_a_folder_without_a_job_is_one_error_line(tmp_path: Path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a job\n")
    for folder in (tmp_path, a_file, tmp_path / "missing"):
        done = run_manager("index", folder)
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [
            f"ldawt: error: {folder} holds no ldawt job (no {folder.resolve()}/job/ledger.sqlite)"
        ]
        assert not (tmp_path / "job").exists()


def test_index_refuses_a_job_another_manager_is_running(tmp_path: Path, capsys):
    out = _small_job(tmp_path, capsys)
    with Job(out).lock():
        assert main(["index", str(out)]) == 2
    assert "another ldawt-manager" in capsys.readouterr().err


def test_row_set_grows_and_filters():
    rows = index.RowSet(10)
    table = pa.table({"row": pa.array([0, 3, 9, 17, 40], pa.int64())})
    assert rows.without(table).equals(table)
    rows.add(pa.array([3, 40], pa.int64()))
    assert rows.without(table)["row"].to_pylist() == [0, 9, 17]
    rows.add(pa.chunked_array([[9], [100]], pa.int64()))
    assert rows.without(table)["row"].to_pylist() == [0, 17]
    assert rows.without(pa.table({"row": pa.array([1000], pa.int64())})).num_rows == 1
