"""Posterior.sample: samples per second and refusals, on ordinary and on thin-region posteriors.

    python benches/bench_sampling.py [--n 20000] [--points 10]

For each model, the posteriors of `points` data points drawn from it; each posterior samples
`n` draws (seed 3) once to warm up per-region preparation and once timed. Reports the median
samples per second over the posteriors that did not raise, and how many raised.
"""

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

import exactem

MODELS = [
    ("S=1 [1,16,16,3] noise 0.01", [1, 16, 16, 3], 0.01),
    ("S=2 common [2,8,8,3] noise 0.1", [2, 8, 8, 3], 0.1),
    ("S=2 thin [2,32,32,3] noise 0.05", [2, 32, 32, 3], 0.05),
    ("S=2 thin [2,64,64,10] noise 0.05", [2, 64, 64, 10], 0.05),
    ("S=3 [3,12,12,4] noise 0.02", [3, 12, 12, 4], 0.02),
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--points", type=int, default=10)
    args = parser.parse_args()
    for name, arch, noise in MODELS:
        model = exactem.DGN(exactem.Decoder.random(arch, seed=0), noise)
        X, _ = model.sample(args.points, seed=0)
        rates, failures = [], 0
        for x in X:
            post = model.posterior(x)
            try:
                start = time.perf_counter()
                post.sample(args.n, seed=3)
                first = time.perf_counter() - start
                start = time.perf_counter()
                post.sample(args.n, seed=4)
                rates.append((args.n / first, args.n / (time.perf_counter() - start)))
            except exactem.NumericalError:
                failures += 1
        cold, warm = (np.median([r[k] for r in rates]) if rates else float("nan") for k in (0, 1))
        print(f"{name:36s} samples/s first call {cold:9.3g}  again {warm:9.3g}  raised {failures}/{len(X)}")


if __name__ == "__main__":
    main()
