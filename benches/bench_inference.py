"""exactem's exact inference against a plain vectorised numpy implementation of the same
S = 1 formula (per-interval closed form over precomputed regions), in one run.

    python benches/bench_inference.py [--points 4000] [--repeats 7] [--block 5]

Times are medians over the repeats, exactem and numpy called in turn, --block calls of each at
a time (see timing.paired_median_times); both sides get the regions precomputed.
"""

import os

# OpenBLAS's worker threads busy-wait for a while after every numpy matrix product (sampling
# from the model runs the decoder in numpy) and take a core from exactem's thread pool on a
# 2-core machine: the first calls timed ran up to 2x slower. The products here are tiny, so
# numpy loses nothing with one BLAS thread.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse

import numpy as np
from scipy.special import log_ndtr, logsumexp

import exactem
from timing import median_time, paired_median_times


def log_diff_ndtr(a, b):
    """log(Phi(b) - Phi(a)) for a < b, without cancellation in either tail."""
    flip = a > 0  # both in the upper tail: use the mirror image
    a2, b2 = np.where(flip, -b, a), np.where(flip, -a, b)
    lb, la = log_ndtr(b2), log_ndtr(a2)
    return lb + np.log1p(-np.exp(np.minimum(la - lb, 0.0)))


class NumpyS1:
    """p(x) = sum_q kappa_q(x) Phi_q(x) for S = 1, vectorised over (points, regions)."""

    def __init__(self, part, noise_var):
        A, b = part.A[:, :, 0], part.b  # (R, D)
        self.b = b
        psi = np.broadcast_to(noise_var, (A.shape[1],))
        self.inv_psi = 1 / psi
        self.log_det_psi = np.log(psi).sum()
        self.At_psi = A * self.inv_psi  # (R, D)
        self.sigma2 = 1 / (1 + (A * A * self.inv_psi).sum(1))  # (R,)
        self.v = (self.At_psi * b).sum(1)
        self.b_psi_b = (b * b * self.inv_psi).sum(1)
        lo = np.full(len(part), -np.inf)
        hi = np.full(len(part), np.inf)
        for q in range(len(part)):
            G, h = part.facets(q)
            for g, hh in zip(G[:, 0], h):
                if g > 0:
                    hi[q] = hh / g
                else:
                    lo[q] = hh / g
        self.lo, self.hi = lo, hi
        self.D = A.shape[1]

    def terms(self, X):
        u = X @ self.At_psi.T - self.v  # (N, R)
        mu = self.sigma2 * u
        log_kappa = (-0.5 * self.D * np.log(2 * np.pi) - 0.5 * self.log_det_psi + 0.5 * np.log(self.sigma2)
                     - 0.5 * ((X * X) @ self.inv_psi)[:, None] + X @ (self.b * self.inv_psi).T
                     - 0.5 * self.b_psi_b + 0.5 * self.sigma2 * u * u)
        sd = np.sqrt(self.sigma2)
        a, b = (self.lo - mu) / sd, (self.hi - mu) / sd
        return log_kappa, mu, sd, a, b, log_diff_ndtr(a, b)

    def log_likelihood(self, X):
        log_kappa, *_, log_phi = self.terms(X)
        return logsumexp(log_kappa + log_phi, axis=1)

    def e_step(self, X):
        log_kappa, mu, sd, a, b, log_phi = self.terms(X)
        log_terms = log_kappa + log_phi
        log_p = logsumexp(log_terms, axis=1)
        m0 = np.exp(log_terms - log_p[:, None])
        # Truncated-normal moments: E[z | a < (z - mu)/sd < b] = mu + sd (phi(a) - phi(b)) / Z.
        with np.errstate(invalid="ignore", over="ignore"):
            ra = np.exp(-0.5 * a * a - 0.5 * np.log(2 * np.pi) - log_phi)
            rb = np.exp(-0.5 * b * b - 0.5 * np.log(2 * np.pi) - log_phi)
            ra = np.where(np.isfinite(a), ra, 0.0)
            rb = np.where(np.isfinite(b), rb, 0.0)
            mean = mu + sd * (ra - rb)
            a_ra = np.where(np.isfinite(a), a * ra, 0.0)
            b_rb = np.where(np.isfinite(b), b * rb, 0.0)
            var = sd * sd * (1 + a_ra - b_rb - (ra - rb) ** 2)
        m1 = m0 * mean
        m2 = m0 * (var + mean * mean)
        return log_p, m0, m1, m2



def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--block", type=int, default=5, help="consecutive calls of one side before the other's (1: alternate every call, which times cold starts)")
    args = parser.parse_args()
    dec = exactem.Decoder.random([1, 16, 16, 2], activation="leaky_relu", alpha=0.1, seed=0)
    print(f"[1, 16, 16, 2] leaky-ReLU (torch init, seed 0), N = {args.points} points sampled from the model, medians of {args.repeats}+ calls in blocks of {args.block}")
    print("| noise variance | regions visited per point | operation | exactem | numpy (same formula) | speed-up | exactem per point |")
    print("|---|---|---|---|---|---|---|")
    for noise in [0.05, 1e-3, 1e-5]:
        model = exactem.DGN(dec, noise)
        X, _ = model.sample(args.points, seed=0)
        peer = NumpyS1(model.regions, noise)
        model.log_likelihood(X[:10])  # build the engine once: the peer's set-up is not timed either
        (t_ll, t_ll_np), (ll, ll_np) = paired_median_times([lambda: model.log_likelihood(X), lambda: peer.log_likelihood(X)], args.repeats, args.block)
        (t_es, t_es_np), (es, (_, m0_np, _, _)) = paired_median_times([lambda: model.e_step(X), lambda: peer.e_step(X)], args.repeats, args.block)
        assert np.allclose(ll, ll_np, rtol=1e-10, atol=1e-10), np.abs(ll - ll_np).max()
        assert np.allclose(es.m0.toarray(), m0_np, atol=1e-12)
        visited = es.m0.nnz / args.points
        for name, t, t_np in [("log_likelihood", t_ll, t_ll_np), ("e_step", t_es, t_es_np)]:
            print(f"| {noise:g} | {visited:.1f} of {len(model.regions)} | {name} | {t * 1e3:.2f} ms | {t_np * 1e3:.2f} ms "
                  f"| {t_np / t:.1f}x | {t / args.points * 1e6:.2f} us |")

    print()
    print("| model | N | R | log_likelihood | e_step | total |")
    print("|---|---|---|---|---|---|")
    for widths, n in [([1, 16, 16, 2], 1000), ([1, 16, 16, 2], 16000), ([1, 64, 64, 10], 1000), ([1, 256, 256, 784], 1000)]:
        dec = exactem.Decoder.random(widths, seed=0)
        model = exactem.DGN(dec, 0.1)
        X, _ = model.sample(n, seed=1)
        model.log_likelihood(X[:2])
        # Medians of 7: the allocator takes fresh pages in the first calls (the largest
        # E-step returns ~16 MB), so fewer calls would time those.
        t1, _ = median_time(lambda: model.log_likelihood(X), 7)
        t2, _ = median_time(lambda: model.e_step(X), 7)
        print(f"| {widths} | {n} | {len(model.regions)} | {t1 * 1e3:.1f} ms | {t2 * 1e3:.1f} ms | {(t1 + t2) * 1e3:.1f} ms |")


if __name__ == "__main__":
    main()
