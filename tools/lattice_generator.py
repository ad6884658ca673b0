"""Constructs the generating vector of the embedded rank-1 lattice in rust/gauss/rectangle.rs.

    python tools/lattice_generator.py [--candidates 2000] [--seed 20261126]

Random component-by-component construction (Cools, Kuo & Nuyens 2006, with a random subset of
the odd candidates in place of all of them): coordinate j is chosen to minimise the mean over
the nets of 2^m points, m = 6..18, of log P_2, the worst-case error of the lattice rule in the
weighted Korobov space of smoothness 2 with product weights 0.8^j (the weights scipy's CBC
construction uses; later variables of a separation-of-variables integrand matter less). Every
prefix of 2^m points of the sequence is then itself a good lattice rule, so rounds of doubling
reuse the points already integrated. Prints the vector for the Rust constant.
"""

import argparse

import numpy as np

LEVELS = range(6, 19)
BITS = LEVELS[-1]
DIMENSIONS = 16


def construct(candidates, seed):
    n = 1 << BITS
    rng = np.random.default_rng(seed)
    gamma = 0.8 ** np.arange(DIMENSIONS)
    index = np.arange(n, dtype=np.int64)
    product = np.ones(n)
    vector = []
    for j in range(DIMENSIONS):
        choices = [1] if j == 0 else 2 * rng.choice(n // 4, candidates, replace=False) + 1
        best = None
        for z in choices:
            x = (index * z % n) / n
            trial = product * (1 + gamma[j] * 2 * np.pi**2 * (x * x - x + 1 / 6))
            # The net of 2^m points is the subsequence of indices divisible by 2^(BITS - m).
            score = np.mean([np.log(trial[:: 1 << (BITS - m)].mean() - 1.0) for m in LEVELS])
            if best is None or score < best[0]:
                best = (score, int(z), trial)
        vector.append(best[1])
        product = best[2]
        print(f"coordinate {j + 1}: {best[1]} (mean log P_2 {best[0]:.3f})", flush=True)
    return vector


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--candidates", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=20261126)
    args = parser.parse_args()
    print(construct(args.candidates, args.seed))


if __name__ == "__main__":
    main()
