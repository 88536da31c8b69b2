"""Time each process of a command spends in CPython's cycle collector, by generation.

    python3 bench/gc_time.py -- ldawt-manager submit urls.parquet --out out ...

Runs the command with a ``sitecustomize`` (on PYTHONPATH, so spawned and forked Python
processes load it too) that times every collection with ``gc.callbacks`` and prints one line
per process at its exit (a forked multiprocessing child: from its fork on): collections and
wall milliseconds per generation. With ``--threshold 700,10,10`` the processes start with that
threshold (ldawt's daemon raises the first number to its own setting,
``runtime.collect_cycles_less_often``, unless it is higher).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SITECUSTOMIZE = """
import atexit, gc, os, sys, time

_threshold = os.environ.get("GC_TIME_THRESHOLD")
if _threshold:
    gc.set_threshold(*map(int, _threshold.split(",")))
_totals = [[0, 0.0] for _ in range(3)]
_started = []


def _timed(phase, info):
    if phase == "start":
        _started.append(time.perf_counter())
    elif _started:
        _totals[info["generation"]][0] += 1
        _totals[info["generation"]][1] += time.perf_counter() - _started.pop()


def _report():
    spent = " ".join(
        f"gen{g} {n} in {s * 1e3:.0f} ms" for g, (n, s) in enumerate(_totals)
    )
    sys.stderr.write(f"gc_time: pid {os.getpid()} {sys.argv[0][-40:]!r}: {spent}\\n")


# Forked children (a forkserver's) leave through os._exit, which skips atexit: they report
# through multiprocessing's own exit hook instead, counting from the fork.
class _Child:

    def __call__(self, _):
        atexit.unregister(_report)  # a spawned child leaves through atexit too: report once
        for totals in _totals:
            totals[:] = [0, 0.0]
        from multiprocessing import util

        util.Finalize(None, _report, exitpriority=0)


gc.callbacks.append(_timed)
atexit.register(_report)
_child = _Child()
from multiprocessing import util as _util

_util.register_after_fork(_child, _child)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threshold", help="gc.set_threshold for every process, e.g. 700,10,10")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "sitecustomize.py").write_text(SITECUSTOMIZE)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [folder, env.get("PYTHONPATH")]))
        if args.threshold:
            env["GC_TIME_THRESHOLD"] = args.threshold
        return subprocess.run(command, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
