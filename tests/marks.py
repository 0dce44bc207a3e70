"""Test marks shared by the test modules."""

import os

import pytest

SLOW = pytest.mark.skipif(os.environ.get("DCSIM_SLOW") != "1", reason="a long test: set DCSIM_SLOW=1 (not run in CI)")
"""With ``pytest.mark.slow``: a test CI leaves out for time; ``DCSIM_SLOW=1`` runs it."""
