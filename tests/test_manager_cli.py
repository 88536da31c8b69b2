"""The command line end to end, in process: config files, help, duplicates through the daemon,
resume refusals, retry-failed, status and report."""

from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from manager_support import running_origin, url_table

from ldawt.manager.cli import build_parser, main, parse_args
from ldawt.manager.job import Job

RUN = ["--engine", "local", "--workers", "1", "--allow-private", "--retries", "0"]


def _submit(capsys, source: Path, out: Path, *extra: str) -> tuple[int, str]:
    status = main(["submit", str(source), "--out", str(out), *RUN, *extra])
    return status, capsys.readouterr().err


def _manifest(out: Path):
    tables = [pq.read_table(p) for p in sorted(out.glob("*.manifest.parquet"))]
    return sorted((row for t in tables for row in t.to_pylist()), key=lambda r: r["row"])


def test_seed_json_config_keys(tmp_path: Path):
    config = tmp_path / "seed.json"
    config.write_text(
        json.dumps(
            {
                "port_number": 9123,
                "parquets_directory": str(tmp_path / "lists"),
                "class_col": "species",
                "url_col": "image_url",
                "timeout_minutes": 2,
                "max_retries": 5,
            }
        )
    )
    args = parse_args(["submit", "--config", str(config), "--out", str(tmp_path / "o")])
    assert args.input == tmp_path / "lists"
    assert (args.class_col, args.url_col) == ("species", "image_url")
    assert (args.deadline, args.shard_retries, args.port) == (120.0, 5, 9123)


def test_toml_config_with_flags_overriding(tmp_path: Path):
    config = tmp_path / "job.toml"
    config.write_text(
        'shard_size = 7\nlayout = "webdataset"\ncompress = true\npassthrough = ["a"]\n'
    )
    base = ["submit", "in.parquet", "--out", "o", "--config", str(config)]
    args = parse_args(base)
    assert (args.shard_size, args.layout, args.compress, args.passthrough) == (
        7,
        "webdataset",
        True,
        ("a",),
    )
    assert parse_args([*base, "--shard-size", "9", "--layout", "class"]).shard_size == 9


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"shard_sise": 5}', "unknown key 'shard_sise'"),
        ('{"layout": "zip"}', "'layout' must be one of class, webdataset"),
        ('{"shard_size": "many"}', "bad value 'many' for 'shard_size'"),
        ("[1, 2]", "must hold a table of keys and values"),
        ("{not json", "is not valid JSON"),
    ],
)
def test_bad_config_files(tmp_path: Path, capsys, text: str, message: str):
    config = tmp_path / "job.json"
    config.write_text(text)
    assert main(["submit", "in.parquet", "--out", "o", "--config", str(config)]) == 2
    assert message in capsys.readouterr().err


def test_help_gives_every_option_its_default():
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in commands.choices.items():
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert "default" in (action.help or ""), f"{name} {action.option_strings}"


def test_duplicates_are_fetched_once_and_point_at_the_member(tmp_path: Path, capsys):
    with running_origin() as origin:
        urls = [origin.url("img", i % 3) for i in range(9)] + [origin.url("gone", 0)] * 2
        source = url_table(tmp_path / "in.parquet", urls)
        status, err = _submit(capsys, source, tmp_path / "out", "--shard-size", "2")
        hits = dict(origin.hits)
    assert status == 0, err
    assert "3 images ok (+6 duplicate rows), 2 failed" in err
    assert all(n == 1 for n in hits.values()) and len(hits) == 4
    rows = _manifest(tmp_path / "out")
    by_row = {r["row"]: r for r in rows}
    for row in rows[3:9]:
        original = by_row[row["duplicate_of"]]
        assert row["status"] == "duplicate" and original["status"] == "ok"
        assert (row["member"], row["sha256"]) == (original["member"], original["sha256"])
    assert [r["status"] for r in rows[9:]] == ["http_404", "http_404"]
    assert rows[10]["duplicate_of"] == 9 and "same URL as row 9" in rows[10]["error"]
    members = []
    for tar_path in (tmp_path / "out").glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            members += tar.getnames()
    assert len(members) == 3


def test_changed_inputs_or_options_are_refused_unless_force_new(tmp_path: Path, capsys):
    with running_origin() as origin:
        source = url_table(tmp_path / "in.parquet", [origin.url("img", i) for i in range(6)])
        out = tmp_path / "out"
        assert _submit(capsys, source, out, "--shard-size", "3")[0] == 0
        status, err = _submit(capsys, source, out, "--shard-size", "2")
        assert status == 2
        assert "option shard_size: 3 -> 2" in err and "--force-new" in err
        assert "ldawt: error: " in err and "ldawt:   - option shard_size: 3 -> 2" in err
        url_table(source, [origin.url("img", i) for i in range(8)])
        status, err = _submit(capsys, source, out, "--shard-size", "3")
        assert status == 2 and f"input {source} changed" in err
        status, err = _submit(capsys, source, out, "--shard-size", "3", "--force-new")
        assert status == 0, err
    assert len(_manifest(out)) == 8
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]


def test_rerun_of_a_finished_job_fetches_nothing(tmp_path: Path, capsys):
    with running_origin() as origin:
        source = url_table(tmp_path / "in.parquet", [origin.url("img", i) for i in range(4)])
        assert _submit(capsys, source, tmp_path / "out")[0] == 0
        hits = sum(origin.hits.values())
        status, err = _submit(capsys, source, tmp_path / "out")
        assert status == 0 and "1 shard(s), 1 already done" in err
        assert sum(origin.hits.values()) == hits


def test_retry_failed_retries_transient_failures_and_reports_each_row_once(tmp_path: Path, capsys):
    out = tmp_path / "out"
    with running_origin() as origin:
        urls = (
            [origin.url("img", i) for i in range(6)]
            + [origin.url("flaky", i) for i in range(4)]
            + [origin.url("gone", i) for i in range(2)]
        )
        source = url_table(tmp_path / "in.parquet", urls)
        assert _submit(capsys, source, out, "--shard-size", "5")[0] == 0
        origin.flaky_down = False
        retry = ["--engine", "local", "--workers", "1"]
        assert main(["retry-failed", str(out), *retry]) == 0
        err = capsys.readouterr().err
        assert "retrying 4 row(s)" in err
        assert origin.hits["/gone/0.jpg"] == 1  # a 404 is not retried unless asked for

        assert main(["report", str(out), "--json"]) == 0
        figures = json.loads(capsys.readouterr().out)
        assert figures["totals"]["rows"] == 12
        assert figures["by_status"] == {"ok": 10, "http_404": 2}

        assert main(["retry-failed", str(out), "--status", "http_4xx", *retry]) == 0
        assert "retrying 2 row(s)" in capsys.readouterr().err
        assert origin.hits["/gone/0.jpg"] == 2
        assert main(["retry-failed", str(out), "--status", "bogus", *retry]) == 2
        assert "unknown status 'bogus'" in capsys.readouterr().err

    assert main(["report", str(out), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["by_status"] == {"ok": 10, "http_404": 2}
    assert figures["failures_by_host"][0]["by_status"] == {"http_404": 2}
    assert {c["class"] for c in figures["classes"]["top"]} == {
        "Apis mellifera",
        "Danaus plexippus",
        "Quercus robur",
    }
    assert figures["status"]["rows_pending"] == 0

    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "rows: 12 planned, 10 ok, 2 failed, 0 pending" in text
    assert "0 planned, 0 running, 5 done, 0 failed" in text  # 3 planned, 1 per retry round
    assert main(["report", str(out)]) == 0
    assert "http_404" in capsys.readouterr().out


def test_status_of_a_folder_without_a_job(tmp_path: Path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    assert "holds no ldawt job" in capsys.readouterr().err


def test_progress_is_periodic_log_lines_when_not_a_terminal(tmp_path: Path, capsys):
    with running_origin() as origin:
        source = url_table(tmp_path / "in.parquet", [origin.url("img", i) for i in range(4)])
        status, err = _submit(capsys, source, tmp_path / "out")
    assert status == 0
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("[")]
    assert lines[-1].startswith("[####################] 4/4 rows  1/1 shards")
    assert "img/s" in lines[-1] and "MB/s" in lines[-1] and "failed 0.0%" in lines[-1]


def test_a_second_manager_on_the_same_job_is_refused(tmp_path: Path, capsys):
    source = url_table(tmp_path / "in.parquet", ["http://127.0.0.1:9/a.jpg"])
    with Job(tmp_path / "out").lock():
        status, err = _submit(capsys, source, tmp_path / "out")
    assert status == 2 and "another ldawt-manager (pid " in err
