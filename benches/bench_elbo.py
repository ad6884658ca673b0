"""Exact ELBO of Gaussian encoders (DGN.elbo) against a Monte Carlo ELBO of the same accuracy.

    python benches/bench_elbo.py [--repeats 3]

Models: `Decoder.random(widths, seed=0)` with noise 0.1, N points sampled from the model, and
an encoder-like q for each point: mean = its true latent + N(0, 0.1^2) noise, diagonal
variances 0.05. Exact: median wall time of `model.elbo` over the repeats (one warm-up call,
which also enumerates the regions), reported per point and per (point, region), R the number
of regions; and the CPU time of one call (all threads) per (point, region), which a machine
shared with other work inflates less than the wall time. `gap s`: one call of
`model.posterior_gap` (log p(x) and the KL sum) on the same points.

Monte Carlo: the ELBO integrand log p(x|z) + log p(z) - log q(z) in plain numpy (a forward
pass of matrix products), vectorised over all N points for M draws each; its time per draw per
point is measured at M = 1000. Its standard error after n draws is sigma_n / sqrt(n), sigma_n the
integrand's standard deviation for point n (estimated from the same 1000 draws), so reaching an
accuracy `target` takes n = (sigma_n / target)^2 draws: the time reported is the sum over points
of n times the measured time per draw, for target = 1e-6 and for target = the exact method's
own error estimate (per point). Extrapolated, not run: 1e-6 alone needs ~1e11 draws a point.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import platform
import subprocess
import time

import numpy as np

import exactem
from timing import median_time


def mc_integrand(decoder, noise, X, mean, var, eps):
    """(N, M) values of log p(x|z) + log p(z) - log q(z) at z = mean + sqrt(var) eps."""
    Z = mean[:, None, :] + np.sqrt(var)[:, None, :] * eps
    h = Z
    slopes = decoder.slopes
    for layer, (w, b) in enumerate(zip(decoder.weights, decoder.biases)):
        h = h @ w.T + b
        if layer < len(slopes):
            h = np.where(h >= 0, h, slopes[layer] * h)
    d, s = X.shape[1], Z.shape[2]
    log_px = -0.5 * (d * np.log(2 * np.pi) + d * np.log(noise) + np.sum((X[:, None, :] - h) ** 2, axis=2) / noise)
    log_pz = -0.5 * (s * np.log(2 * np.pi) + np.sum(Z**2, axis=2))
    log_q = -0.5 * (s * np.log(2 * np.pi) + np.sum(eps**2, axis=2) + np.sum(np.log(var), axis=1)[:, None])
    return log_px + log_pz - log_q


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs ({cpu_model()}); exact times are medians of {args.repeats}")
    print(
        f"{'model':>16} {'N':>5} {'R':>5} {'exact s':>8} {'us/point':>9} {'us/(pt,reg)':>11} {'cpu us/(pt,reg)':>15} {'exact err':>10}"
        f" {'gap s':>7} {'MC us/draw/pt':>13} {'MC s @1e-6':>11} {'MC s @exact err':>15}"
    )
    noise = 0.1
    for widths, n in [([1, 16, 16, 2], 4000), ([2, 32, 32, 10], 1000)]:
        model = exactem.DGN(exactem.Decoder.random(widths, seed=0), noise)
        X, Z = model.sample(n, seed=1)
        rng = np.random.default_rng(2)
        mean = Z + 0.1 * rng.standard_normal(Z.shape)
        var = np.full(Z.shape, 0.05)
        model.elbo(X[:10], mean[:10], var[:10])  # enumerates the regions
        regions = len(model.regions)
        seconds, (value, error) = median_time(lambda: model.elbo(X, mean, var, return_error=True), args.repeats)
        gap_seconds, _ = median_time(lambda: model.posterior_gap(X, mean, var), 1)
        cpu_start = time.process_time()
        model.elbo(X, mean, var)
        cpu_seconds = time.process_time() - cpu_start
        draws = 1000
        eps = rng.standard_normal((n, draws, Z.shape[1]))
        # In chunks of points whose arrays stay near a million entries (memory-bound otherwise).
        chunk = max(1, 1_000_000 // (draws * max(widths)))
        start = time.perf_counter()
        values = np.concatenate([
            mc_integrand(model.decoder, noise, X[a:a + chunk], mean[a:a + chunk], var[a:a + chunk], eps[a:a + chunk])
            for a in range(0, n, chunk)
        ])
        per_draw_point = (time.perf_counter() - start) / (draws * n)
        sigma = values.std(axis=1, ddof=1)
        # Sanity: the exact ELBO lies within the Monte Carlo's standard errors.
        z_scores = (values.mean(axis=1) - value) / (sigma / np.sqrt(draws))
        assert np.mean(np.abs(z_scores) < 4) > 0.99, "exact and Monte Carlo ELBOs disagree"
        mc_at = lambda target: float(np.sum((sigma / target) ** 2) * per_draw_point)
        print(
            f"{str(widths):>16} {n:>5} {regions:>5} {seconds:>8.3f} {1e6 * seconds / n:>9.1f}"
            f" {1e6 * seconds / (n * regions):>11.3f} {1e6 * cpu_seconds / (n * regions):>15.3f} {np.median(error):>10.1e}"
            f" {gap_seconds:>7.3f} {1e6 * per_draw_point:>13.3f} {mc_at(1e-6):>11.2e} {mc_at(np.maximum(error, 1e-300)):>15.2e}"
        )


if __name__ == "__main__":
    main()
