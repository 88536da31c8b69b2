"""Process-wide memory settings of ldawt processes (why: bench/RESULTS.md). Each check runs in a
fresh interpreter, since both settings are fixed for a process once made."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest
from manager_support import run_python


def env_without_arrow_pool() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}


POOL_AFTER_IMPORT = "import {module}, pyarrow; print(pyarrow.default_memory_pool().backend_name)"


@pytest.mark.parametrize("module", ["ldawt.manager.cli", "ldawt.daemon.library"])
def test_arrow_uses_jemalloc_in_ldawt_processes(module: str) -> None:
    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        pytest.skip("this pyarrow is built without jemalloc")
    code = POOL_AFTER_IMPORT.format(module=module)
    assert run_python(code, env_without_arrow_pool()) == "jemalloc"


def test_a_users_arrow_pool_setting_wins() -> None:
    env = {**env_without_arrow_pool(), "ARROW_DEFAULT_MEMORY_POOL": "system"}
    assert run_python(POOL_AFTER_IMPORT.format(module="ldawt.manager.cli"), env) == "system"


# A glibc chunk's size word, just before the pointer malloc returns, has bit 2 set when the
# chunk is a mapping of its own (IS_MMAPPED).
TLS_BUFFERS_MAPPED = """
import ctypes
from ldawt.daemon.runtime import TLS_READ_BUFFER, keep_tls_buffers_mapped

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def is_mapped(block):
    return bool(ctypes.c_size_t.from_address(block - ctypes.sizeof(ctypes.c_size_t)).value & 2)

if {tune}:
    keep_tls_buffers_mapped()
# Free heap chunks that large, left by the imports (their size and number shift with any
# change to the imported code), would serve the first blocks whatever the threshold: use them
# up first, as a long-running daemon's first connections do.
held = []
for _ in range(64):
    held.append(libc.malloc(TLS_READ_BUFFER))
    if is_mapped(held[-1]):
        break
libc.free(libc.malloc(TLS_READ_BUFFER))  # one connection closed
print([is_mapped(libc.malloc(TLS_READ_BUFFER)) for _ in range(4)])  # the next ones open
"""


@pytest.mark.skipif(
    not hasattr(os, "confstr") or not os.confstr("CS_GNU_LIBC_VERSION"), reason="glibc only"
)
def test_tls_read_buffers_stay_in_their_own_mappings() -> None:
    # The premise: left alone, glibc serves them from the heap once one has been freed.
    assert run_python(TLS_BUFFERS_MAPPED.format(tune=False)) == str([False] * 4)
    assert run_python(TLS_BUFFERS_MAPPED.format(tune=True)) == str([True] * 4)


# A reference cycle (as an exception and its traceback make) is freed by the cycle collector
# only; how soon depends on the young generation's threshold, counted in new container objects
# still alive.
CYCLES_COLLECTED = """
import gc, weakref
from ldawt.daemon.runtime import get_runtime

class Node:
    pass

def cycle():
    node = Node()
    node.self = node
    return weakref.ref(node)

if {runtime}:
    get_runtime()
gc.collect()
found = []
for alive in (5_000, 30_000):
    ref = cycle()
    kept = [[] for _ in range(alive)]
    found.append(ref() is None)
    del kept
print(found)
"""


@pytest.mark.parametrize(("runtime", "collected"), [(False, [True, True]), (True, [False, True])])
def test_the_runtime_collects_cycles_after_more_new_objects(
    runtime: bool, collected: list[bool]
) -> None:
    """Thousands of objects of requests in flight do not start a collection each (why:
    ``collect_cycles_less_often``), and cycles are still collected without being asked."""
    assert run_python(CYCLES_COLLECTED.format(runtime=runtime)) == str(collected)
