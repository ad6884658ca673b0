"""Built-in toy data sets (the examples of the original exact-EM paper)."""

import numpy as np

from ._validation import as_count


def wave(n=1000, noise=0.1, seed=None):
    """t ~ N(0, 4), x = (t, cos(1.4 t)) + N(0, noise^2 I): a curve in the plane, (n, 2)."""
    n = as_count(n, "n")
    rng = np.random.default_rng(seed)
    t = rng.normal(0.0, 2.0, size=n)
    return np.stack([t, np.cos(1.4 * t)], axis=1) + noise * rng.standard_normal((n, 2))


def circle(n=1000, noise=0.1, seed=None):
    """Points on the unit circle plus N(0, noise^2 I), (n, 2)."""
    n = as_count(n, "n")
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0.0, 2 * np.pi, size=n)
    return np.stack([np.cos(angle), np.sin(angle)], axis=1) + noise * rng.standard_normal((n, 2))
