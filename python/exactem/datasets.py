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


def digits(return_labels=False):
    """scikit-learn's bundled 8x8 handwritten digits, scaled to [0, 1].

    The 1797 images ship inside scikit-learn (nothing is downloaded); each pixel is an integer
    0..16, divided here by 16.

    Parameters
    ----------
    return_labels : bool
        Also return the digit (0..9) of each image.

    Returns
    -------
    X : ndarray of shape (1797, 64), float64 in [0, 1]
    y : ndarray of shape (1797,), int, only when ``return_labels``

    Examples
    --------
    >>> import exactem
    >>> X, y = exactem.datasets.digits(return_labels=True)
    >>> X.shape, float(X.min()), float(X.max()), int(y[0])
    ((1797, 64), 0.0, 1.0, 0)
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("exactem.datasets.digits needs scikit-learn: pip install scikit-learn") from None
    bunch = load_digits()
    X = np.ascontiguousarray(bunch.data, dtype=np.float64) / 16.0
    if return_labels:
        return X, np.asarray(bunch.target)
    return X


def train_test_split(X, test_fraction=0.25, seed=0, labels=None):
    """A seeded random split of the rows of X (scikit-learn's ``train_test_split``).

    Parameters
    ----------
    X : array-like of shape (n, d)
    test_fraction : float in (0, 1)
        Share of the rows held out (rounded up, as scikit-learn does).
    seed : int
        The same seed gives the same split.
    labels : array-like of shape (n,), optional
        Split alongside X.

    Returns
    -------
    X_train, X_test : ndarrays
    y_train, y_test : ndarrays, only when ``labels`` is given

    Examples
    --------
    >>> import numpy as np, exactem
    >>> X_train, X_test = exactem.datasets.train_test_split(np.zeros((10, 2)), test_fraction=0.25, seed=0)
    >>> X_train.shape, X_test.shape
    ((7, 2), (3, 2))
    """
    try:
        from sklearn.model_selection import train_test_split as split
    except ImportError:
        raise ImportError("exactem.datasets.train_test_split needs scikit-learn: pip install scikit-learn") from None
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D array (n_samples, n_features); got shape {X.shape}")
    if isinstance(test_fraction, bool) or not (0.0 < float(test_fraction) < 1.0):
        raise ValueError(f"test_fraction must be a number strictly between 0 and 1; got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer; got {seed!r}")
    n_test = int(np.ceil(float(test_fraction) * len(X)))
    if n_test < 1 or n_test > len(X) - 1:
        raise ValueError(f"test_fraction={test_fraction} of {len(X)} rows leaves an empty train or test set")
    arrays = (X,) if labels is None else (X, np.asarray(labels))
    if labels is not None and len(arrays[1]) != len(X):
        raise ValueError(f"labels has {len(arrays[1])} entries for {len(X)} rows of X")
    return split(*arrays, test_size=float(test_fraction), random_state=int(seed))
