"""The wheel carries every package of the source tree (the package list is explicit, because
the folders daemon/, manager/ and systemd/ are mapped under the ldawt namespace), and the unit
files of systemd/ as package data that ``install-service`` finds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FOLDERS = {"daemon": "ldawt.daemon", "manager": "ldawt.manager", "systemd": "ldawt.systemd"}
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
    units = [p.name for p in (REPO / "systemd").iterdir() if p.is_file() and p.suffix != ".py"]
    assert "ldawt-worker.service" in units and "worker.env.example" in units
    for unit in units:
        assert f"ldawt/systemd/{unit}" in names, unit

    # Installed from the wheel, the installer reads the unit files shipped in it.
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "-t", str(site), str(wheel)],
        check=True,
        timeout=300,
    )
    show = (
        "from ldawt.daemon.worker import service; "
        "print(service.__file__); print(service.shipped_unit('ldawt-worker.service'), end='')"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run(
        [sys.executable, "-c", show], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    where, unit_text = r.stdout.split("\n", 1)
    assert Path(where).is_relative_to(site)
    assert unit_text == (REPO / "systemd" / "ldawt-worker.service").read_text()
