"""Input checks shared by the public classes: each raises ValueError saying what to fix."""

import numpy as np


def as_points(Z, dim, name="Z"):
    """A C-contiguous float64 array of shape (n, dim), or a ValueError saying why not."""
    arr = np.asarray(Z, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (n, {dim}); got an array with shape {arr.shape}")
    if arr.shape[1] != dim:
        raise ValueError(f"{name} must have shape (n, {dim}); got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    # Aligned too: an array unpickled from a byte stream (Dask moves data that way) can be
    # C-contiguous but unaligned, which the engine cannot view in place.
    return np.require(arr, requirements=["C", "A"])


def as_count(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)
