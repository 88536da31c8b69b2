"""The bench venv (bench/.work/venv-bench): Pillow, aiohttp, uvloop, psutil, pyarrow, aiofiles.

Scripts call :func:`reexec_in_bench_venv` first; it creates or updates the venv when
bench/requirements.txt changed and re-executes the script with the venv's Python. Stdlib only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import venv
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent / "requirements.txt"


def reexec_in_bench_venv(script: Path, work: Path) -> None:
    """Return if already running in WORK/venv-bench; otherwise prepare it and exec into it."""
    reexec_in_venv(script, work / "venv-bench", REQUIREMENTS.read_text())


def reexec_in_venv(script: Path, venv_dir: Path, requirements: str) -> None:
    """Return if already running in ``venv_dir``; otherwise create or update it when
    ``requirements`` (a requirements file's text) changed, and re-execute the script there."""
    if Path(sys.prefix).resolve() == venv_dir.resolve():
        return
    stamp = venv_dir / "requirements.stamp"
    if not stamp.exists() or stamp.read_text() != requirements:
        print(f"[bench {time.strftime('%H:%M:%S')}] preparing {venv_dir}", flush=True)
        if not (venv_dir / "bin" / "python").exists():
            venv.EnvBuilder(with_pip=True).create(venv_dir)
        listed = venv_dir / "requirements.txt"
        listed.write_text(requirements)
        pip = [str(venv_dir / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run(
            [*pip, "--disable-pip-version-check", "-r", str(listed)],
            check=True,
            timeout=1800,
        )
        stamp.write_text(requirements)
    python = str(venv_dir / "bin" / "python")
    os.execv(python, [python, str(script.resolve()), *sys.argv[1:]])
