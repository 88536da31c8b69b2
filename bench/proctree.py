"""Run one client command and measure its whole process tree.

* CPU: user+sys of the child and every descendant it reaped, exactly, from ``os.wait4``'s
  rusage. This process is a child subreaper (Linux), so a descendant orphaned by its parent's
  exit (a forkserver and the workers it reaped) becomes this process's child and is reaped and
  counted the same way once the child is gone. Descendants are also tracked with psutil at each
  sample, and the larger of the two figures is reported.
* Memory: every ``interval_s`` the RSS (and PSS from ``smaps_rollup``, when readable) of all
  live processes of the tree are summed; the peaks of those sums are reported.

The child runs in its own session (process group): on timeout, error or Ctrl-C the whole
group is terminated, then killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil


@dataclass
class TreeStats:
    """What one measured run cost."""

    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss: int
    peak_pss: int | None
    max_procs: int
    peak_proc_rss: int = 0  # the largest single process of the tree
    timed_out: bool = False
    notes: list[str] = field(default_factory=list)


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _stop_and_reap(pid: int, grace_s: float = 5.0) -> tuple[int, object]:
    """TERM the group, give it ``grace_s``, then KILL it; returns wait4's (status, rusage)."""
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        wpid, status, rusage = os.wait4(pid, os.WNOHANG)
        if wpid == pid:
            _signal_group(pid, signal.SIGKILL)  # leftovers of the group, if any
            return status, rusage
        time.sleep(0.05)
    _signal_group(pid, signal.SIGKILL)
    _, status, rusage = os.wait4(pid, 0)
    return status, rusage


PR_SET_CHILD_SUBREAPER = 36
ORPHAN_EXIT_S = 10.0


def _become_subreaper() -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux
        return False


def _reap_orphans(session: int, grace_s: float = ORPHAN_EXIT_S) -> float:
    """CPU of the processes of ``session`` that were orphaned and became this process's children
    (they exit once their parent is gone: a forkserver whose manager exited), reaped within
    ``grace_s``; the rest are killed, reaped and counted too (given up on after another
    ``grace_s``, should one survive SIGKILL)."""
    cpu = 0.0
    started = time.monotonic()
    while time.monotonic() - started < 2 * grace_s:
        left = []
        for child in psutil.Process().children():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(child.pid) == session:
                    left.append(child.pid)
        if not left:
            break
        for orphan in left:
            with contextlib.suppress(ChildProcessError, ProcessLookupError):
                if time.monotonic() - started > grace_s:
                    os.kill(orphan, signal.SIGKILL)  # also one that left the process group
                wpid, _, rusage = os.wait4(orphan, os.WNOHANG)
                if wpid == orphan:
                    cpu += rusage.ru_utime + rusage.ru_stime
        time.sleep(0.05)
    return cpu


def run_measured(
    cmd: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    log_path: Path,
    timeout_s: float,
    interval_s: float = 0.25,
    stdout_path: Path | None = None,
) -> TreeStats:
    """Run ``cmd`` to completion (or ``timeout_s``), sampling its tree; output goes to files."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    subreaper = _become_subreaper()
    with open(log_path, "wb") as err, open(stdout_path or log_path, "ab") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out if stdout_path else err,
            stderr=err,
            start_new_session=True,
        )
    pid = proc.pid
    root = psutil.Process(pid)
    cpu_seen: dict[tuple[int, float], float] = {}  # (pid, create_time) -> last user+sys seen
    peak_rss, peak_pss, max_procs, peak_proc_rss = 0, 0, 0, 0
    pss_ok = True
    status, rusage = None, None
    timed_out = False
    try:
        while True:
            wpid, status, rusage = os.wait4(pid, os.WNOHANG)
            if wpid == pid:
                break
            procs = _tree(root)
            rss = pss = 0
            for p in procs:
                try:
                    with p.oneshot():
                        ct = p.cpu_times()
                        cpu_seen[(p.pid, p.create_time())] = ct.user + ct.system
                        if pss_ok:
                            try:
                                mem = p.memory_full_info()
                                pss += mem.pss
                            except (psutil.AccessDenied, AttributeError):
                                pss_ok = False
                                mem = p.memory_info()
                        else:
                            mem = p.memory_info()
                        rss += mem.rss
                        peak_proc_rss = max(peak_proc_rss, mem.rss)
                except psutil.Error:
                    continue
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            max_procs = max(max_procs, len(procs))
            if time.perf_counter() - t0 > timeout_s:
                timed_out = True
                status, rusage = _stop_and_reap(pid)
                break
            time.sleep(interval_s)
    except BaseException:
        with contextlib.suppress(ChildProcessError):
            _stop_and_reap(pid, grace_s=2.0)
        raise
    finally:
        proc.returncode = 0  # reaped by wait4 above; keep Popen from waiting again
    wall = time.perf_counter() - t0
    exact = rusage.ru_utime + rusage.ru_stime if rusage else 0.0
    if subreaper:
        exact += _reap_orphans(pid)
    _signal_group(pid, signal.SIGKILL)  # leftovers of the group (children left behind)
    sampled = sum(cpu_seen.values())
    notes = []
    if sampled > exact * 1.05 + 0.5:
        notes.append(f"cpu from samples ({sampled:.1f}s) > wait4 ({exact:.1f}s): unreaped children")
    code = os.waitstatus_to_exitcode(status) if status is not None else -1
    return TreeStats(
        returncode=code,
        wall_s=wall,
        cpu_s=max(exact, sampled),
        peak_rss=peak_rss,
        peak_pss=peak_pss if pss_ok else None,
        max_procs=max_procs,
        peak_proc_rss=peak_proc_rss,
        timed_out=timed_out,
        notes=notes,
    )
