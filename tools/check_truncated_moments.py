"""exactem.gauss.polytope_moments in S = 1 (an interval under N(mu, sd^2)) against 80-digit
closed forms: the log mass, the conditional mean and the conditional variance, each relative to
itself, for short intervals far out and for far tails, where the variance is tiny against the
mean squared. Needs mpmath (not a dependency of exactem).

    python tools/check_truncated_moments.py
"""

import mpmath as mp
import numpy as np

from exactem import gauss

mp.mp.dps = 80

CASES = [(40, 41, 0, 1), (40, np.inf, 0, 1), (5, 5.2, 0, 1), (3, 3.5, 1, 0.1), (-np.inf, -30, 0, 1), (4.0, 4.1, 0, 1),
         (3.99, 50, 0, 1), (8, 8.3, 0, 1), (100, 100.5, 0, 1), (12, 12.001, 0, 1), (2, 3, 0, 1), (-30, -29.9999, 0, 1)]


def reference(lo, hi, mu, sd):
    """(mass, mean, variance) from the normal tail Q(t) = erfc(t / sqrt 2) / 2, mirrored so
    that the interval lies above the mean (no cancellation in Q(a) - Q(b))."""
    a, b = (mp.mpf(lo) - mu) / sd, (mp.mpf(hi) - mu) / sd
    sign = 1
    if b <= 0:
        a, b, sign = -b, -a, -1
    Q = lambda t: mp.erfc(t / mp.sqrt(2)) / 2
    Z = Q(a) - Q(b)
    pa, pb = mp.npdf(a), mp.npdf(b)
    a_pa = 0 if a == -mp.inf else a * pa
    b_pb = 0 if b == mp.inf else b * pb
    mean_w = (pa - pb) / Z
    var_w = 1 + (a_pa - b_pb) / Z - mean_w ** 2
    return Z, mu + sd * sign * mean_w, sd ** 2 * var_w


def main():
    print(f"{'interval':>22} {'log mass err':>13} {'mean rel err':>13} {'var rel err':>12}")
    worst = 0.0
    for lo, hi, mu, sd in CASES:
        rows, offsets = [], []
        if np.isfinite(hi):
            rows.append([1.0]); offsets.append(hi)
        if np.isfinite(lo):
            rows.append([-1.0]); offsets.append(-lo)
        got = gauss.polytope_moments(np.array(rows), np.array(offsets), np.array([float(mu)]), np.array([[float(sd) ** 2]]))
        Z, mean, var = reference(lo, hi, mu, sd)
        err = [float(got.log_mass - mp.log(Z)), float((got.mean[0] - mean) / mean), float((got.cov[0, 0] - var) / var)]
        worst = max(worst, abs(err[2]))
        print(f"{f'[{lo}, {hi}] mu={mu} sd={sd}':>22} {err[0]:13.1e} {err[1]:13.1e} {err[2]:12.1e}")
    print(f"worst variance error {worst:.1e}")


if __name__ == "__main__":
    main()
