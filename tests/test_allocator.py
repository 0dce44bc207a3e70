"""dcsim.allocator.steady: with glibc's fixed thresholds, memory a process frees and allocates again stays mapped
(no page faults for it), where glibc's defaults return it and fault it in again; a user's own settings are kept."""

import os
import platform
import subprocess
import sys

import pytest

from dcsim import allocator

ROUNDS = """
import resource, sys, torch
from dcsim import allocator
if sys.argv[1] == "steady":
    print(allocator.steady())
def round_():  # 40 tensors of 2 MiB, written, then freed
    ts = [torch.ones(1 << 19) for _ in range(40)]
    del ts
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    round_()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = 5 * 40 * (2 << 20) // 4096
"""Pages the five measured rounds write: each faults in again if its memory went back to the system."""

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's thresholds"
)


def _run(mode: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in allocator.VARIABLES} | env
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode], env=clean, capture_output=True, text=True, check=True)
    return out.stdout.split()


@glibc_only
def test_steady_thresholds_keep_freed_memory_mapped():
    *said, faults = _run("steady")
    assert " ".join(said) == "glibc, fixed thresholds (mmap 32 MiB, trim 512 MiB)"
    assert int(faults) < PAGES // 20
    (faults,) = _run("defaults")  # what the thresholds prevent: glibc returns the freed heap and faults it in again
    assert int(faults) > PAGES // 2


@glibc_only
def test_settings_of_the_environment_are_kept():
    *said, faults = _run("steady", MALLOC_TRIM_THRESHOLD_="1")
    assert " ".join(said) == "set by the environment (MALLOC_TRIM_THRESHOLD_=1)"
    assert int(faults) > PAGES // 2  # a trim threshold of 1 byte: every round faults in again
