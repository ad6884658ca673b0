"""Input checks shared by the public classes: each raises ValueError saying what to fix, before any
work is done.

What counts as a number: data (points X, Z, x) may be given as floating-point, integer or boolean
arrays (booleans as 0/1, as numpy and scikit-learn treat them), in any byte order and memory
layout; parameters (weights, biases, noise variances, tolerances) must be floating-point or
integer, because a boolean there is almost certainly a mistake. Complex values are refused
rather than silently losing their imaginary part, and so are object, string, date and structured
arrays (numpy would turn the string "0.1" into 0.1, which hides a bug in the caller).
"""

import numbers

import numpy as np

#: numpy dtype kinds accepted as real numbers: floating point, signed and unsigned integers.
_REAL_KINDS = "fiu"


def as_real_array(value, name, allow_bool=False):
    """``value`` as a float64 array (any shape, not necessarily contiguous), or a ValueError if its
    entries are not real numbers (complex, object, string, ... arrays; bool unless ``allow_bool``)."""
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    kinds = _REAL_KINDS + ("b" if allow_bool else "")
    if arr.dtype.kind not in kinds:
        if arr.dtype.kind == "c":
            why = "complex values are not supported (pass the real part explicitly if that is what you mean)"
        elif arr.dtype.kind == "b":
            why = "booleans are not accepted here"
        else:
            why = f"its dtype is {arr.dtype}"
        raise ValueError(f"{name} must contain real numbers (a float or integer array); {why}")
    return arr.astype(np.float64, copy=False)


def _all_finite(arr, rows=4096):
    """Whether every entry is finite, checked ``rows`` rows at a time: the check's own boolean
    array stays small (at 60000 x 784 one for the whole array is 47 MB)."""
    return all(np.isfinite(arr[start:start + rows]).all() for start in range(0, len(arr), rows))


def as_points(Z, dim, name="Z"):
    """A C-contiguous float64 array of shape (n, dim), or a ValueError saying why not."""
    arr = as_real_array(Z, name, allow_bool=True)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (n, {dim}); got an array with shape {arr.shape}")
    if arr.shape[1] != dim:
        raise ValueError(f"{name} must have shape (n, {dim}); got {arr.shape}")
    if not _all_finite(arr):
        raise ValueError(f"{name} contains NaN or infinite values")
    # Aligned too: an array unpickled from a byte stream (Dask moves data that way) can be
    # C-contiguous but unaligned, which the engine cannot view in place.
    return np.require(arr, requirements=["C", "A"])


def as_real(value, name, positive=False):
    """A finite float (``> 0`` if ``positive``), or a ValueError: strings, complex numbers, booleans
    and arrays of more than one entry are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.ndarray, np.generic)):
        raise ValueError(f"{name} must be a real number; got {value!r} of type {type(value).__name__}")
    arr = as_real_array(value, name)
    if arr.ndim != 0:
        raise ValueError(f"{name} must be a single number; got an array of shape {arr.shape}")
    number = float(arr)
    if not np.isfinite(number) or (positive and not number > 0):
        raise ValueError(f"{name} must be a {'positive' if positive else 'finite'} number; got {value!r}")
    return number


def as_count(value, name, minimum=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def as_seed(value, name="seed"):
    """A seed for the engine's generators: an integer in [0, 2^64)."""
    seed = as_count(value, name, minimum=0)
    if seed >= 2**64:
        raise ValueError(f"{name} must be an integer in [0, 2**64); got {value!r}")
    return seed
