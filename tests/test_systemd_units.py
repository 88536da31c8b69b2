"""The systemd units and `ldawt-worker install-service` (host side, real systemd-analyze and
systemctl --root; no running systemd needed)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from systemd_support import read_env_file

from ldawt.daemon.worker import service

REPO = Path(__file__).resolve().parents[1]
SYSTEMD = REPO / "systemd"
BIN = Path(sys.executable).parent
WORKER_SCRIPT = BIN / "ldawt-worker"
MANAGER_SCRIPT = BIN / "ldawt-manager"

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze missing (apt install systemd)"
)


def unit_settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def verify(unit: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120
    )


@needs_systemd_analyze
@pytest.mark.parametrize("name", sorted(p.name for p in SYSTEMD.glob("*.service")))
def test_systemd_analyze_verify_is_clean(tmp_path: Path, name: str) -> None:
    # verify insists the ExecStart binary exists: point the unit at the installed scripts.
    script = MANAGER_SCRIPT if name.startswith("ldawt-manager") else WORKER_SCRIPT
    text = service.with_exec_start((SYSTEMD / name).read_text(), str(script))
    unit = tmp_path / name
    unit.write_text(text)
    r = verify(unit)
    # Unknown keys and bad values are only warnings (exit 0), so stderr must be empty too.
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


@needs_systemd_analyze
def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    unit = tmp_path / "ldawt-worker.service"
    unit.write_text(service.worker_unit(str(WORKER_SCRIPT)).replace("KillMode=mixed", "KillMode=x"))
    assert "kill mode" in verify(unit).stderr.lower()
    unit.write_text(service.worker_unit(str(tmp_path / "missing" / "ldawt-worker")))
    assert verify(unit).returncode != 0


@pytest.mark.parametrize("template", [False, True])
def test_worker_unit_runs_as_a_hardened_restarting_service(template: bool) -> None:
    s = unit_settings(
        service.shipped_unit(service.WORKER_TEMPLATE if template else service.WORKER_UNIT)
    )
    assert s["Restart"] == ["always"] and s["KillSignal"] == ["SIGTERM"]
    assert int(s["TimeoutStopSec"][0]) > 60, "longer than ldawt-worker's own --stop-timeout"
    assert s["DynamicUser"] == ["yes"] and s["ProtectSystem"] == ["strict"]
    assert "ReadWritePaths" not in s, "the state directory is the only writable path"
    assert s["StateDirectory"] == (["ldawt-worker/%i"] if template else ["ldawt-worker"])
    assert int(s["LimitNOFILE"][0]) >= 65536
    assert "network-online.target" in s["After"][0] and "network-online.target" in s["Wants"][0]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert s[key] == ["yes"], key
    assert set(s["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    suffix = "-%i" if template else ""
    assert s["EnvironmentFile"] == [f"/etc/ldawt/worker{suffix}.env"]
    assert s["LoadCredential"] == [f"ldawt-password:/etc/ldawt/worker{suffix}.password"]


def test_env_files_round_trip() -> None:
    values = {"LDAWT_MANAGER": "10.0.0.1:9123", "LDAWT_WORKER_EXTRA_ARGS": '--feature "a b" \\x'}
    text = "".join(f"{k}={service.env_quote(v)}\n" for k, v in values.items())
    assert read_env_file("# c\n\n" + text) == values
    example = read_env_file((SYSTEMD / "worker.env.example").read_text())
    assert example["LDAWT_MANAGER"] == "127.0.0.1:9123"
    assert all(k.startswith("LDAWT_") for k in example)


def install(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(WORKER_SCRIPT), "install-service", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("instance", [None, "job1"])
def test_installed_unit_is_the_repository_file_but_for_execstart(
    tmp_path: Path, instance: str | None
) -> None:
    root = tmp_path / "root"
    exec_path = "/srv/ldawt/venv/bin/ldawt-worker"
    flags = ["--manager", "127.0.0.1:9", "--no-password", "--no-enable", "--root", str(root)]
    r = install(*flags, "--exec", exec_path, *(["--instance", instance] if instance else []))
    assert r.returncode == 0, r.stderr
    name = "ldawt-worker@.service" if instance else "ldawt-worker.service"
    shipped = (SYSTEMD / name).read_text()
    installed = (root / "etc/systemd/system" / name).read_text()
    changed = [
        (before, after)
        for before, after in zip(shipped.splitlines(), installed.splitlines(), strict=True)
        if before != after
    ]
    assert changed == [("ExecStart=/opt/ldawt/venv/bin/ldawt-worker", f"ExecStart={exec_path}")]
    assert installed.endswith("\n")
    # the environment file goes where the unit reads it
    env_file = unit_settings(installed)["EnvironmentFile"][0].replace("%i", instance or "")
    assert (root / env_file.lstrip("/")).is_file()


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="systemctl missing")
def test_install_service_under_a_root(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    root = tmp_path / "root"
    flags = ["--manager", "10.1.2.3:9123", "--metrics-port", "9401", "--cores", "4"]
    flags += ["--extra-args", "--feature 'x y'", "--password-file", str(pw), "--root", str(root)]

    r = install(*flags, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "would write" in r.stdout and "would run systemctl" in r.stdout
    assert not root.exists(), "a dry run writes nothing"

    r = install(*flags)
    assert r.returncode == 0, r.stderr
    env = read_env_file((root / "etc/ldawt/worker.env").read_text())
    assert env == {
        "LDAWT_MANAGER": "10.1.2.3:9123",
        "LDAWT_METRICS_PORT": "9401",
        "LDAWT_CORES": "4",
        "LDAWT_WORKER_EXTRA_ARGS": "--feature 'x y'",
    }
    secret = root / "etc/ldawt/worker.password"
    assert secret.read_text() == "s3cret\n"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    unit = root / "etc/systemd/system/ldawt-worker.service"
    assert unit_settings(unit.read_text())["ExecStart"] == [str(WORKER_SCRIPT)]
    wants = root / "etc/systemd/system/multi-user.target.wants/ldawt-worker.service"
    assert wants.is_symlink() and os.readlink(wants).endswith("ldawt-worker.service")
    if shutil.which("systemd-analyze"):
        r = verify(unit)
        assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="systemctl missing")
def test_install_template_instance_without_password(tmp_path: Path) -> None:
    root = tmp_path / "root"
    r = install("--name", "ldawt-job1", "--instance", "job1", "--no-password", "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert read_env_file((root / "etc/ldawt/worker-job1.env").read_text()) == {
        "LDAWT_MANAGER_NAME": "ldawt-job1"
    }
    assert (root / "etc/systemd/system/ldawt-worker@.service").is_file()
    dropin = root / "etc/systemd/system/ldawt-worker@job1.service.d/no-password.conf"
    assert re.search(r"^LoadCredential=$", dropin.read_text(), re.M)
    wants = root / "etc/systemd/system/multi-user.target.wants/ldawt-worker@job1.service"
    assert wants.is_symlink()


def test_install_service_refuses_incomplete_settings(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    assert install("--root", root, "--no-password").returncode == 2  # no manager
    r = install("--manager", "127.0.0.1:9", "--root", root)
    assert r.returncode == 2 and "--no-password" in r.stderr  # no password decision
    r = install("--manager", "127.0.0.1:9", "--root", root, "--password-file", root + "/nope")
    assert r.returncode == 2
    # the same checks as ldawt-worker itself: a unit that could never start is not installed
    r = install("--manager", "no-port", "--root", root, "--no-password")
    assert r.returncode == 2 and "HOST:PORT" in r.stderr
    empty = tmp_path / "empty.password"
    empty.write_text("\n")
    r = install("--manager", "127.0.0.1:9", "--root", root, "--password-file", str(empty))
    assert r.returncode == 2 and "is empty" in r.stderr
    assert not Path(root).exists()
