"""Bounded resident memory over long streamed runs: large buffers go back to the OS when freed.

glibc serves an allocation of at least its mmap threshold with its own mapping, given back to the
OS on free. By default that threshold is dynamic: each such buffer freed raises it (up to 32 MiB on
64-bit), so later batch-sized tensors come from the heap instead, where freed space is reused only
in pieces. Over a streamed trace of 20,000 224x224 JPEGs (batch 64, one thread) the process's
resident set then drifted from about 0.8 GiB to 1.3 GiB; with a fixed threshold it stayed between
0.46 and 0.74 GiB for the whole run, about 5 % slower (bench/bench_scale_out.py, README).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_MMAP_THRESHOLD = -3
"""mallopt's parameter number for the mmap threshold (glibc's malloc.h)."""
DEFAULT_THRESHOLD = 8 << 20
"""Bytes: allocations of at least this size get their own mapping (8 MiB)."""


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
