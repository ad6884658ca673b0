"""Constructs the generating vector of the embedded rank-1 lattice in rust/gauss/rectangle.rs.

    python tools/lattice_generator.py [--dimensions 7] [--candidates 4000] [--finalists 24] [--seed 20261126]

Every prefix of 2^m points of an embedded lattice sequence is itself a lattice rule, so rounds
of doubling reuse the points already integrated. The price is that one vector must serve every
m, and the usual figure of merit, the mean over m of the worst-case error P_2 in a weighted
Korobov space (Cools, Kuo & Nuyens 2006), proved a poor guide for the separation-of-variables
integrand: vectors chosen by it were 2-6x less accurate than a per-m CBC lattice at some m
(one earlier vector, 6-7x at m = 10, 11 for S = 6), and which m suffered changed with the
search's seed. So the search is component by component, and the figure of merit only
shortlists: coordinate j keeps the `finalists` candidates of lowest mean log P_2 (product
weights 1, 0.8^j as in scipy's CBC) among `candidates` random odd ones, and then takes the one
that integrates a training set of rectangles best, with their own S = j + 2 (coordinate j is
the last one such a rectangle uses): the mean over m = 9..13 of the log of the mean squared
relative error, with the same random shifts for every candidate. The training rectangles are
drawn independently of the benchmark's (covariances A A^T / S + 0.5 I and equicorrelated
ones, limits 0.2..2 deviations, one in five half-infinite); the references are scrambled Sobol
estimates with 2^20 points. Prints the vector for the Rust constant.
"""

import argparse

import numpy as np
from scipy.special import ndtr, ndtri
from scipy.stats import qmc

BITS = 18
SHORTLIST_LEVELS = range(8, 17)
TRAINING_LEVELS = range(9, 14)
SHIFTS = 8
REPEATS = 2
RECTANGLES = 12


def ordered_cholesky(cov, lower, upper):
    """Genz-Bretz ordering (least probable interval first, the earlier variables at their
    conditional means) during the Cholesky factorisation, as rectangle.rs does."""
    s = len(lower)
    cov, lower, upper = cov.copy(), lower.copy(), upper.copy()
    chol, centre = np.zeros((s, s)), np.zeros(s)
    for k in range(s):
        var = np.diag(cov)[k:] - (chol[k:, :k] ** 2).sum(axis=1)
        sd = np.sqrt(var)
        mean = chol[k:, :k] @ centre[:k]
        a, b = (lower[k:] - mean) / sd, (upper[k:] - mean) / sd
        i = k + int(np.argmin(ndtr(b) - ndtr(a)))
        for arr in (lower, upper):
            arr[[k, i]] = arr[[i, k]]
        cov[[k, i]] = cov[[i, k]]
        cov[:, [k, i]] = cov[:, [i, k]]
        chol[[k, i], :k] = chol[[i, k], :k]
        chol[k, k] = np.sqrt(cov[k, k] - chol[k, :k] @ chol[k, :k])
        chol[k + 1:, k] = (cov[k + 1:, k] - chol[k + 1:, :k] @ chol[k, :k]) / chol[k, k]
        m = chol[k, :k] @ centre[:k]
        a, b = (lower[k] - m) / chol[k, k], (upper[k] - m) / chol[k, k]
        centre[k] = (np.exp(-a * a / 2) - np.exp(-b * b / 2)) / np.sqrt(2 * np.pi) / (ndtr(b) - ndtr(a))
    return chol, lower, upper


def sov_weights(chol, lower, upper, u):
    """The separation-of-variables weight at the rows of u in [0, 1]^(S - 1)."""
    s = len(lower)
    y = np.zeros((len(u), s - 1))
    start = ndtr(lower[0] / chol[0, 0])
    width = ndtr(upper[0] / chol[0, 0]) - start
    weight = np.full(len(u), width)
    for k in range(1, s):
        y[:, k - 1] = ndtri(np.clip(start + u[:, k - 1] * width, 1e-300, 1 - 1e-16))
        mean = y[:, :k] @ chol[k, :k]
        start = ndtr((lower[k] - mean) / chol[k, k])
        width = ndtr((upper[k] - mean) / chol[k, k]) - start
        weight *= width
    return weight


def lattice_estimate(problem, vector, m, shifts):
    n = 1 << m
    base = (np.arange(n)[:, None] * np.asarray(vector)[None, :] % n) / n
    total = 0.0
    for shift in shifts:
        x = (base + shift) % 1.0
        total += sov_weights(*problem, 1.0 - np.abs(2.0 * x - 1.0)).mean()
    return total / len(shifts)


def training_set(s, rng):
    problems = []
    for r in range(RECTANGLES):
        if r % 3 == 2:
            rho = rng.uniform(0.1, 0.8)
            cov = np.full((s, s), rho) + (1 - rho) * np.eye(s)
        else:
            a = rng.standard_normal((s, s))
            cov = a @ a.T / s + 0.5 * np.eye(s)
        lower = -rng.uniform(0.2, 2.0, s)
        lower[rng.random(s) < 0.2] = -np.inf
        upper = rng.uniform(0.2, 2.0, s)
        problem = ordered_cholesky(cov, lower, upper)
        sobol = qmc.Sobol(s - 1, seed=rng).random_base2(20)
        reference = sov_weights(*problem, sobol).mean()
        problems.append((problem, reference))
    return problems


def training_score(problems, vector, shift_sets):
    score = 0.0
    for m in TRAINING_LEVELS:
        errors = [(lattice_estimate(p, vector, m, shifts) / ref - 1.0) ** 2 for p, ref in problems for shifts in shift_sets]
        score += np.log(np.mean(errors))
    return score / len(TRAINING_LEVELS)


def construct(dimensions, candidates, finalists, seed):
    n = 1 << BITS
    rng = np.random.default_rng(seed)
    gamma = np.concatenate([[1.0], 0.8 ** np.arange(dimensions - 1)])
    index = np.arange(n, dtype=np.int64)

    def with_coordinate(product, z, j):
        # The product over coordinates of the Korobov kernel (smoothness 2) at every point.
        x = (index * z % n) / n
        return product * (1 + gamma[j] * (x * x - x + 1 / 6))

    vector = [1]
    product = with_coordinate(np.ones(n), 1, 0)
    for j in range(1, dimensions):
        shortlist = []
        for z in 2 * rng.choice(n // 4, candidates, replace=False) + 1:
            trial = with_coordinate(product, z, j)
            # The net of 2^m points is the subsequence of indices divisible by 2^(BITS - m).
            p2 = np.mean([np.log(trial[:: 1 << (BITS - m)].mean() - 1.0) for m in SHORTLIST_LEVELS])
            shortlist.append((p2, int(z)))
        shortlist.sort()
        problems = training_set(j + 2, rng)
        shift_sets = [rng.random((SHIFTS, j + 1)) for _ in range(REPEATS)]
        scored = [(training_score(problems, vector + [z], shift_sets), z) for _, z in shortlist[:finalists]]
        best = min(scored)
        vector.append(best[1])
        product = with_coordinate(product, best[1], j)
        print(f"coordinate {j + 1}: {best[1]} (training score {best[0]:.2f}; P_2's first choice {scored[0][0]:.2f})", flush=True)
    return vector


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dimensions", type=int, default=7)
    parser.add_argument("--candidates", type=int, default=4000)
    parser.add_argument("--finalists", type=int, default=24)
    parser.add_argument("--seed", type=int, default=20261126)
    args = parser.parse_args()
    print(construct(args.dimensions, args.candidates, args.finalists, args.seed))


if __name__ == "__main__":
    main()
