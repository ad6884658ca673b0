"""The region integrals that S = 4 inference asks for: every fifth region of a random
[4, 6, 6, 3] decoder under the local Gaussian N(mu_q(x), Sigma_q) of a few sampled points,
through exactem.gauss.polytope_moments at rtol 1e-3: time, and how many did not reach the
accuracy asked (reported error above twice rtol, or no mass found).

    python benches/bench_region_integrals.py [--points 3] [--stride 5]
"""

import argparse
import time

import numpy as np

import exactem
from exactem import gauss


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=3)
    parser.add_argument("--stride", type=int, default=5)
    args = parser.parse_args()
    noise, rtol = 0.1, 1e-3
    model = exactem.DGN(exactem.Decoder.random([4, 6, 6, 3], seed=0), noise, rtol=rtol)
    part = model.regions
    X, _ = model.sample(args.points, seed=0)
    rows, elapsed = [], 0.0
    for x in X:
        for q in range(0, len(part), args.stride):
            A, b = part.A[q], part.b[q]
            sigma = np.linalg.inv(np.eye(4) + A.T @ A / noise)
            sigma = 0.5 * (sigma + sigma.T)
            mu = sigma @ A.T @ (x - b) / noise
            G, h = part.facets(q)
            start = time.perf_counter()
            out = gauss.polytope_moments(G, h, mu, sigma, rtol=rtol)
            elapsed += time.perf_counter() - start
            rows.append((out.log_mass, out.error, bool(part.bounded[q])))
    missed = [r for r in rows if not np.isfinite(r[0]) or r[1] > 2 * rtol]
    print(f"{len(rows)} (point, region) integrals in {elapsed:.1f} s ({elapsed / len(rows) * 1e3:.1f} ms each); "
          f"{len(missed)} above 2 rtol or without mass, of which {sum(not r[2] for r in missed)} unbounded")
    for log_mass, error, bounded in sorted(missed):
        print(f"  log mass {log_mass:10.2f}  reported error {error:.2g}  {'bounded' if bounded else 'unbounded'}")


if __name__ == "__main__":
    main()
