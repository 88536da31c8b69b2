"""ldawt-worker's command line, run as the real console script (host side, no TaskVine needed)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from ldawt.daemon.worker.config import PASSWORD_CREDENTIAL, UsageError, WorkerConfig, check_manager
from ldawt.daemon.worker.resources import MB
from ldawt.daemon.worker.vine import build_command

SCRIPT = str(Path(sys.executable).parent / "ldawt-worker")
LDAWT_VARS = [
    "LDAWT_MANAGER",
    "LDAWT_MANAGER_NAME",
    "LDAWT_CATALOG",
    "LDAWT_PASSWORD_FILE",
    "LDAWT_SSL",
    "LDAWT_WORKSPACE",
    "LDAWT_CORES",
    "LDAWT_MEMORY_MB",
    "LDAWT_DISK_MB",
    "LDAWT_IDLE_TIMEOUT",
    "LDAWT_CONNECT_TIMEOUT",
    "LDAWT_STOP_TIMEOUT",
    "LDAWT_METRICS_PORT",
    "LDAWT_VINE_WORKER",
    "LDAWT_WORKER_DEBUG",
    "LDAWT_WORKER_EXTRA_ARGS",
]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LDAWT_")}
    env.pop("CREDENTIALS_DIRECTORY", None)
    env.pop("STATE_DIRECTORY", None)
    env.update(extra)
    return env


def worker(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SCRIPT, *args],
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def dry_run(*args: str, env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The vine_worker argv and exported variables ldawt-worker --dry-run prints."""
    r = worker("--dry-run", *args, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    exported = dict(line[len("# env ") :].split("=", 1) for line in lines[:-1])
    return shlex.split(lines[-1]), exported


def test_command_uses_vine_worker_option_names(tmp_path: Path) -> None:
    cfg = WorkerConfig(
        manager="127.0.0.1:9123",
        workspace=str(tmp_path),
        cores=3,
        memory_mb=2048,
        disk_mb=4096,
        password_file="/etc/ldawt/pw",
        ssl=True,
        idle_timeout=100,
        connect_timeout=200,
        debug="all",
        extra=["--feature", "fast"],
    )
    assert build_command(cfg, "/usr/bin/vine_worker") == [
        "/usr/bin/vine_worker",
        "--cores=3",
        "--memory=2048",
        "--disk=4096",
        f"--workspace={tmp_path / 'vine'}",
        "--idle-timeout=100",
        "--connect-timeout=200",
        "--parent-death",
        "--password=/etc/ldawt/pw",
        "--ssl",
        "--debug=all",
        "--debug-file=:stderr",
        "--feature",
        "fast",
        "127.0.0.1:9123",
    ]
    by_name = WorkerConfig(name="ldawt-.*", catalog="127.0.0.1:9097", workspace="/w")
    by_name.cores, by_name.memory_mb, by_name.disk_mb = 1, 1, 1
    argv = build_command(by_name, "vine_worker")
    assert argv[-2:] == ["-M", "ldawt-.*"]
    assert "--catalog=127.0.0.1:9097" in argv


@pytest.mark.parametrize(
    "manager,name",
    [(None, None), ("127.0.0.1:1", "x"), ("localhost", None), ("h:0", None), ("h:99999", None)],
)
def test_manager_must_be_one_valid_address_or_a_name(manager: str | None, name: str | None) -> None:
    with pytest.raises(UsageError):
        check_manager(WorkerConfig(manager=manager, name=name))


def test_env_file_variables_drive_every_option(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    env = clean_env(
        LDAWT_MANAGER="127.0.0.1:9123",
        LDAWT_PASSWORD_FILE=str(pw),
        LDAWT_SSL="yes",
        LDAWT_WORKSPACE=str(tmp_path / "ws"),
        LDAWT_CORES="5",
        LDAWT_MEMORY_MB="3000",
        LDAWT_DISK_MB="7000",
        LDAWT_IDLE_TIMEOUT="111",
        LDAWT_CONNECT_TIMEOUT="222",
        LDAWT_METRICS_PORT="9177",
        LDAWT_VINE_WORKER="/opt/tv/bin/vine_worker",
        LDAWT_WORKER_EXTRA_ARGS="--feature 'a b'",
    )
    argv, exported = dry_run(env=env)
    assert argv[0] == "/opt/tv/bin/vine_worker"
    for opt in (
        "--cores=5",
        "--memory=3000",
        "--disk=7000",
        "--idle-timeout=111",
        "--connect-timeout=222",
        f"--password={pw}",
        "--ssl",
        f"--workspace={tmp_path / 'ws' / 'vine'}",
    ):
        assert opt in argv
    assert argv[-3:] == ["--feature", "a b", "127.0.0.1:9123"]
    assert exported["LDAWT_METRICS_PORT"] == "9177"
    assert exported["LDAWT_WORKSPACE"] == str(tmp_path / "ws")
    # The library processes must start with this interpreter, which can import ldawt.
    assert exported["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)

    # Flags win over the environment.
    argv, _ = dry_run("--cores", "2", "--no-ssl", "--manager", "127.0.0.1:1", env=env)
    assert "--cores=2" in argv and "--ssl" not in argv and argv[-1] == "127.0.0.1:1"


def test_resources_are_detected_with_a_margin(tmp_path: Path) -> None:
    argv, _ = dry_run("--manager", "127.0.0.1:9", "--workspace", str(tmp_path / "new" / "ws"))
    opts = dict(a.split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    assert 1 <= int(opts["--cores"]) <= (psutil.cpu_count() or 1)
    assert 256 <= int(opts["--memory"]) < psutil.virtual_memory().total // MB
    assert 256 <= int(opts["--disk"]) < psutil.disk_usage(str(tmp_path)).free // MB
    assert not (tmp_path / "new").exists(), "a dry run must not create the workspace"


def test_systemd_credential_is_the_default_password(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / PASSWORD_CREDENTIAL).write_text("")
    env = clean_env(CREDENTIALS_DIRECTORY=str(creds), STATE_DIRECTORY=str(tmp_path / "state"))
    argv, _ = dry_run("--manager", "127.0.0.1:9", env=env)
    assert not any(a.startswith("--password") for a in argv), "empty credential = no password"
    assert f"--workspace={tmp_path / 'state' / 'vine'}" in argv
    (creds / PASSWORD_CREDENTIAL).write_text("s3cret\n")
    argv, _ = dry_run("--manager", "127.0.0.1:9", env=env)
    assert f"--password={creds / PASSWORD_CREDENTIAL}" in argv


def test_missing_vine_worker_is_a_clear_error(tmp_path: Path) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = clean_env(PATH=str(empty_bin))
    r = worker("--manager", "127.0.0.1:9", "--workspace", str(tmp_path / "ws"), env=env)
    assert r.returncode == 2
    assert "vine_worker" in r.stderr and "not found" in r.stderr
    assert "apt install coop-computing-tools python3-workqueue" in r.stderr
    assert "conda install -c conda-forge ndcctools" in r.stderr
    assert not (tmp_path / "ws").exists()
    r = worker("--manager", "127.0.0.1:9", "--vine-worker", str(tmp_path / "nope"), env=env)
    assert r.returncode == 2 and "conda install" in r.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert worker().returncode == 2  # neither --manager nor --name
    assert worker("--manager", "127.0.0.1:9", "--name", "x").returncode == 2
    assert worker("--manager", "127.0.0.1:9", "--cores", "many").returncode == 2
    empty = tmp_path / "pw"
    empty.write_text("\n")
    r = worker(
        "--manager", "127.0.0.1:9", "--password-file", str(empty), "--vine-worker", "/bin/true"
    )
    assert r.returncode == 2 and "empty" in r.stderr
    r = worker(
        "--manager",
        "127.0.0.1:9",
        "--password-file",
        str(tmp_path / "missing"),
        "--vine-worker",
        "/bin/true",
    )
    assert r.returncode == 2 and "cannot read password file" in r.stderr


def test_help_documents_every_variable_and_default() -> None:
    r = worker("--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for var in LDAWT_VARS:
        assert var in text, var
    assert text.count("default:") >= len(LDAWT_VARS) - 1  # LDAWT_SSL says "default: off" too
