"""Shared pytest hooks.

Tests marked ``taskvine`` need real TaskVine (``ndcctools.taskvine`` and ``vine_worker``). They
skip where it is missing, unless ``LDAWT_REQUIRE_TASKVINE=1`` (set by ``tests/run.sh`` inside the
Debian 13 root), where a missing TaskVine is an error rather than a silent skip.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest


def taskvine_missing() -> str | None:
    """Why real TaskVine is not usable here, or None when it is."""
    if importlib.util.find_spec("ndcctools") is None:
        return "ndcctools (TaskVine's Python package) is not importable"
    try:
        importlib.import_module("ndcctools.taskvine")
    except Exception as e:  # any import failure means "not usable"
        return f"ndcctools.taskvine does not import: {e!r}"
    if shutil.which("vine_worker") is None:
        return "vine_worker is not on PATH"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("taskvine") is None:
        return
    reason = taskvine_missing()
    if reason is None:
        return
    if os.environ.get("LDAWT_REQUIRE_TASKVINE") == "1":
        pytest.fail(f"LDAWT_REQUIRE_TASKVINE=1 but {reason}", pytrace=False)
    pytest.skip(f"needs real TaskVine: {reason} (run: bash tests/debian13/root.sh run ...)")
