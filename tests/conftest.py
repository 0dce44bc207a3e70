"""Shared test configuration: hypothesis profiles for the property tests (tests/test_properties.py).

``ci`` (default): derandomized (the same examples on every run), a bounded number of examples,
no per-example deadline (shared CI machines have noisy timings) and no example database.
``long``: 100 times the examples of ``ci``. Choose with DCSIM_HYPOTHESIS_PROFILE=long.
"""

import os

from hypothesis import HealthCheck, settings

CI_EXAMPLES = 30
settings.register_profile(
    "ci",
    max_examples=CI_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("long", settings.get_profile("ci"), max_examples=100 * CI_EXAMPLES)
settings.load_profile(os.environ.get("DCSIM_HYPOTHESIS_PROFILE", "ci"))
