"""Bounded resident memory over long runs read from disk: batch-sized buffers go back to the OS when freed.

glibc serves an allocation of at least its mmap threshold with its own mapping, given back to the
OS on free; smaller ones come from the heap, where freed space is reused only in pieces. By
default the threshold is dynamic: each mapped buffer freed raises it (up to 32 MiB on 64-bit), so
the per-layer tensors of later batches come from the heap, and the resident set of a long run
creeps up. Measured on a trace, read from disk, of 20,000 224x224 JPEGs (batch 64, one thread, 2-core
x86-64): with glibc's default the resident set wandered between 0.78 and 1.29 GB, drifting up;
with the threshold fixed at 8 MiB the peak of each 20 s window still rose from 0.88 to 1.06 GB (a
width-2 layer's tensor at batch 64 is 6.4 MB), and reached 1.56 GB at 100,000 images; fixed at
1 MiB it stayed at 0.84 GB from start to end, 3 % slower.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_MMAP_THRESHOLD = -3
"""mallopt's parameter number for the mmap threshold (glibc's malloc.h)."""
DEFAULT_THRESHOLD = 1 << 20
"""Bytes: allocations of at least this size get their own mapping (1 MiB)."""


def return_large_buffers(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process (and processes it forks).

    Returns True when the setting took effect; False, changing nothing, off Linux, with a C library
    other than glibc, or when the user set ``MALLOC_MMAP_THRESHOLD_`` in the environment (their
    setting wins). Results are unchanged either way: this only decides where freed memory goes.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 0 < threshold <= 1 << 30:
        raise ValueError(f"threshold must be an integer number of bytes in 1..2**30, got {threshold!r}")
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        gnu_get_libc_version = libc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    del gnu_get_libc_version
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold) == 1)
