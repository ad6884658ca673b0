"""Polyhedra above the dimensions the issue benchmarks: one call of
exactem.gauss.polytope_moments per (S, m) at rtol 1e-2, mean at the centre, twice (seeds 0 and
1), to watch what S > 6 costs and that the two seeds agree.

    python benches/bench_polytopes_high_dim.py
"""

import time

import numpy as np

from exactem import gauss


def main():
    rng = np.random.default_rng(0)
    for s, m in [(8, 16), (8, 32), (10, 20), (12, 24)]:
        G = rng.standard_normal((m, s))
        h = rng.uniform(0.5, 2.0, m)
        start = time.perf_counter()
        first = gauss.polytope_moments(G, h, np.zeros(s), np.eye(s), rtol=1e-2)
        elapsed = time.perf_counter() - start
        second = gauss.polytope_moments(G, h, np.zeros(s), np.eye(s), rtol=1e-2, seed=1)
        print(f"S={s} m={m}: {elapsed:.2f} s, log mass {first.log_mass:.4f} (seed 1: {second.log_mass:.4f}), "
              f"reported error {first.error:.1e}", flush=True)


if __name__ == "__main__":
    main()
