"""The command's allocator setting: a freed large array stays mapped for the next one."""

import os
import subprocess
import sys

import pytest

PROBE = r"""
import sys
import numpy as np
from chimap.allocator import retain_freed_memory
applied = retain_freed_memory() if sys.argv[1] == "retain" else False

def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

before = resident()
a = np.ones(50_000_000, dtype=np.float32)  # 200 MB, above glibc's largest mmap threshold
during = resident()
del a
after = resident()
print(int(applied), during - before, after - before)
"""
SIZE = 200_000_000

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux (glibc) only")


def _probe(mode, **env):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env=dict(os.environ, **env))
    applied, during, after = (int(v) for v in out.stdout.split())
    assert during > 0.9 * SIZE  # the array was resident while it lived
    return bool(applied), after


def test_freed_array_stays_mapped_for_reuse():
    applied, after = _probe("retain")
    if not applied:
        pytest.skip("the C library is not glibc")
    assert after > 0.9 * SIZE


def test_default_malloc_returns_a_freed_array():
    _, after = _probe("system")
    assert after < 0.1 * SIZE


def test_opt_out_by_environment():
    applied, after = _probe("retain", CHIMAP_SYSTEM_MALLOC="1")
    assert not applied
    assert after < 0.1 * SIZE


def test_user_malloc_settings_are_respected():
    applied, _ = _probe("retain", MALLOC_MMAP_MAX_="65536")
    assert not applied
