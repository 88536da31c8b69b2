"""How the local engine starts its worker processes (why: ``local._worker_context``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from manager_support import manager_command, run_python, running_origin, url_table

# A fresh interpreter: the forkserver's environment is fixed for the process once chosen.
CONTEXTS = """
import os
from ldawt.manager.engines.local import _worker_context
from ldawt.manager.job import JOB_ENV

seen = [_worker_context().get_start_method()]
os.environ[JOB_ENV] = "/another/job"
seen.append(_worker_context().get_start_method())
del os.environ[JOB_ENV]
seen.append(_worker_context().get_start_method())
print(seen)
"""

START_METHOD = """
from ldawt.manager.engines.local import _worker_context
print(_worker_context().get_start_method())
"""


def test_workers_fork_from_one_server_unless_the_environment_changed() -> None:
    """Workers come from one forkserver with ldawt imported, as long as the process's
    environment (the job's marker among it) is the one that server started with; otherwise
    they are spawned, and so carry the current job's marker."""
    assert run_python(CONTEXTS) == str(["forkserver", "spawn", "forkserver"])


def test_workers_are_spawned_when_the_forkserver_cannot_start(tmp_path: Path) -> None:
    """The forkserver listens on a Unix socket under TMPDIR, whose path has at most 107
    bytes: under a longer TMPDIR the workers are spawned, and the run goes on."""
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    assert run_python(START_METHOD, {**os.environ, "TMPDIR": str(deep)}) == "spawn"


def run_job_script(script: str, urls: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """``script`` run by a fresh interpreter, given a URL table of ``urls`` and an output
    folder (``tmp_path/out``) as its arguments."""
    table = url_table(tmp_path / "urls.parquet", urls)
    return subprocess.run(
        [sys.executable, "-c", script, str(table), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )


# Two runs of one job in one process, as a script using the API may do.
TWO_RUNS = """
import sys
from ldawt.manager.cli import main

table, out = sys.argv[1:]
run = ["--allow-private", "--workers", "2", "--shard-size", "10", "--engine", "local", "-v"]
assert main(["submit", table, "--out", out, *run]) == 0
assert main(["retry-failed", out, "--status", "http_404", "--engine", "local", "-v"]) == 0
"""


def test_a_second_run_of_the_job_keeps_its_own_forkserver(tmp_path: Path) -> None:
    """The forkserver of the first run carries the job's marker; the second run must not take
    it for a killed manager's worker (and say so), nor lose it."""
    with running_origin() as origin:
        urls = [origin.url("img" if i % 3 else "gone", i) for i in range(60)]
        done = run_job_script(TWO_RUNS, urls, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "left running" not in done.stderr
    assert done.stderr.count("worker processes fork from the forkserver") == 2, done.stderr


# A job run through the API, then what this process imported and which children it kept.
MANAGER_IMPORTS = """
import sys
import psutil
from ldawt.manager.cli import main

table, out = sys.argv[1:]
run = ["--allow-private", "--workers", "2", "--shard-size", "10", "--engine", "local", "-q"]
assert main(["submit", table, "--out", out, *run]) == 0
print(sorted(name for name in ("aiohttp", "PIL", "ldawt.daemon.shard") if name in sys.modules))
print(len(psutil.Process().children()))
"""


def test_the_manager_of_several_workers_leaves_the_daemon_to_them(tmp_path: Path) -> None:
    """The workers and the shared DNS cache's process import the daemon (aiohttp, Pillow),
    forked from the server that imported it once; the manager does not (0.2 CPU s). The cache's
    process is gone with the run: the forkserver stays, for the next run."""
    with running_origin() as origin:
        done = run_job_script(MANAGER_IMPORTS, [origin.url("img", i) for i in range(30)], tmp_path)
    assert done.returncode == 0, done.stderr
    # children left: the forkserver and multiprocessing's resource tracker
    assert done.stdout.splitlines()[-2:] == ["[]", "2"], done.stdout
    assert len(list((tmp_path / "out").glob("*.tar"))) == 3


def test_a_run_goes_on_when_the_shared_dns_cache_cannot_start(tmp_path: Path) -> None:
    """Under a TMPDIR too deep for a Unix socket's path, neither the forkserver nor the DNS
    cache's socket can exist: the workers and the cache's process are spawned, the cache says
    why it cannot serve, and each worker resolves names itself."""
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    with running_origin() as origin:
        table = url_table(tmp_path / "urls.parquet", [origin.url("img", i) for i in range(20)])
        out = tmp_path / "out"
        cmd = manager_command("submit", table, "--out", out, "--allow-private")
        cmd += ["--engine", "local", "--workers", "2", "--shard-size", "10"]
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "TMPDIR": str(deep)},
        )
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "no shared DNS cache" in line]
    assert len(warnings) == 1 and "each worker process resolves hosts itself" in warnings[0]
    assert "Traceback" not in done.stderr
    assert len(list(out.glob("*.tar"))) == 2
