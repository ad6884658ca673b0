"""Hypothesis profiles. Locally each run explores new random examples (and replays any failure
it has stored); with HYPOTHESIS_PROFILE=ci, as `.ci/run` sets, the examples are derived from
the tests themselves, so CI on a clean clone sees the same examples every time."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
