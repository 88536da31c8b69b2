"""The resources a worker offers by default: what this process may use of the machine's cores,
memory and disk, with a margin left for the system (cgroup v2 limits count, so a worker in a
container or a systemd slice offers its share, not the host's)."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

MB = 1024 * 1024


def _own_cgroup_dir() -> Path | None:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):  # cgroup v2
                return Path("/sys/fs/cgroup") / line[3:].lstrip("/")
    except OSError:
        pass
    return None


def _cgroup_value(name: str) -> str | None:
    d = _own_cgroup_dir()
    try:
        return (d / name).read_text().strip() if d else None
    except OSError:
        return None


def detect_cores() -> int:
    """Cores this process may use: CPU affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = psutil.cpu_count() or 1
    quota = (_cgroup_value("cpu.max") or "max").split()
    if len(quota) == 2 and quota[0] != "max":
        cores = min(cores, max(1, int(int(quota[0]) / int(quota[1]))))
    return max(1, cores)


def detect_memory_mb() -> int:
    """Memory to offer: physical (or the cgroup limit) minus max(512 MB, 10%) for the system."""
    total = psutil.virtual_memory().total
    limit = _cgroup_value("memory.max")
    if limit and limit.isdigit():
        total = min(total, int(limit))
    margin = max(512 * MB, total // 10)
    return max(256, (total - margin) // MB)


def existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest existing parent: a workspace not created yet lives on that file
    system."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def detect_disk_mb(workspace: Path) -> int:
    """Free disk under the workspace minus max(1 GB, 5% of the file system)."""
    usage = psutil.disk_usage(str(existing_ancestor(workspace)))
    margin = max(1024 * MB, usage.total // 20)
    return max(256, (usage.free - margin) // MB)
