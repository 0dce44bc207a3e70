"""The sanitized build is live (run by .ci/sanitize, which sets DCSIM_SANITIZER_PROBE).

The positive controls run the test-only ``sanitizer_probe`` (tests/native/sanitizer_probe.cpp,
built with the same sanitizer flags as the sanitized ``dcsim._core``): a planted heap read one
past the end must be reported by AddressSanitizer, a planted signed overflow by
UndefinedBehaviorSanitizer, and the clean run must pass. The tests beside these in that run
import the sanitized module, which is checked here too. Skipped in an ordinary test run.
"""

import os
import subprocess
from pathlib import Path

import pytest

PROBE = os.environ.get("DCSIM_SANITIZER_PROBE")
pytestmark = pytest.mark.skipif(not PROBE, reason="sanitized build only (bash .ci/sanitize)")


def _probe(mode: str) -> subprocess.CompletedProcess:
    assert Path(PROBE).is_file(), f"DCSIM_SANITIZER_PROBE={PROBE} is not a file"
    return subprocess.run([PROBE, mode], capture_output=True, text=True, timeout=60)


def test_clean_probe_passes():
    run = _probe("clean")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "sum 36", run.stdout


def test_asan_reports_planted_heap_read():
    run = _probe("heap-read")
    assert run.returncode != 0
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in run.stderr, run.stderr
    assert "READ of size 4" in run.stderr, run.stderr


def test_ubsan_reports_planted_overflow():
    run = _probe("overflow")
    assert run.returncode != 0
    assert "runtime error: signed integer overflow" in run.stderr, run.stderr


def test_tests_import_the_sanitized_module():
    from dcsim import _core

    assert Path(_core.__file__).resolve().is_relative_to(Path(PROBE).resolve().parent)
    maps = Path("/proc/self/maps").read_text()
    assert "libasan" in maps and "libubsan" in maps
