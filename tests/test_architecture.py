"""The package's shape: no import cycles inside ldawt, and the manager takes little from the
daemon (the shard contract, the engines' entry points, worker resources, metrics helpers)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"ldawt.daemon": REPO / "daemon", "ldawt.manager": REPO / "manager"}
# What the manager may import from the daemon, and why.
MANAGER_USES_FROM_DAEMON = {
    "ldawt.daemon",  # sets Arrow's allocator before pyarrow loads
    "ldawt.daemon.contract",  # the shard contract
    "ldawt.daemon.storage",  # shard files at a URL (object storage)
    "ldawt.daemon.transform.options",  # the choices of the contract's transform options
    "ldawt.daemon.shard",  # the local engine runs shards in its own processes
    "ldawt.daemon.library",  # the TaskVine engine installs the library
    "ldawt.daemon.fetcher.probe",  # estimate's header-only requests, under a job's limits
    "ldawt.daemon.fetcher.dnsshare",  # the local engine serves its processes one DNS cache
    "ldawt.daemon.worker.resources",  # sizing local TaskVine workers and local processes
    "ldawt.daemon.metrics",  # one registry and endpoint helper for both sides
}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every ldawt module ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # "from X import Y" names module X.Y when there is one, else something in X
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        imported.update(t for t in targets if t in modules and t != name)
    return imported


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_import_cycle_inside_ldawt():
    graph = _graph()
    assert len(graph) > 40  # the walk found the package
    state: dict[str, str] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, cycles


def test_the_manager_takes_little_from_the_daemon():
    graph = _graph()
    used = {
        target
        for name, targets in graph.items()
        if name.startswith("ldawt.manager")
        for target in targets
        if target.startswith("ldawt.daemon")
    }
    assert used <= MANAGER_USES_FROM_DAEMON, sorted(used - MANAGER_USES_FROM_DAEMON)


def test_the_daemon_does_not_import_the_manager():
    graph = _graph()
    assert not {
        (name, target)
        for name, targets in graph.items()
        if name.startswith("ldawt.daemon")
        for target in targets
        if target.startswith("ldawt.manager")
    }
