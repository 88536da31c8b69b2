"""systemd units for ldawt workers and ``ldawt-worker install-service``.

The unit texts live here so an installed wheel can write them; ``systemd/*.service`` in the
repository are the same texts rendered with the default ExecStart (a test keeps them equal;
``python -m ldawt.daemon.service DIR`` rewrites them).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .packer.manifest import write_text_atomically
from .worker import (
    PASSWORD_CREDENTIAL,
    UsageError,
    WorkerConfig,
    add_worker_options,
    check_manager,
    check_password_file,
)

DEFAULT_EXEC = "/opt/ldawt/venv/bin/ldawt-worker"
CONFIG_DIR = "/etc/ldawt"
UNIT_DIR = "/etc/systemd/system"
STOP_TIMEOUT_S = 90  # > ldawt-worker's own --stop-timeout (60 s) before it kills vine_worker

WORKER_UNIT = """\
# ldawt TaskVine worker{title_suffix}. Configure it in {env_file}
# (see worker.env.example). The manager password goes in {password_file}
# (mode 0600, root): systemd hands it to the dynamic user as a credential. The unit does not
# start without it; to run without a password (trusted networks only) add a drop-in with an
# empty "LoadCredential=" (`ldawt-worker install-service --no-password` writes one).
[Unit]
Description=ldawt TaskVine worker{title_suffix}
After=network-online.target
Wants=network-online.target
# A worker service never gives up restarting.
StartLimitIntervalSec=0

[Service]
Type=exec
EnvironmentFile={env_file}
ExecStart={exec_start}
Restart=always
RestartSec=10
# SIGTERM goes to ldawt-worker alone; it forwards it to vine_worker, which abandons its
# in-flight shards (the manager resubmits them) and exits. The rest is killed after the timeout.
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec={stop_timeout}
LoadCredential={credential}:{password_file}
DynamicUser=yes
# The workspace ($STATE_DIRECTORY) is the only writable path.
StateDirectory={state_dir}
StateDirectoryMode=0700
WorkingDirectory=%S/{state_dir}
UMask=0077
LimitNOFILE=1048576
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
CapabilityBoundingSet=
AmbientCapabilities=

[Install]
WantedBy=multi-user.target
"""

MANAGER_UNIT = """\
# ldawt manager running one long job, instance = job name. Configure it in
# {config_dir}/manager-%i.env: LDAWT_INPUT (URL table file or folder), LDAWT_OUT (job folder),
# LDAWT_SUBMIT_ARGS (more `ldawt-manager submit` options, split on spaces).
# Jobs resume, so a restart after a crash or reboot continues where the job stopped; a job
# that finished exits 0 and stays stopped.
[Unit]
Description=ldawt manager job %i
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
EnvironmentFile={config_dir}/manager-%i.env
ExecStart={manager_exec} submit --out ${{LDAWT_OUT}} $LDAWT_SUBMIT_ARGS ${{LDAWT_INPUT}}
Restart=on-failure
RestartSec=30
KillSignal=SIGTERM
TimeoutStopSec=120
DynamicUser=yes
StateDirectory=ldawt-manager/%i
WorkingDirectory=%S/ldawt-manager/%i
# The job folder must be writable: list it here as well (e.g. a drop-in with
# ReadWritePaths=/data/jobs) when it is outside the state directory.
ReadWritePaths=-/srv/ldawt
UMask=0022
LimitNOFILE=65536
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
LockPersonality=yes

[Install]
WantedBy=multi-user.target
"""


def worker_unit(exec_start: str = DEFAULT_EXEC, template: bool = False) -> str:
    """The text of ``ldawt-worker.service`` (or, with ``template``, ``ldawt-worker@.service``)."""
    suffix = "-%i" if template else ""
    return WORKER_UNIT.format(
        title_suffix=" %i" if template else "",
        env_file=f"{CONFIG_DIR}/worker{suffix}.env",
        password_file=f"{CONFIG_DIR}/worker{suffix}.password",
        exec_start=exec_start,
        stop_timeout=STOP_TIMEOUT_S,
        credential=PASSWORD_CREDENTIAL,
        state_dir="ldawt-worker/%i" if template else "ldawt-worker",
    )


def manager_unit(manager_exec: str = DEFAULT_EXEC.replace("ldawt-worker", "ldawt-manager")) -> str:
    return MANAGER_UNIT.format(config_dir=CONFIG_DIR, manager_exec=manager_exec)


def repo_units() -> dict[str, str]:
    """The files of the repository's systemd/ folder generated here."""
    return {
        "ldawt-worker.service": worker_unit(),
        "ldawt-worker@.service": worker_unit(template=True),
        "ldawt-manager@.service": manager_unit(),
    }


# --- environment files -----------------------------------------------------------------------

# Option dest -> variable written to the environment file (the password is not among them: it
# is copied to the credential file instead).
ENV_OF_OPTION = {
    "manager": "LDAWT_MANAGER",
    "name": "LDAWT_MANAGER_NAME",
    "catalog": "LDAWT_CATALOG",
    "ssl": "LDAWT_SSL",
    "workspace": "LDAWT_WORKSPACE",
    "cores": "LDAWT_CORES",
    "memory_mb": "LDAWT_MEMORY_MB",
    "disk_mb": "LDAWT_DISK_MB",
    "idle_timeout": "LDAWT_IDLE_TIMEOUT",
    "connect_timeout": "LDAWT_CONNECT_TIMEOUT",
    "stop_timeout": "LDAWT_STOP_TIMEOUT",
    "metrics_port": "LDAWT_METRICS_PORT",
    "vine_worker": "LDAWT_VINE_WORKER",
    "debug": "LDAWT_WORKER_DEBUG",
    "extra_args": "LDAWT_WORKER_EXTRA_ARGS",
}


def env_quote(value: str) -> str:
    """A value as systemd's EnvironmentFile= reads it back unchanged."""
    if value and all(c.isalnum() or c in "-_.:/@%+,=" for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def read_env_file(text: str) -> dict[str, str]:
    """Parse the subset of EnvironmentFile= syntax ``env_quote`` writes (and hand-written
    ``KEY=value`` lines): comments, blank lines, optional double or single quotes."""
    env: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"not KEY=VALUE: {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            out, i, inner = [], 0, value[1:-1]
            while i < len(inner):
                if inner[i] == "\\" and i + 1 < len(inner):
                    i += 1
                out.append(inner[i])
                i += 1
            value = "".join(out)
        elif len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def env_file_text(ns: argparse.Namespace) -> str:
    lines = ["# Written by `ldawt-worker install-service`; read by the ldawt-worker unit."]
    for dest, var in ENV_OF_OPTION.items():
        value = getattr(ns, dest, None)
        if value is None or value is False:
            continue
        lines.append(f"{var}={env_quote('1' if value is True else str(value))}")
    return "\n".join(lines) + "\n"


# --- install-service -------------------------------------------------------------------------


@dataclass
class Action:
    describe: str
    run: Callable[[], None]


def _write(path: Path, text: str, mode: int) -> Callable[[], None]:
    return lambda: write_text_atomically(path, text, mode)


def _run(argv: list[str]) -> Callable[[], None]:
    def go() -> None:
        subprocess.run(argv, check=True, timeout=120)

    return go


def this_executable() -> str:
    me = Path(sys.argv[0])
    if me.name == "ldawt-worker" and me.exists():
        return str(me.absolute())
    found = shutil.which("ldawt-worker")
    if found:
        return str(Path(found).absolute())
    raise UsageError("cannot tell where ldawt-worker is installed: pass --exec PATH")


def install_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ldawt-worker install-service",
        description="Write /etc/ldawt/worker.env from the options given, install the systemd "
        "unit with ExecStart pointing at this ldawt-worker, and `systemctl enable --now` it. "
        "Options not given are left out of the environment file (ldawt-worker's defaults "
        "apply).",
    )
    add_worker_options(p, env_defaults=False)
    s = p.add_argument_group("installation")
    s.add_argument(
        "--instance",
        help="install the template ldawt-worker@.service as ldawt-worker@INSTANCE with "
        "/etc/ldawt/worker-INSTANCE.env (several workers or managers on one machine)",
    )
    s.add_argument(
        "--exec",
        dest="exec_path",
        help="the ldawt-worker the unit runs (default: this one)",
    )
    s.add_argument(
        "--root",
        default="/",
        help="install under this directory instead of / (enables with `systemctl --root`, "
        "does not start)",
    )
    s.add_argument(
        "--no-password",
        action="store_true",
        help="run without a manager password (trusted networks only): writes a drop-in that "
        "empties the unit's LoadCredential=",
    )
    s.add_argument("--no-enable", action="store_true", help="install only; do not enable")
    s.add_argument("--dry-run", action="store_true", help="print what would be done")
    return p


def plan(ns: argparse.Namespace) -> list[Action]:
    root = Path(ns.root).absolute()
    exec_path = ns.exec_path or this_executable()
    if not os.path.isabs(exec_path):
        raise UsageError(f"--exec must be an absolute path, got {exec_path}")
    inst = ns.instance
    unit_file = "ldawt-worker@.service" if inst else "ldawt-worker.service"
    unit_name = f"ldawt-worker@{inst}.service" if inst else "ldawt-worker.service"
    stem = f"worker-{inst}" if inst else "worker"
    etc = root / CONFIG_DIR.lstrip("/")
    env_path = etc / f"{stem}.env"
    unit_path = root / UNIT_DIR.lstrip("/") / unit_file
    env_text = env_file_text(ns)
    unit_text = worker_unit(exec_start=exec_path, template=bool(inst))
    actions = [
        Action(f"write {env_path}:\n{env_text}", _write(env_path, env_text, 0o644)),
        Action(f"write {unit_path} (ExecStart={exec_path})", _write(unit_path, unit_text, 0o644)),
    ]
    if bool(ns.password_file) == bool(ns.no_password):
        raise UsageError(
            "give --password-file FILE (copied to the unit's credential file) or, on a trusted "
            "network only, --no-password"
        )
    if ns.no_password:
        dropin = unit_path.parent / f"{unit_name if inst else unit_file}.d" / "no-password.conf"
        text = "[Service]\n# No manager password: an empty assignment clears LoadCredential=.\n"
        text += "LoadCredential=\n"
        actions.append(Action(f"write {dropin}:\n{text}", _write(dropin, text, 0o644)))
    if ns.password_file:
        check_password_file(ns.password_file)
        secret = Path(ns.password_file).read_text()
        pw_path = etc / f"{stem}.password"
        actions.append(
            Action(
                f"write {pw_path} (mode 0600, from {ns.password_file})",
                _write(pw_path, secret, 0o600),
            )
        )
    if not ns.no_enable:
        if root == Path("/"):
            cmds = [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", unit_name]]
        else:
            cmds = [["systemctl", f"--root={root}", "enable", unit_name]]
        actions += [Action(f"run {shlex.join(c)}", _run(c)) for c in cmds]
    return actions


def install_service_main(argv: Sequence[str]) -> int:
    ns = install_parser().parse_args(argv)
    check_manager(WorkerConfig(manager=ns.manager, name=ns.name))
    for action in plan(ns):
        print(("would " if ns.dry_run else "") + action.describe, flush=True)
        if not ns.dry_run:
            action.run()
    return 0


def write_repo_units(directory: Path) -> None:
    for name, text in repo_units().items():
        (directory / name).write_text(text)


if __name__ == "__main__":
    write_repo_units(Path(sys.argv[1] if len(sys.argv) > 1 else "systemd"))
