"""Independent numpy references the tests compare exactem against."""

import numpy as np
from scipy.optimize import linprog


def forward(weights, biases, slopes, Z):
    """Plain numpy forward pass and activation patterns (n, H)."""
    h = np.asarray(Z, dtype=float)
    patterns = []
    for layer, (w, b) in enumerate(zip(weights, biases)):
        h = h @ np.asarray(w).T + b
        if layer < len(weights) - 1:
            patterns.append(h >= 0)
            h = np.where(h >= 0, h, slopes[layer] * h)
    P = np.concatenate(patterns, axis=1) if patterns else np.zeros((len(h), 0), dtype=bool)
    return h, P


def row_keys(P):
    """Hashable keys of the rows of a boolean matrix."""
    packed = np.packbits(np.asarray(P, dtype=bool), axis=1)
    return [row.tobytes() for row in packed]


def facet_is_needed(G, h, i):
    """True when dropping row i of {G z <= h} makes the set larger (scipy's HiGHS LP)."""
    others = np.delete(np.arange(len(h)), i)
    # A huge box keeps the LP bounded (HiGHS can misreport unbounded problems as infeasible);
    # a row the box alone makes redundant would be at distance 1e7, far beyond any test net.
    res = linprog(-G[i], A_ub=G[others], b_ub=h[others], bounds=[(-1e7, 1e7)] * G.shape[1], method="highs")
    assert res.status == 0, res.message
    return -res.fun > h[i] + 1e-7 * (1 + abs(h[i]))
