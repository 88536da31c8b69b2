"""`ldawt-manager demo`: it refuses a folder holding a job it did not make and leaves that job's
files as they were; on its own folder it starts afresh every time; its --input may be any URL
list `submit` reads."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from manager_support import run_manager, running_origin, url_table

from ldawt.manager.cli import main
from ldawt.manager.demo import LISTING_NAME
from ldawt.manager.job import Job

LOCAL = ["--engine", "local", "--workers", "1"]


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("ldawt: error: ")]


def _report(out: Path, capsys) -> dict:
    assert main(["report", str(out), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _listing_ports(out: Path) -> set[str]:
    urls = pq.read_table(out / "job" / LISTING_NAME, columns=["photo_url"]).column(0)
    return {url.split("/")[2] for url in urls.to_pylist()}


def test_demo_refuses_a_folder_holding_a_submit_job_and_leaves_it_untouched(tmp_path: Path):
    out = tmp_path / "my-real-job"
    with running_origin() as origin:
        source = url_table(tmp_path / "in.parquet", [origin.url("img", i) for i in range(5)])
        submitted = run_manager(
            "submit", source, "--out", out, *LOCAL, "--allow-private", "--shard-size", "2"
        )
    assert submitted.returncode == 0, submitted.stderr
    before = _files(out)
    assert {"job/ledger.sqlite", "00000.tar", "00002.manifest.parquet"} <= before.keys()

    refused = run_manager("demo", "--rows", "100", "--out", out, *LOCAL)
    assert refused.returncode == 2, refused.stderr
    [error] = _error_lines(refused.stderr)
    assert f"{out} holds a job planned from {source.resolve()}, not one the demo made" in error
    assert "it would discard that job" in error and "another --out" in error
    assert refused.stdout == ""
    assert _files(out) == before


def test_demo_refuses_a_job_whose_planning_did_not_finish_unless_force_new(tmp_path: Path, capsys):
    out = tmp_path / "half-planned"
    Job(out).open_ledger().close()  # a submit killed while planning leaves this
    assert main(["demo", "--rows", "10", "--out", str(out), *LOCAL]) == 2
    [error] = _error_lines(capsys.readouterr().err)
    assert "planning did not finish, not one the demo made" in error and "--force-new" in error

    assert main(["demo", "--rows", "10", "--out", str(out), *LOCAL, "--force-new"]) == 0
    capsys.readouterr()
    assert _report(out, capsys)["totals"]["rows"] == 10


def test_the_demo_starts_afresh_on_its_own_folder(tmp_path: Path, capsys):
    out = tmp_path / "demo"
    demo = ["demo", "--rows", "60", "--out", str(out), "--shard-size", "25", *LOCAL]
    assert main(demo) == 0
    first_ports = _listing_ports(out)
    first = _report(out, capsys)
    capsys.readouterr()

    assert main(demo) == 0
    err = capsys.readouterr().err
    assert "--force-new: discarding the job in" in err and "error" not in err
    second = _report(out, capsys)
    assert _listing_ports(out).isdisjoint(first_ports)  # a new origin, new URLs
    assert second["totals"]["rows"] == first["totals"]["rows"] == 60
    assert second["by_status"] == first["by_status"]  # the origin's fates hang on the paths
    assert sum(second["by_status"].values()) == 60
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]


def test_demo_input_may_be_a_csv_file(tmp_path: Path, capsys):
    source = tmp_path / "urls.csv"
    source.write_text(
        "photo_url,taxon_name\n"
        + "".join(f"https://example.org/photos/{i}/medium.jpg,Apis mellifera\n" for i in range(9))
    )
    out = tmp_path / "demo"
    assert main(["demo", "--input", str(source), "--rows", "7", "--out", str(out), *LOCAL]) == 0
    capsys.readouterr()
    figures = _report(out, capsys)
    assert figures["totals"]["rows"] == 7
    assert [c["class"] for c in figures["classes"]["top"]] == ["Apis mellifera"]
