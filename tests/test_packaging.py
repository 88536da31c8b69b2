"""The wheel carries every package of the source tree (the package list is explicit, because
the folders daemon/ and manager/ are mapped under the ldawt namespace)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FOLDERS = {"daemon": "ldawt.daemon", "manager": "ldawt.manager"}
UNSHIPPED = (".git", ".venv", "build", "*.egg-info", "bench", "__pycache__", "demo-out")


def source_packages() -> set[str]:
    found = set()
    for folder, name in FOLDERS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((name, *parts)))
    return found


def test_every_source_package_is_listed() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(config["packages"]) == source_packages()


def test_the_wheel_holds_every_module(tmp_path: Path) -> None:
    # a clean copy: a build/ folder left in the work tree would leak stale files into the wheel
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*UNSHIPPED))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("ldawt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, name in FOLDERS.items():
        for module in (REPO / folder).rglob("*.py"):
            inside = Path(*name.split("."), module.relative_to(REPO / folder)).as_posix()
            assert inside in names, inside
