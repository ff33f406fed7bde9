"""Hypothesis settings for the property tests of the parsers (tests/test_fuzzing.py).

Two profiles, chosen by the environment variable TBMIRROR_FUZZ:

- `ci` (the default): derandomized (the same inputs every run: a failure is reproducible and
  CI cannot flake) and FUZZ_CI_EXAMPLES examples per property, a few seconds each;
- `campaign`: random inputs, TBMIRROR_FUZZ_EXAMPLES examples per property (default 20,000),
  for a long hunt run by hand (docs/development/fuzzing.md).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

FUZZ_CI_EXAMPLES = 60

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=FUZZ_CI_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "campaign",
    max_examples=int(os.environ.get("TBMIRROR_FUZZ_EXAMPLES", "20000")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile(os.environ.get("TBMIRROR_FUZZ", "ci"))
