"""The C allocator under torch's CPU tensors: fixed glibc thresholds, so that a run's memory stays mapped.

PyTorch's CPU tensors come from the C library's malloc. glibc maps each block above an adaptive threshold and
returns the free top of its heap to the system above another, both moved by the process's history of sizes: a
simulation that allocates and frees tens of MB per call (27-row activations, batch 256) then pays page faults on
the same memory again and again, in some processes and not in others. On the project's 2-core EPYC that made the
small CNN's no-DC run at batch 256 2.1x slower (16.7 against 7.6 ms per inference) and the ResNet-18's batch-1
times 10-25% slower in some processes (docs/results/table2-cpu.md). :func:`steady` fixes both thresholds for
this process (glibc's ``mallopt``), as the variables ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``
would at its start: at most TRIM_THRESHOLD bytes of freed heap stay with the process. Results never change.
"""

from __future__ import annotations

import ctypes
import os
import platform

MMAP_THRESHOLD = 32 << 20
"""Blocks of at least this many bytes are mapped on their own (glibc's largest allowed threshold on 64-bit)."""
TRIM_THRESHOLD = 512 << 20
"""Free heap above this many bytes at its top goes back to the system."""
VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")
"""Environment variables by which a user sets the allocator; where one is set, :func:`steady` leaves it alone."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def steady() -> str:
    """Fix glibc's mmap and trim thresholds for this process (MMAP_THRESHOLD, TRIM_THRESHOLD), unless the
    environment sets the allocator (VARIABLES) or the C library is not glibc; returns what the allocator is now,
    for reports: 'glibc, fixed thresholds (...)', 'set by the environment (...)' or 'unchanged (...)'."""
    given = [f"{name}={os.environ[name]}" for name in VARIABLES if os.environ.get(name)]
    if given:
        return f"set by the environment ({', '.join(given)})"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"unchanged (C library {platform.libc_ver()[0] or 'unknown'}, not glibc)"
    libc = ctypes.CDLL(None)
    if not (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return "unchanged (glibc refused the thresholds)"
    return f"glibc, fixed thresholds (mmap {MMAP_THRESHOLD >> 20} MiB, trim {TRIM_THRESHOLD >> 20} MiB)"
