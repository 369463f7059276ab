"""Let the C allocator keep freed memory for reuse (glibc only; the command line's setting).

The pipeline's iterative steps allocate and free arrays of 100 MB and more many times per
second (FFT outputs, temporaries). glibc serves every allocation above 32 MB with a fresh
``mmap`` and returns it to the system on ``free``, so each new array costs one page fault per
4 KiB page while the kernel zero-fills it. On the 1 mm GRE head this was 43 s of system time
in a 95 s ``chimap run`` (``benchmarks/bench_pipeline.py``). With ``M_MMAP_MAX = 0`` large
arrays come from the heap, and a high ``M_TRIM_THRESHOLD`` keeps freed heap memory mapped, so
the next array of the same size reuses pages that are already faulted in: the same run took
68 s, with identical output. The price is that freed memory is returned to the system only when
more than 2 GiB of it sit at the top of the heap (peak resident memory 3.7 -> 4.1 GB there).

This changes the whole process, so only the ``chimap`` command applies it
(:func:`chimap.cli.console_main`); a Python program that wants it calls
:func:`retain_freed_memory` itself, early.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # bytes; mallopt takes a C int
_OPT_OUT = "CHIMAP_SYSTEM_MALLOC"


def retain_freed_memory() -> bool:
    """Serve large arrays from the heap and keep freed memory mapped for reuse (glibc).

    Does nothing where the C library is not glibc, where the environment variable
    ``CHIMAP_SYSTEM_MALLOC`` is set (to any value), or where the user tuned malloc through
    ``MALLOC_MMAP_MAX_`` or ``MALLOC_TRIM_THRESHOLD_`` already.

    Returns
    -------
    bool
        Whether both settings were applied.
    """
    if not sys.platform.startswith("linux") or os.environ.get(_OPT_OUT) is not None:
        return False
    if "MALLOC_MMAP_MAX_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only: musl has no such symbol
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success
    return bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)) and bool(mallopt(_M_MMAP_MAX, 0))
