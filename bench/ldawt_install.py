"""Which ldawt the benchmark measures, and its installation in a bench venv.

By default a committed revision (``HEAD``): ``git archive`` exports it to
``bench/.work/ldawt-src/<commit>/`` and that frozen copy is installed (editable, so subpackages
resolve by folder) into ``bench/.work/venv-ldawt``. Files being edited in the working tree thus
cannot break or change a run, and the figures name the exact commit. ``--ldawt-rev worktree``
installs a copy of the working tree taken when the run starts (uncommitted and untracked files
included, ignored ones not; editable from that copy, installed again when pyproject.toml
changed), so that files other people edit during a run cannot break or change it halfway;
``--ldawt-bin`` runs a given executable. A second revision measured in the same run
(``--ldawt-baseline-rev``) gets its own venv and snapshot (``slot``).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
Log = Callable[[str], None]


def _git(*args: str) -> str:
    res = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True, timeout=60
    )
    return res.stdout.strip()


def _pip(venv: Path, *args: str) -> subprocess.CompletedProcess:
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    return subprocess.run(
        [*cmd, "--disable-pip-version-check", *args], capture_output=True, text=True, timeout=900
    )


def _compile(venv: Path, src: Path) -> None:
    """Write the snapshot's bytecode, as a normal (non-editable) install does. An editable
    install leaves it to the first import, which writes nothing under PYTHONDONTWRITEBYTECODE
    (set on these machines): every ldawt process of every row would then compile ldawt's
    modules again, about 0.15 CPU s each (bench/RESULTS.md), while the peers' packages come
    compiled."""
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "compileall", "-q", "-j", "0",
         str(src / "daemon"), str(src / "manager")],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip


def install(rev: str, work: Path, log: Log, slot: str = "") -> tuple[Path | None, str]:
    """Install ldawt at ``rev`` (a git revision, or ``worktree``) into ``venv-ldawt<slot>``;
    returns (exe, description)."""
    head = _git("rev-parse", "--short=12", "HEAD")
    if rev == "worktree":
        return _install_worktree(work, log, slot, head)

    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    last = _git("log", "-1", "--format=%h %s", commit, "--", "daemon", "manager", "pyproject.toml")
    last = last if len(last) <= 72 else last[:69] + "..."
    desc = f"commit {commit[:12]} (last ldawt change: {last})"
    venv = work / f"venv-ldawt{slot}"
    stamp = venv / "ldawt-commit"
    stamp_text = f"{commit} editable-snapshot, compiled"
    if stamp.exists() and stamp.read_text() == stamp_text:
        return venv / "bin" / "ldawt-manager", desc
    src_root = work / f"ldawt-src{slot}"
    shutil.rmtree(src_root, ignore_errors=True)  # keep one snapshot per slot only
    src = src_root / commit[:12]
    src.mkdir(parents=True)
    log(f"exporting ldawt {commit[:12]} (git archive) and installing it into {venv}")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit],
        capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True, timeout=120)
    # Editable from the frozen snapshot: subpackages are found by folder, so a package missing
    # from pyproject's explicit `packages` list does not break the measured CLI.
    res = _pip(venv, "-e", str(src))
    if res.returncode != 0:
        log(f"ldawt: pip install of {commit[:12]} failed: {res.stderr.strip()[-400:]}")
        return None, desc
    _compile(venv, src)
    stamp.write_text(stamp_text)
    return venv / "bin" / "ldawt-manager", desc


def _install_worktree(work: Path, log: Log, slot: str, head: str) -> tuple[Path | None, str]:
    """Copy the working tree's files (``git ls-files --cached --others --exclude-standard``)
    to ``ldawt-src-worktree<slot>/`` and install that copy (editable) unless it already is."""
    venv = work / f"venv-ldawt-worktree{slot}"
    src = work / f"ldawt-src-worktree{slot}"
    dirty = " + uncommitted changes" if _git("status", "--porcelain", "--", ".") else ""
    desc = f"working tree as of {time.strftime('%H:%M:%S')} (HEAD {head}{dirty}), copied"
    listed = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    shutil.rmtree(src, ignore_errors=True)
    for name in filter(None, listed):
        path = REPO / name
        if path.is_file() and not path.is_symlink():  # a deleted tracked file is still listed
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / name)
    stamp = venv / "ldawt-pyproject"
    # editable from the copy: code changes need no reinstall, new dependencies or packages do
    want = hashlib.sha256((src / "pyproject.toml").read_bytes()).hexdigest() + f" {src}"
    exe = venv / "bin" / "ldawt-manager"
    if not exe.exists() or not stamp.exists() or stamp.read_text() != want:
        log(f"installing the working tree's copy {src} into {venv} (editable)")
        res = _pip(venv, "-e", str(src))
        if res.returncode != 0:
            log(f"ldawt: pip install -e failed: {res.stderr.strip()[-400:]}")
            return None, desc
        stamp.write_text(want)
    _compile(venv, src)  # the copy is new at every run
    return exe, desc


def usable(exe: Path, log: Log) -> bool:
    """True when ``exe submit --help`` works (the CLI exists at that revision)."""
    if not exe.exists():
        log(f"ldawt: {exe} does not exist")
        return False
    try:
        res = subprocess.run([str(exe), "submit", "--help"], capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        log(f"ldawt: {exe} submit --help failed: {e}")
        return False
    if res.returncode == 0 and "--out" in res.stdout:
        return True
    tail = (res.stdout + res.stderr).strip()[-300:]
    log(f"ldawt: `{exe.name} submit --help` does not work (exit {res.returncode}): {tail!r}")
    return False


def supports(exe: Path, option: str) -> bool:
    """True when ``exe submit --help`` lists ``option`` (e.g. ``--resize-mode``)."""
    try:
        res = subprocess.run([str(exe), "submit", "--help"], capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0 and option in res.stdout


def find(
    explicit: str | None, rev: str, work: Path, log: Log, slot: str = ""
) -> tuple[Path | None, str]:
    """(ldawt-manager to run, what it is) or (None, why not); the row is skipped on None."""
    if explicit:
        exe, desc = Path(explicit), f"--ldawt-bin {explicit}"
    else:
        try:
            exe, desc = install(rev, work, log, slot)
        except subprocess.CalledProcessError as e:
            return None, f"cannot export/install ldawt at {rev}: {e}"
    if exe is None:
        return None, f"installing ldawt ({desc}) failed"
    if not usable(exe, log):
        return None, f"`ldawt-manager submit` is not available at {desc}"
    return exe, desc
