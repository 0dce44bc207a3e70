"""dcsim.allocator.steady: with glibc's fixed thresholds a 16 MiB tensor comes from the heap (not a mapping of its
own) and 80 MiB of freed 2 MiB blocks stay with the process; settings the environment makes are kept. Read from
glibc's ``mallinfo2`` in fresh processes. (How glibc's adaptive defaults behave varies from run to run, the reason
for steady: no test here relies on them.)"""

import os
import platform
import subprocess
import sys

import pytest

from dcsim import allocator

PROBE = """
import ctypes, torch
from dcsim import allocator
print(allocator.steady())
class Info(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
before = libc.mallinfo2().hblkhd
big = torch.ones(1 << 22)  # 16 MiB
mapped = libc.mallinfo2().hblkhd - before  # bytes in blocks mapped on their own for it
del big
blocks = [torch.ones(1 << 19) for _ in range(40)]  # 40 x 2 MiB, written, then freed
del blocks
print(mapped, libc.mallinfo2().fordblks)  # and the free bytes the heap keeps
"""
MIB = 1 << 20


def _glibc_with_mallinfo2() -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    return hasattr(ctypes.CDLL(None), "mallinfo2")


pytestmark = pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="glibc's thresholds, read by mallinfo2")


def _probe(**env: str) -> tuple[str, int, int]:
    clean = {k: v for k, v in os.environ.items() if k not in allocator.VARIABLES} | env
    out = subprocess.run([sys.executable, "-c", PROBE], env=clean, capture_output=True, text=True, check=True)
    said, numbers = out.stdout.strip().rsplit("\n", 1)
    mapped, kept = map(int, numbers.split())
    return said, mapped, kept


def test_steady_thresholds_serve_large_tensors_from_the_heap_and_keep_freed_memory():
    said, mapped, kept = _probe()
    assert said == "glibc, fixed thresholds (mmap 32 MiB, trim 512 MiB)"
    assert mapped == 0
    assert kept >= 80 * MIB


def test_settings_of_the_environment_are_kept():
    """The control: under the environment's fixed 128 KiB mmap threshold steady changes nothing and the 16 MiB
    tensor is mapped on its own, so the check above can fail."""
    said, mapped, _ = _probe(MALLOC_MMAP_THRESHOLD_="131072")
    assert said == "set by the environment (MALLOC_MMAP_THRESHOLD_=131072)"
    assert mapped >= 16 * MIB
