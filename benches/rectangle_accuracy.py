"""Rectangles: exactem's time against its accuracy, and how often its reported error covers
the true error, on bench_gauss.py's rectangles; the time exactem needs for scipy's (default)
median error, read off that curve. Used to choose the lattice path's shifts and error scale
(`rust/gauss/rectangle.rs`, BENCHMARKS.md).

    RAYON_NUM_THREADS=1 python benches/rectangle_accuracy.py [--dims 5 6 7 8] [--references refs.npz]

One core is the fair comparison here (scipy runs on one): CPU time, the minimum over three
seeds of one call on the 100 rectangles of S. Errors are relative, against scipy at
abseps = releps = 1e-10 on the first 40 rectangles, pooled over the seeds (medians). The
references take minutes (S = 8: ~3); `--references` keeps them in a file between runs.
"""

import argparse
import os
import time

import numpy as np
from scipy import stats

from bench_gauss import problem, reference_probabilities, scipy_probabilities
from exactem import gauss

RTOLS = [4e-5, 2e-5, 1e-5, 5e-6, 2.5e-6, 1.2e-6, 6e-7]
SEEDS = 3
REFERENCED = 40


def references(mean, cov, lower, upper):
    exact = reference_probabilities(mean, cov, lower[:REFERENCED], upper[:REFERENCED])
    default = stats.multivariate_normal(mean, cov)
    start = time.process_time()
    p = scipy_probabilities(default, lower, upper)
    return exact, p[:REFERENCED], time.process_time() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dims", type=int, nargs="+", default=[5, 6, 7, 8])
    parser.add_argument("--references", help="an .npz file to keep the references in")
    args = parser.parse_args()
    stored = dict(np.load(args.references)) if args.references and os.path.exists(args.references) else {}
    covered = []
    print(f"{'S':>2} {'scipy':>8} {'its error':>9} | exactem rtol: CPU time / median error ... | time at scipy's error, speed-up")
    for s in args.dims:
        mean, cov, lower, upper = problem(np.random.default_rng(s), s, 100)
        if f"exact{s}" not in stored:
            stored[f"exact{s}"], stored[f"scipy{s}"], stored[f"scipy_time{s}"] = references(mean, cov, lower, upper)
            if args.references:
                np.savez(args.references, **stored)
        exact, scipy_time = stored[f"exact{s}"], float(stored[f"scipy_time{s}"])
        scipy_error = np.median(np.abs(stored[f"scipy{s}"] / exact - 1))
        curve = []
        for rtol in RTOLS:
            best, errors = np.inf, []
            for seed in range(SEEDS):
                start = time.process_time()
                p, err = gauss.mvn_cdf(lower, upper, mean, cov, rtol=rtol, seed=seed)
                best = min(best, time.process_time() - start)
                errors.extend(np.abs(p[:REFERENCED] / exact - 1))
                covered.extend(np.abs(p[:REFERENCED] - exact) <= err[:REFERENCED])
            curve.append((best, np.median(errors)))
        times, errors = np.array(curve).T
        order = np.argsort(errors)
        matched = np.exp(np.interp(np.log(scipy_error), np.log(errors[order]), np.log(times[order])))
        points = " ".join(f"{r:g}: {t * 1e3:.0f} ms / {e:.1e}" for r, (t, e) in zip(RTOLS, curve))
        print(f"{s:>2} {scipy_time * 1e3:6.0f} ms {scipy_error:9.1e} | {points} | {matched * 1e3:.1f} ms, {scipy_time / matched:.1f}x", flush=True)
    print(f"reported error covers the true one in {np.mean(covered):.1%} of {len(covered)} results")


if __name__ == "__main__":
    main()
