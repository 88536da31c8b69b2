"""``ldawt-worker install-service``: install ldawt-worker as a systemd service.

The unit files exist once, in the repository's ``systemd/`` folder, which the wheel ships as
the package ``ldawt.systemd``. The installer writes them as they are except for ``ExecStart=``,
which runs this ldawt-worker; where the environment file and the password go, it reads from the
unit itself (``EnvironmentFile=``, ``LoadCredential=``), so the two cannot disagree.
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
from importlib import resources
from pathlib import Path

from ..contract import write_text_atomically
from .config import (
    UsageError,
    WorkerConfig,
    add_worker_options,
    check_manager,
    check_password_file,
)

UNIT_PACKAGE = "ldawt.systemd"
WORKER_UNIT = "ldawt-worker.service"
WORKER_TEMPLATE = "ldawt-worker@.service"
UNIT_DIR = "/etc/systemd/system"

# --- unit files ------------------------------------------------------------------------------


def shipped_unit(name: str) -> str:
    """The text of the unit file ``name`` shipped with ldawt (the repository's systemd/NAME)."""
    return resources.files(UNIT_PACKAGE).joinpath(name).read_text(encoding="utf-8")


def unit_setting(text: str, key: str) -> str:
    """The value of the one ``key=`` line of a unit's text."""
    values = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]
    if len(values) != 1:
        raise ValueError(f"the unit has {len(values)} {key}= lines, not one")
    return values[0]


def with_exec_start(text: str, program: str) -> str:
    """A unit's ``text`` with the program its ExecStart= runs replaced by ``program`` (the
    arguments stay)."""
    _, sep, args = unit_setting(text, "ExecStart").partition(" ")
    lines = [
        f"ExecStart={program}{sep}{args}" if line.startswith("ExecStart=") else line
        for line in text.splitlines()
    ]
    return "\n".join(lines) + "\n"


def worker_unit(exec_start: str, template: bool = False) -> str:
    """``ldawt-worker.service`` (or, with ``template``, ``ldawt-worker@.service``) running
    ``exec_start``."""
    return with_exec_start(shipped_unit(WORKER_TEMPLATE if template else WORKER_UNIT), exec_start)


def installed_path(root: Path, unit_path: str, instance: str | None) -> Path:
    """Where a path the unit names lies under ``root``, ``%i`` being the instance."""
    if instance:
        unit_path = unit_path.replace("%i", instance)
    return root / unit_path.lstrip("/")


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


def env_file_text(ns: argparse.Namespace) -> str:
    """The environment file for the options given (those not given are left to the defaults)."""
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
    """One step of the installation, printed (``describe``) before it is ``run``."""

    describe: str
    run: Callable[[], None]


def _write(path: Path, text: str, mode: int) -> Callable[[], None]:
    return lambda: write_text_atomically(path, text, mode)


def _run(argv: list[str]) -> Callable[[], None]:
    def go() -> None:
        subprocess.run(argv, check=True, timeout=120)

    return go


def this_executable() -> str:
    """The ldawt-worker running now, which the unit's ExecStart= will run."""
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
    """What ``install-service`` does for the options ``ns``, in order; nothing done yet."""
    root = Path(ns.root).absolute()
    exec_path = ns.exec_path or this_executable()
    if not os.path.isabs(exec_path):
        raise UsageError(f"--exec must be an absolute path, got {exec_path}")
    inst = ns.instance
    unit_file = WORKER_TEMPLATE if inst else WORKER_UNIT
    unit_name = f"ldawt-worker@{inst}.service" if inst else WORKER_UNIT
    unit_path = root / UNIT_DIR.lstrip("/") / unit_file
    unit_text = worker_unit(exec_path, template=bool(inst))
    env_path = installed_path(root, unit_setting(unit_text, "EnvironmentFile"), inst)
    env_text = env_file_text(ns)
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
        credential = unit_setting(unit_text, "LoadCredential").partition(":")[2]
        pw_path = installed_path(root, credential, inst)
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
    """``ldawt-worker install-service [options]``: print each action, and do it unless
    ``--dry-run``."""
    ns = install_parser().parse_args(argv)
    check_manager(WorkerConfig(manager=ns.manager, name=ns.name))
    for action in plan(ns):
        print(("would " if ns.dry_run else "") + action.describe, flush=True)
        if not ns.dry_run:
            action.run()
    return 0
