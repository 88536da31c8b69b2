"""How the local engine starts its worker processes (why: ``local._worker_context``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
    done = subprocess.run(
        [sys.executable, "-c", CONTEXTS], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == str(["forkserver", "spawn", "forkserver"])


def test_workers_are_spawned_when_the_forkserver_cannot_start(tmp_path: Path) -> None:
    """The forkserver listens on a Unix socket under TMPDIR, whose path has at most 107
    bytes: under a longer TMPDIR the workers are spawned, with no error."""
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    code = START_METHOD
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "TMPDIR": str(deep)},
    )
    assert (done.stdout.strip(), done.stderr) == ("spawn", "")
