"""Rectangle probabilities: exactem.gauss.mvn_cdf against scipy.stats.multivariate_normal.cdf
(Genz's algorithm, what users reach for), side by side in one run, and the per-call cost of
exactem.gauss.polytope_moments by dimension.

    python benches/bench_gauss.py [--batch 200] [--repeats 5] [--dims 2 3 ...] [--polytope-dims 1 2 ...]
        [--polytope-batch 2000] [--polytope-rtol 1e-3]

Accuracy: both are compared with a reference from scipy at abseps = releps = 1e-10 (exact
for S = 2 where exactem is exact). The last columns compare at equal accuracy: exactem at the
loosest rtol whose median error is at most scipy's (default settings). Both medians pool
several randomisations over the reference rectangles (scipy's unseeded runs, exactem's seeds
0, 1, 2): one run's median over 40 rectangles moves by up to 5x between seeds, which made the
matched rtol a draw. Times are medians over the repeats of one batch call (exactem, seed 0) or
the loop over the batch (scipy has no batched rectangle call), the two called in turn.
"""

import argparse

import numpy as np
from scipy import stats

from exactem import gauss
from timing import median_time, paired_median_times


# Tried from the loosest for the equal-accuracy column; the tightest is used if none matches.
MATCHING_RTOLS = [4e-5, 2e-5, 1e-5, 5e-6, 2.5e-6, 1.2e-6, 6e-7, 3e-7]
# Randomisations pooled for each side's median error in that column.
POOLED = 3


def problem(rng, s, n):
    A = rng.standard_normal((s, s))
    cov = A @ A.T / s + 0.5 * np.eye(s)
    mean = 0.3 * rng.standard_normal(s)
    lower = -rng.uniform(0.2, 2.0, (n, s))
    upper = rng.uniform(0.2, 2.0, (n, s))
    return mean, cov, lower, upper


def scipy_probabilities(mvn, lower, upper):
    """scipy's probabilities of the rectangles (rows of lower and upper): it has no batched call."""
    return np.array([mvn.cdf(u, lower_limit=l) for l, u in zip(lower, upper)])


def reference_probabilities(mean, cov, lower, upper):
    """scipy's at abseps = releps = 1e-10: the reference both sides are measured against."""
    tight = stats.multivariate_normal(mean, cov, abseps=1e-10, releps=1e-10, maxpts=5_000_000 * len(mean))
    return scipy_probabilities(tight, lower, upper)



def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dims", type=int, nargs="*", default=list(range(2, 9)), help="rectangle dimensions to run (none to skip them)")
    parser.add_argument("--polytope-dims", type=int, nargs="*", default=list(range(1, 7)),
                        help="dimensions of the polytope_moments per-call section (none to skip it)")
    parser.add_argument("--polytope-batch", type=int, default=2000, help="polyhedra per batched call in that section")
    parser.add_argument("--polytope-rtol", type=float, default=1e-3, help="rtol of that section for S >= 3")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"rectangles, batch of {args.batch}; relative errors are medians (max) against the reference")
    print(f"{'S':>2} {'scipy default':>14} {'err':>16} {'exactem rtol=1e-5':>18} {'err':>16} {'speed-up':>8}"
          f" | {'scipy 1e-7':>10} {'exactem 1e-7':>12} {'speed-up':>8}"
          f" | {'equal accuracy: exactem rtol, time, err (max) vs scipy err, speed-up over scipy default':>50}")
    for s in args.dims:
        # Seeded by S, so that a dimension's rectangles do not depend on which others run.
        mean, cov, lower, upper = problem(np.random.default_rng(s), s, args.batch)
        n_ref = min(args.batch, 40)
        reference = reference_probabilities(mean, cov, lower[:n_ref], upper[:n_ref])
        row = [f"{s:>2}"]
        results = {}
        for label, scipy_kw, rtol in [("default", {}, 1e-5), ("tight", dict(abseps=1e-7, releps=1e-7, maxpts=1_000_000 * s), 1e-7)]:
            mvn = stats.multivariate_normal(mean, cov, **scipy_kw)
            (t_scipy, t_ours), (p_scipy, (p_ours, _)) = paired_median_times(
                [lambda: scipy_probabilities(mvn, lower, upper), lambda: gauss.mvn_cdf(lower, upper, mean, cov, rtol=rtol)],
                args.repeats)
            err_scipy = np.abs(p_scipy[:n_ref] / reference - 1)
            err_ours = np.abs(p_ours[:n_ref] / reference - 1)
            results[label] = (t_scipy, err_scipy, t_ours, err_ours)
        t_s, e_s, t_o, e_o = results["default"]
        row.append(f"{t_s * 1e3:11.1f} ms {np.median(e_s):7.1e} ({e_s.max():6.1e})"
                   f" {t_o * 1e3:15.1f} ms {np.median(e_o):7.1e} ({e_o.max():6.1e}) {t_s / t_o:7.1f}x")
        t_s, e_s, t_o, e_o = results["tight"]
        row.append(f"| {t_s * 1e3:7.1f} ms {t_o * 1e3:9.1f} ms {t_s / t_o:7.1f}x")
        # At equal accuracy: the loosest of exactem's rtols whose median error over the
        # reference rectangles (pooled over seeds) is at most scipy's (pooled over runs).
        t_s, e_s, _, _ = results["default"]
        mvn = stats.multivariate_normal(mean, cov)
        e_s = np.concatenate([e_s] + [np.abs(scipy_probabilities(mvn, lower[:n_ref], upper[:n_ref]) / reference - 1)
                                      for _ in range(POOLED - 1)])
        for rtol in MATCHING_RTOLS:
            t_m, (p_m, _) = median_time(lambda: gauss.mvn_cdf(lower, upper, mean, cov, rtol=rtol), args.repeats)
            e_m = np.concatenate([np.abs(p_m[:n_ref] / reference - 1)] + [np.abs(gauss.mvn_cdf(lower[:n_ref], upper[:n_ref], mean, cov, rtol=rtol, seed=seed)[0] / reference - 1)
                                                                            for seed in range(1, POOLED)])
            if np.median(e_m) <= max(np.median(e_s), 1e-14):  # both exact in S = 2, 3
                break
        row.append(f"| {rtol:6.1e} {t_m * 1e3:7.1f} ms {np.median(e_m):7.1e} ({e_m.max():6.1e}) vs {np.median(e_s):7.1e} {t_s / t_m:7.1f}x")
        print(" ".join(row), flush=True)

    n = args.polytope_batch
    print(f"\npolytope_moments per call, inside one batched call of {n} (mass + mean + covariance)")
    for s in args.polytope_dims:
        for m in (2 * s, 4 * s):
            G = rng.standard_normal((m, s))
            h = rng.uniform(0.5, 2.0, m)
            means = 0.5 * rng.standard_normal((n, s))
            t, out = median_time(lambda: gauss.polytope_moments(G, h, means, np.eye(s), rtol=args.polytope_rtol), 3)
            print(f"S={s} m={m:2d} rows: {t / n * 1e6:9.2f} us per polyhedron (rtol {args.polytope_rtol:g} for S >= 3; "
                  f"reported error median {np.median(out.error):.1e}, max {np.max(out.error):.1e})", flush=True)


if __name__ == "__main__":
    main()
