"""Built-in toy data sets (the examples of the original exact-EM paper)."""

import numpy as np

from ._validation import as_count


def wave(n=1000, noise=0.1, seed=None):
    """A noisy cosine curve in the plane.

    ``t ~ N(0, 4)``, ``x = (t, cos(1.4 t)) + N(0, noise^2 I)``.

    Parameters
    ----------
    n : int, default=1000
        Number of points.
    noise : float, default=0.1
        Standard deviation of the added Gaussian noise.
    seed : int, numpy Generator or None, default=None
        Seed of the draws.

    Returns
    -------
    X : ndarray of shape (n, 2)

    Examples
    --------
    >>> from exactem import datasets
    >>> datasets.wave(500, noise=0.1, seed=0).shape
    (500, 2)
    """
    n = as_count(n, "n")
    rng = np.random.default_rng(seed)
    t = rng.normal(0.0, 2.0, size=n)
    return np.stack([t, np.cos(1.4 * t)], axis=1) + noise * rng.standard_normal((n, 2))


def circle(n=1000, noise=0.1, seed=None):
    """Points on the unit circle plus Gaussian noise.

    The angle is uniform on ``[0, 2 pi)``; ``x = (cos, sin) + N(0, noise^2 I)``.

    Parameters
    ----------
    n : int, default=1000
        Number of points.
    noise : float, default=0.1
        Standard deviation of the added Gaussian noise.
    seed : int, numpy Generator or None, default=None
        Seed of the draws.

    Returns
    -------
    X : ndarray of shape (n, 2)

    Examples
    --------
    >>> from exactem import datasets
    >>> datasets.circle(200, seed=0).shape
    (200, 2)
    """
    n = as_count(n, "n")
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0.0, 2 * np.pi, size=n)
    return np.stack([np.cos(angle), np.sin(angle)], axis=1) + noise * rng.standard_normal((n, 2))
