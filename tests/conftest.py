"""Hypothesis profiles. Locally each run explores new random examples (and replays any failure
it has stored); with HYPOTHESIS_PROFILE=ci, as `.ci/run` sets, the examples are derived from
the tests themselves, so CI on a clean clone sees the same examples every time."""

import os

import mpmath
import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _mpmath_precision_restored():
    """A test that sets mpmath's working precision must not change another's references."""
    dps = mpmath.mp.dps
    yield
    mpmath.mp.dps = dps
