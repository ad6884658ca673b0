"""Exact EM: time per iteration against N, width and latent dimension; iterations to
convergence; EM against L-BFGS on the exact likelihood (held-out log-likelihood reached
against wall time), side by side in one run.

    python benches/bench_em.py [--quick]

Time per iteration is the median over the iterations of one fit (each includes the exact
E-step, the closed-form M-step and the exact likelihood of every proposal, rejected ones too).
"""

import argparse
import time

import numpy as np

import exactem


class Clock:
    """A callback recording the wall time of every iteration."""

    def __init__(self):
        self.times = [time.perf_counter()]

    def __call__(self, iteration, est):
        self.times.append(time.perf_counter())


def fit(X, **kw):
    clock = Clock()
    start = time.perf_counter()
    est = exactem.ExactEM(callback=clock, **kw).fit(X)
    total = time.perf_counter() - start
    per_iter = np.diff(clock.times[1:]) if len(clock.times) > 2 else np.array([total])
    return est, total, float(np.median(per_iter))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    iters = 10 if args.quick else 20

    print("time per EM iteration (median), wave data, leaky-ReLU, isotropic noise")
    print(f"{'N':>6} {'S':>2} {'hidden':>10} {'regions':>8} {'ms/iter':>9}")
    configs = [(1000, 1, (16, 16)), (250, 1, (16, 16)), (4000, 1, (16, 16)), (16000, 1, (16, 16)),
               (1000, 1, (8, 8)), (1000, 1, (32, 32)), (1000, 1, (64, 64)), (1000, 1, (16, 16, 16)),
               (1000, 2, (8, 8)), (1000, 2, (16, 16))]
    for n, s, hidden in configs:
        X = exactem.datasets.wave(n, 0.1, seed=0)
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est, total, per_iter = fit(X, latent_dim=s, hidden=hidden, max_iter=iters, random_state=0)
        print(f"{n:>6} {s:>2} {str(hidden):>10} {est.n_regions_[-1]:>8} {per_iter * 1e3:>9.1f}", flush=True)

    print("\niterations to convergence (tol 1e-6) and the result, wave N = 1000, [1, 16, 16, 2]")
    X = exactem.datasets.wave(1000, 0.1, seed=0)
    X_test = exactem.datasets.wave(1000, 0.1, seed=1)
    for seed in range(3):
        est, total, per_iter = fit(X, hidden=(16, 16), max_iter=1000, tol=1e-6, random_state=seed)
        print(f"seed {seed}: {est.n_iter_} iterations, converged={est.converged_}, {total:.1f} s, "
              f"train {est.history_[-1]:.4f}, held-out {est.score(X_test):.4f}", flush=True)

    print("\nEM against L-BFGS on the exact likelihood: held-out log-likelihood per point against wall time")
    budget = [0.5, 1, 2, 4, 8, 16]
    for solver in ["em", "lbfgs"]:
        for seed in range(2):
            reached = []
            clock = Clock()
            snapshots = []

            def record(iteration, est, clock=clock, snapshots=snapshots):
                clock(iteration, est)
                snapshots.append((clock.times[-1] - clock.times[0], est.decoder_, est.noise_var_))

            start = time.perf_counter()
            clock.times[0] = start
            exactem.ExactEM(hidden=(16, 16), solver=solver, max_iter=400, tol=1e-9, random_state=seed,
                            callback=record).fit(X)
            for b in budget:
                last = [snap for snap in snapshots if snap[0] <= b]
                if not last:
                    reached.append(float("nan"))
                    continue
                _, dec, noise = last[-1]
                reached.append(float(exactem.DGN(dec, noise).log_likelihood(X_test).mean()))
            print(f"{solver:>5} seed {seed}: " + "  ".join(f"{b:>4}s {r: .4f}" for b, r in zip(budget, reached)), flush=True)


if __name__ == "__main__":
    main()
