"""The polyhedral Gaussian engine against independent references: closed forms for boxes seen
through rotations, one-dimensional quadrature of exact slices, Monte Carlo, scipy."""

import itertools
import zlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import integrate, optimize, stats
from scipy.special import log_ndtr, logsumexp

from exactem import gauss


def log_interval_mass(a, b):
    """log(Phi(b) - Phi(a)) without cancellation, vectorised."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    flip = a > 0
    a, b = np.where(flip, -b, a), np.where(flip, -a, b)
    lb, la = log_ndtr(b), log_ndtr(a)
    return lb + np.log1p(-np.exp(la - lb))


def random_rotation(rng, s):
    q, r = np.linalg.qr(rng.standard_normal((s, s)))
    return q * np.sign(np.diag(r))


def rotated_box(rng, s, lo, hi, redundant=2):
    """A box lo <= y <= hi in whitened coordinates y, seen as z = mean + B y with B B^T = cov
    (B = L Q, Q a random rotation); rows scaled at random, plus redundant rows."""
    A = rng.standard_normal((s, s))
    cov = A @ A.T + 0.3 * np.eye(s)
    mean = rng.standard_normal(s)
    B = np.linalg.cholesky(cov) @ random_rotation(rng, s)
    Binv = np.linalg.inv(B)
    rows, offsets = [], []
    for k in range(s):
        for sign, bound in [(1.0, hi[k]), (-1.0, -lo[k])]:
            if np.isfinite(bound):
                c = rng.uniform(0.2, 5.0)
                rows.append(c * sign * Binv[k])
                offsets.append(c * (bound + sign * Binv[k] @ mean))
    G, h = np.array(rows), np.array(offsets)
    for _ in range(redundant):  # a positive combination of two rows, loosened
        i, j = rng.choice(len(h), 2, replace=len(h) < 2)
        G = np.vstack([G, G[i] + G[j]])
        h = np.append(h, h[i] + h[j] + rng.uniform(0.1, 1.0))
    order = rng.permutation(len(h))
    truth_mass = float(np.sum(log_interval_mass(lo, hi)))
    y_mean = np.array([stats.truncnorm(a, b).mean() for a, b in zip(lo, hi)])
    y_var = np.array([stats.truncnorm(a, b).var() for a, b in zip(lo, hi)])
    return G[order], h[order], mean, cov, truth_mass, mean + B @ y_mean, B @ np.diag(y_var) @ B.T


@pytest.mark.parametrize("s", [1, 2])
def test_rotated_boxes_are_exact_in_one_and_two_dimensions(s):
    rng = np.random.default_rng(s)
    cases = [(-1.0, 1.0), (0.5, 2.0), (7.0, np.inf), (20.0, 21.0), (-np.inf, -25.0), (-0.3, np.inf)]
    for a, b in cases:
        for _ in range(5):
            lo = np.full(s, a) + rng.uniform(0, 0.2, s) * np.isfinite(a)
            hi = np.maximum(np.full(s, b), lo + 0.5)
            G, h, mean, cov, log_mass, m, c = rotated_box(rng, s, lo, hi)
            got = gauss.polytope_moments(G, h, mean, cov)
            assert abs(got.log_mass - log_mass) <= 1e-10 * max(1.0, abs(log_mass)) / 10 + 1e-10, (a, b)
            assert got.error == 0.0
            scale = np.sqrt(np.diag(cov)).max()
            assert np.allclose(got.mean, m, rtol=0, atol=1e-9 * (scale + np.abs(m).max()))
            assert np.allclose(got.cov, c, rtol=1e-8, atol=1e-9 * scale**2)


def test_two_dimensional_masses_down_to_1e_minus_300():
    rng = np.random.default_rng(0)
    # Each side 26 standard deviations out: mass ~1e-300.
    lo = np.array([26.0, 26.2])
    G, h, mean, cov, log_mass, m, c = rotated_box(rng, 2, lo, np.full(2, np.inf))
    got = gauss.polytope_moments(G, h, mean, cov)
    assert log_mass < np.log(1e-295)
    assert abs(got.log_mass - log_mass) < 1e-10 * abs(log_mass)
    assert np.allclose(got.mean, m, atol=1e-9 * np.abs(m).max())
    # The covariance is E[w w^T] - E[w] E[w]^T (whitened) with |E[w]|^2 = |lo|^2 ~ 1400 and
    # variances ~1e-3: six digits cancel. Every flux term is scaled by exp(-d^2/2 - log 2 pi -
    # log P), an exponent formed from terms of size |log P| ~ 690, each rounded: a relative error
    # of up to ~8 eps |log P| (~1.2e-12) in the terms, and so up to that times |E[w]|^2 in the
    # whitened covariance, times |cov| unwhitened. Fused and separate multiply-adds (the SIMD
    # kernels) round differently within that bound (1.2e-10 here without AVX-512, 1e-7 of the
    # covariance's scale; the bound is ~2e-9).
    bound = 8 * np.finfo(float).eps * abs(log_mass) * (lo @ lo) * np.linalg.norm(cov, 2)
    assert np.allclose(got.cov, c, rtol=0, atol=bound)
    assert bound < 1e-5 * np.abs(c).max()  # still five digits of the covariance


@pytest.mark.parametrize("s", [3, 4, 5, 6])
def test_rotated_boxes_in_higher_dimensions_also_in_the_far_tail(s):
    rng = np.random.default_rng(10 + s)
    for lo, hi in [(np.full(s, -1.0), np.full(s, 1.5)), (np.full(s, 7.0), np.full(s, np.inf)),
                   (np.r_[7.0, np.full(s - 1, -np.inf)], np.r_[np.inf, np.full(s - 1, 0.5)])]:
        G, h, mean, cov, log_mass, m, c = rotated_box(rng, s, lo, hi)
        got = gauss.polytope_moments(G, h, mean, cov, rtol=1e-6)
        assert abs(got.log_mass - log_mass) <= 1e-5, (lo, got.log_mass, log_mass)
        scale = np.sqrt(np.diag(cov)).max()
        assert np.allclose(got.mean, m, atol=1e-4 * scale)
        assert np.allclose(got.cov, c, atol=1e-4 * scale**2)
        if lo[-1] == 7.0:  # seven standard deviations out in every direction: ~1e-12 per dimension
            assert log_mass < -s * 25


def sliced_log_mass(G, h, mean, cov):
    """An independent 3-D reference: whiten, then integrate the exact 2-D masses of slices along
    the first whitened coordinate. The slice mass is analytic between the first coordinates of
    the polytope's vertices, so Gauss-Legendre on each piece converges geometrically."""
    L = np.linalg.cholesky(cov)
    F = G @ L
    e = h - G @ mean
    first, rest = F[:, 0], F[:, 1:]
    breaks = [-40.0, 40.0]
    for rows in itertools.combinations(range(len(e)), 3):
        try:
            v = np.linalg.solve(F[list(rows)], e[list(rows)])
        except np.linalg.LinAlgError:
            continue
        if np.all(F @ v <= e + 1e-9) and abs(v[0]) < 40:
            breaks.append(v[0])
    breaks = np.unique(np.concatenate([np.sort(breaks), np.linspace(-40, 40, 81)]))
    nodes, weights = np.polynomial.legendre.leggauss(40)
    t = ((breaks[1:, None] - breaks[:-1, None]) * (nodes + 1) / 2 + breaks[:-1, None]).ravel()
    w = ((breaks[1:, None] - breaks[:-1, None]) / 2 * weights).ravel()
    slices = gauss.polytope_moments(rest, e[None, :] - t[:, None] * first[None, :], np.zeros(2), np.eye(2))
    return logsumexp(slices.log_mass + stats.norm.logpdf(t), b=w)


def random_polytope(rng, s, m):
    G = rng.standard_normal((m, s))
    h = rng.uniform(0.1, 1.5, m) + G @ rng.standard_normal(s) * 0.3
    A = rng.standard_normal((s, s))
    cov = A @ A.T / s + 0.5 * np.eye(s)
    return G, h, rng.standard_normal(s) * 0.5, cov


def test_three_dimensional_boxes_are_exact_to_1e_minus_300():
    """S = 3 integrates exact polygon slices: rotated boxes to ~1e-10 in log mass, including
    boxes 26 standard deviations out (mass ~1e-300) and half-open slabs."""
    rng = np.random.default_rng(3)
    cases = [(np.full(3, -1.0), np.full(3, 1.5)), (np.full(3, 7.0), np.full(3, np.inf)),
             (np.r_[26.0, 26.2, 26.4], np.full(3, np.inf)), (np.r_[20.0, -np.inf, -np.inf], np.r_[21.0, 0.5, np.inf]),
             (np.r_[-np.inf, 0.3, -2.0], np.r_[-25.0, 0.4, np.inf])]
    for lo, hi in cases:
        for _ in range(3):
            G, h, mean, cov, log_mass, m, c = rotated_box(rng, 3, lo, hi)
            got = gauss.polytope_moments(G, h, mean, cov, rtol=1e-10)
            assert abs(got.log_mass - log_mass) <= 1e-10 * max(1.0, abs(log_mass)), (lo, hi, got.log_mass, log_mass)
            assert got.error < 1e-9
            scale = np.sqrt(np.diag(cov)).max()
            assert np.allclose(got.mean, m, rtol=0, atol=1e-8 * (scale + np.abs(m).max()))
            assert np.allclose(got.cov, c, rtol=0, atol=1e-6 * np.abs(c).max())


@pytest.mark.parametrize("kind", ["cone", "wedge", "random", "far"])
def test_three_dimensional_masses_match_the_sliced_reference(kind):
    """Pointed cones, wedges with a line of apexes (no vertex), random polyhedra and polyhedra
    in a tail, against independent references at tight tolerance: the slicing reference, and
    scipy's exact bivariate normal for the wedges."""
    rng = np.random.default_rng(zlib.crc32(kind.encode()))
    compared = 0
    for _ in range(40):
        if kind == "cone":
            G = rng.standard_normal((int(rng.integers(3, 7)), 3))
            G[:, 0] = -np.abs(G[:, 0]) - 0.2
            h = np.full(len(G), rng.uniform(-1.0, 0.5))
        elif kind == "wedge":
            axis = rng.standard_normal(3)
            G = rng.standard_normal((2, 3))
            G -= np.outer(G @ axis, axis) / (axis @ axis)
            h = rng.uniform(-0.5, 0.5, 2)
        else:
            G, h, _, _ = random_polytope(rng, 3, int(rng.integers(4, 10)))
        A = rng.standard_normal((3, 3))
        cov = A @ A.T / 3 + 0.3 * np.eye(3)
        mean = rng.standard_normal(3) * 0.5
        if kind == "far":  # the polytope 6 to 15 standard deviations from the mean
            direction = np.linalg.cholesky(cov) @ rng.standard_normal(3)
            mean = direction * rng.uniform(6, 15) / np.linalg.norm(np.linalg.solve(np.linalg.cholesky(cov), direction))
        if kind == "wedge":
            # Two rows: a bivariate normal orthant, which scipy computes exactly (Genz's bvnd).
            truth = np.log(stats.multivariate_normal.cdf(h, G @ mean, G @ cov @ G.T, abseps=1e-15, releps=1e-15))
        else:
            truth = sliced_log_mass(G, h, mean, cov)
        got = gauss.polytope_moments(G, h, mean, cov, rtol=1e-10)
        if not -600 < truth < -1e-12:  # beyond the references' reach
            continue
        compared += 1
        assert abs(got.log_mass - truth) <= 1e-8 * max(1.0, abs(truth)), (kind, got.log_mass, truth)
        assert got.error < 1e-8
    assert compared >= 30


def test_reported_error_is_calibrated():
    rng = np.random.default_rng(1)
    covered, total = 0, 0
    for trial in range(240):
        G, h, mean, cov = random_polytope(rng, 3, int(rng.integers(4, 9)))
        truth = sliced_log_mass(G, h, mean, cov)
        if not np.isfinite(truth):
            continue
        got = gauss.polytope_moments(G, h, mean, cov, rtol=1e-3, seed=trial)
        true_error = abs(np.expm1(got.log_mass - truth))
        covered += true_error <= got.error + 1e-12
        total += 1
    assert total >= 200
    assert covered >= 0.95 * total, (covered, total)


def test_reported_error_is_calibrated_in_four_dimensions():
    """S >= 4 goes through the tilted Sobol path, whose error comes from the spread of its
    scramblings. The reference is the same path at a 300x tighter rtol and another seed: its
    own error is two orders below the ones checked (what this test checks is the error bar,
    not the absence of bias, which the Monte Carlo and rotated-box tests check)."""
    rng = np.random.default_rng(5)
    covered, total = 0, 0
    for trial in range(100):
        G, h, mean, cov = random_polytope(rng, 4, int(rng.integers(6, 12)))
        if trial % 3 == 2:
            h = h - rng.uniform(1, 3)  # farther out, smaller masses
        truth = gauss.polytope_moments(G, h, mean, cov, rtol=3e-7, seed=99).log_mass
        if not np.isfinite(truth):
            continue
        for rtol in (1e-3, 1e-4):
            got = gauss.polytope_moments(G, h, mean, cov, rtol=rtol, seed=trial)
            covered += abs(np.expm1(got.log_mass - truth)) <= got.error
            total += 1
    assert total >= 150
    assert covered >= 0.95 * total, (covered, total)


@pytest.mark.parametrize("kind", ["simplex", "cone", "slab", "random"])
@pytest.mark.parametrize("s", [3, 4])
def test_general_polytopes_against_monte_carlo(kind, s):
    rng = np.random.default_rng(zlib.crc32(f"{kind}{s}".encode()))
    if kind == "simplex":
        G = np.vstack([-np.eye(s), np.ones((1, s))])
        h = np.r_[np.full(s, 0.2), 1.5]
    elif kind == "cone":
        G = rng.standard_normal((s + 1, s))
        G[:, 0] = -np.abs(G[:, 0]) - 1.0  # every row bounds z_0 from below: a pointed cone
        h = np.full(s + 1, -0.5)
    elif kind == "slab":
        d = rng.standard_normal(s)
        G, h = np.vstack([d, -d]), np.array([0.7, 0.1])
    else:
        G, h, _, _ = random_polytope(rng, s, 10)
    A = rng.standard_normal((s, s))
    cov = A @ A.T / s + 0.3 * np.eye(s)
    mean = 0.3 * rng.standard_normal(s)
    got = gauss.polytope_moments(G, h, mean, cov, rtol=1e-5)
    Z = rng.multivariate_normal(mean, cov, size=2_000_000)
    inside = np.all(Z @ G.T <= h, axis=1)
    p = inside.mean()
    se = np.sqrt(p * (1 - p) / len(Z))
    assert abs(np.exp(got.log_mass) - p) < 4 * se + 4 * got.error * p, (kind, np.exp(got.log_mass), p, se)
    Zin = Z[inside]
    mean_se = Zin.std(axis=0) / np.sqrt(len(Zin))
    assert np.all(np.abs(got.mean - Zin.mean(axis=0)) < 4 * mean_se + 1e-4)
    cov_mc = np.cov(Zin.T)
    cov_se = np.sqrt((np.outer(np.diag(cov_mc), np.diag(cov_mc)) + cov_mc**2) / len(Zin))
    assert np.all(np.abs(got.cov - cov_mc) < 5 * cov_se + 1e-4)


def test_thin_four_dimensional_polytopes_against_three_dimensional_slicing():
    """A thin wedge in 3-D (two planes through a line at an angle of 3e-4 to 3e-2 rad, cut by a
    box) times an interval, seen through a random 4-D rotation: the mass is the wedge's, from
    the exact-slice quadrature of S = 3, times a normal interval probability. Rows that do not
    bound their own variable used to make almost every separation-of-variables path die on
    such slivers (errors of 5-60%, reported as 100%)."""
    rng = np.random.default_rng(3)
    covered, total = 0, 0
    for case in range(20):
        eps = 10 ** rng.uniform(-3.5, -1.5)
        n = rng.standard_normal(3)
        n /= np.linalg.norm(n)
        t = rng.standard_normal(3)
        t -= t @ n * n
        t /= np.linalg.norm(t)
        offset = rng.uniform(-1, 1)
        G3 = np.vstack([np.cos(eps) * n + np.sin(eps) * t, -n, np.eye(3), -np.eye(3)])
        h3 = np.concatenate([[offset, -offset], rng.uniform(0.5, 2.5, 6)])
        wedge = gauss.polytope_moments(G3, h3, np.zeros(3), np.eye(3), rtol=1e-10)
        lo, hi = -rng.uniform(0, 2), rng.uniform(0, 2)
        G4 = np.zeros((len(h3) + 2, 4))
        G4[:-2, :3] = G3
        G4[-2, 3], G4[-1, 3] = 1.0, -1.0
        h4 = np.concatenate([h3, [hi, -lo]])
        want = wedge.log_mass + log_interval_mass(lo, hi)
        got = gauss.polytope_moments(G4 @ random_rotation(rng, 4).T, h4, np.zeros(4), np.eye(4), rtol=1e-3, seed=case)
        relative = abs(np.expm1(got.log_mass - want))
        assert relative < 3e-3 and got.error < 2e-3, (case, eps, got.log_mass, want, got.error)
        covered += relative <= got.error
        total += 1
    assert covered >= 0.9 * total, (covered, total)


def test_rectangles_against_scipy():
    rng = np.random.default_rng(3)
    for s in [2, 3, 5]:
        A = rng.standard_normal((s, s))
        cov = A @ A.T / s + 0.5 * np.eye(s)
        mean = rng.standard_normal(s) * 0.3
        lower = -rng.uniform(0.3, 2.0, (4, s))
        upper = rng.uniform(0.3, 2.0, (4, s))
        lower[0, 0] = -np.inf
        p, err = gauss.mvn_cdf(lower, upper, mean, cov, rtol=1e-7)
        mvn = stats.multivariate_normal(mean, cov, abseps=1e-10, releps=1e-10, maxpts=2_000_000 * s)
        ref = np.array([mvn.cdf(u, lower_limit=l) for l, u in zip(lower, upper)])
        assert np.allclose(p, ref, rtol=2e-6, atol=0), (s, p, ref)
        assert np.all(err <= 1e-6 * p + 1e-15)


def equicorrelated_log_probability(lower, upper, rho):
    """Independent reference: equicorrelated normals X_i = sqrt(rho) T + sqrt(1 - rho) E_i are
    independent given T, so a rectangle's probability is a 1-D integral over T (adaptive
    quadrature of the conditional product, scaled so that far tails do not underflow)."""
    a, b = np.sqrt(rho), np.sqrt(1 - rho)

    lower, upper = np.asarray(lower, float), np.asarray(upper, float)

    def log_conditional(t):
        return stats.norm.logpdf(t) + log_interval_mass((lower - a * t) / b, (upper - a * t) / b).sum()

    peak = optimize.minimize_scalar(lambda t: -log_conditional(t), bounds=(-40, 40), method="bounded").x
    top = log_conditional(peak)
    # Log-concave in t and narrower than N(0, 1): nothing beyond 12 of T's deviations of the peak.
    value, _ = integrate.quad(lambda t: np.exp(log_conditional(t) - top), peak - 12, peak + 12, points=[peak], epsabs=0, epsrel=1e-12, limit=500)
    return np.log(value) + top


def test_rectangles_s4_to_8_error_calibrated_against_quadrature():
    rng = np.random.default_rng(11)
    covered, total = 0, 0
    for s in range(4, 9):
        for _ in range(24):
            rho = rng.uniform(0.05, 0.9)
            cov = np.full((s, s), rho) + (1 - rho) * np.eye(s)
            lower = np.where(rng.random(s) < 0.2, -np.inf, -rng.uniform(0.2, 2.0, s))
            upper = rng.uniform(0.2, 2.0, s)
            truth = equicorrelated_log_probability(lower, upper, rho)
            p, err = gauss.mvn_cdf(lower, upper, np.zeros(s), cov, rtol=1e-4, seed=total)
            true_error = abs(p / np.exp(truth) - 1)
            assert true_error < 1e-3, (s, rho, lower, upper, p, np.exp(truth))
            covered += true_error <= err / p
            total += 1
    assert covered >= 0.95 * total, (covered, total)


@pytest.mark.parametrize("s", [4, 6])
def test_far_tail_rectangles_keep_their_relative_accuracy(s):
    rng = np.random.default_rng(s)
    # Offset 2 stays on the lattice path at S = 6; the farther boxes (log p from -20 to -55)
    # go to the tilted one.
    for offset in [2.0, 4.0, 7.0]:
        rho = 0.5
        cov = np.full((s, s), rho) + (1 - rho) * np.eye(s)
        lower = offset + rng.uniform(0, 0.5, s)
        upper = lower + rng.uniform(0.5, 2.0, s)
        truth = equicorrelated_log_probability(lower, upper, rho)
        p, err = gauss.mvn_cdf(lower, upper, np.zeros(s), cov, rtol=1e-6)
        assert abs(np.log(p) - truth) <= 1e-5, (offset, np.log(p), truth)


def test_rectangle_probabilities_are_deterministic_and_handle_degenerate_limits():
    rng = np.random.default_rng(2)
    s = 5
    A = rng.standard_normal((s, s))
    cov = A @ A.T / s + 0.5 * np.eye(s)
    lower = -rng.uniform(0.2, 2.0, (6, s))
    upper = rng.uniform(0.2, 2.0, (6, s))
    lower[1, 2] = upper[1, 2]  # a flat rectangle
    lower[2, :], upper[2, :] = -np.inf, np.inf  # everything
    lower[3, 1:], upper[3, 1:] = -np.inf, np.inf  # one bounded variable: a 1-D probability
    first = gauss.mvn_cdf(lower, upper, np.zeros(s), cov, rtol=1e-5, seed=4)
    again = gauss.mvn_cdf(lower, upper, np.zeros(s), cov, rtol=1e-5, seed=4)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    p, err = first
    assert p[1] == 0 and err[1] == 0
    assert p[2] == 1 and err[2] == 0
    one_d = stats.norm.cdf(upper[3, 0], scale=np.sqrt(cov[0, 0])) - stats.norm.cdf(lower[3, 0], scale=np.sqrt(cov[0, 0]))
    assert abs(p[3] - one_d) < 1e-14 and err[3] == 0


def test_empty_lower_dimensional_and_whole_space():
    eye = np.eye(3)
    empty = gauss.polytope_moments(np.vstack([eye[0], -eye[0]]), [-1.0, -1.0], np.zeros(3), eye)
    assert empty.log_mass == -np.inf and np.all(np.isnan(empty.mean)) and np.all(np.isnan(empty.cov))
    flat = gauss.polytope_moments(np.vstack([eye[1], -eye[1]]), [0.5, -0.5], np.zeros(3), eye)
    assert flat.log_mass == -np.inf
    whole = gauss.polytope_moments(np.zeros((0, 3)), np.zeros(0), np.ones(3), 2 * eye)
    assert whole.log_mass == 0.0 and np.allclose(whole.mean, 1) and np.allclose(whole.cov, 2 * eye)
    loose = gauss.polytope_moments(eye, [np.inf, np.inf, np.inf], np.zeros(3), eye)
    assert loose.log_mass == 0.0


def test_batched_form_matches_single_calls_and_is_deterministic():
    rng = np.random.default_rng(4)
    for s in [1, 2, 3]:
        G, h, mean, cov = random_polytope(rng, s, 5)
        means = mean + rng.standard_normal((6, s))
        batch = gauss.polytope_moments(G, h, means, cov, seed=7)
        assert batch.log_mass.shape == (6,) and batch.mean.shape == (6, s) and batch.cov.shape == (6, s, s)
        for k in range(6):
            one = gauss.polytope_moments(G, h, means[k], cov, seed=7)
            assert one.log_mass == batch.log_mass[k]
            assert np.array_equal(one.mean, batch.mean[k])
        offsets = h + rng.uniform(0, 1, (3, len(h)))
        again = gauss.polytope_moments(G, offsets, mean, cov, seed=7)
        assert again.log_mass.shape == (3,)
        assert np.array_equal(again.log_mass, gauss.polytope_moments(G, offsets, mean, cov, seed=7).log_mass)


def test_bad_input_raises_value_error():
    eye = np.eye(2)
    G, h = np.vstack([eye, -eye]), np.ones(4)
    with pytest.raises(ValueError, match="symmetric"):
        gauss.polytope_moments(G, h, np.zeros(2), [[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match="positive definite"):
        gauss.polytope_moments(G, h, np.zeros(2), [[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="shape"):
        gauss.polytope_moments(G, np.ones(3), np.zeros(2), eye)
    with pytest.raises(ValueError, match="NaN"):
        gauss.polytope_moments(G, [1.0, np.nan, 1.0, 1.0], np.zeros(2), eye)
    with pytest.raises(ValueError, match="shape"):
        gauss.mvn_cdf(np.zeros((2, 2)), np.ones((3, 2)), np.zeros(2), eye)
    with pytest.raises(ValueError):
        gauss.polytope_moments(G, h, np.zeros(2), eye, rtol=0)


polytopes = st.integers(0, 2**32 - 1).flatmap(
    lambda seed: st.tuples(st.just(seed), st.integers(1, 4), st.integers(0, 7)))


@settings(max_examples=40, deadline=None)
@given(polytopes)
def test_properties_mass_redundancy_splitting_affine_invariance(case):
    seed, s, m = case
    rng = np.random.default_rng(seed)
    G, h, mean, cov = random_polytope(rng, s, m)
    rtol = 1e-6
    base = gauss.polytope_moments(G, h, mean, cov, rtol=rtol)
    assert base.log_mass <= 1e-12
    if base.log_mass == -np.inf:
        return
    tol = lambda *r: 10 * sum(x.error for x in r) + 1e-9  # noqa: E731
    # A redundant row (a loosened copy of a combination of rows) changes nothing.
    if m >= 2:
        extra = gauss.polytope_moments(np.vstack([G, G[0] + G[1]]), np.r_[h, h[0] + h[1] + 0.5], mean, cov, rtol=rtol)
        assert abs(extra.log_mass - base.log_mass) <= tol(base, extra)
    # Splitting by a hyperplane through the mean adds up.
    d = rng.standard_normal(s)
    left = gauss.polytope_moments(np.vstack([G, d]), np.r_[h, d @ mean], mean, cov, rtol=rtol)
    right = gauss.polytope_moments(np.vstack([G, -d]), np.r_[h, -d @ mean], mean, cov, rtol=rtol)
    total = np.logaddexp(left.log_mass, right.log_mass)
    assert abs(total - base.log_mass) <= tol(base, left, right)
    # Affine invariance: z -> A z + c maps the polyhedron and the Gaussian together.
    A = rng.standard_normal((s, s)) + 2 * np.eye(s)
    c = rng.standard_normal(s)
    Ainv = np.linalg.inv(A)
    moved = gauss.polytope_moments(G @ Ainv, h + G @ Ainv @ c, A @ mean + c, A @ cov @ A.T, rtol=rtol)
    assert abs(moved.log_mass - base.log_mass) <= tol(base, moved)
    if s <= 2:
        assert np.allclose(moved.mean, A @ base.mean + c, atol=1e-7 * (1 + np.abs(moved.mean).max()))


def _vertex_cone_reference(G, h, mean, cov, active):
    """Mass and conditional mean of N(mean, cov) on a polygon whose mass sits at one vertex, far
    out (thousands of deviations): the density there is exp(-g.u - u^T P u / 2) in the offset u
    from the vertex, over the cone of the two active edges; the other edges are ~1e4 decay
    lengths away. Two-dimensional adaptive quadrature in the cone's own coordinates."""
    P = np.linalg.inv(cov)
    vertex = np.linalg.solve(G[active], h[active])
    g = P @ (vertex - mean)

    def along(on, other):  # the edge's direction into the polygon
        t = np.array([-G[on][1], G[on][0]])
        return t if G[other] @ t <= 0 else -t

    e1, e2 = along(active[0], active[1]), along(active[1], active[0])
    rate1, rate2 = g @ e1, g @ e2
    assert rate1 > 0 and rate2 > 0

    def integral(k):
        f = lambda b, a: np.exp(-(rate1 * a + rate2 * b) - 0.5 * (a * e1 + b * e2) @ P @ (a * e1 + b * e2)) * k(a * e1 + b * e2)
        return integrate.dblquad(f, 0, 60 / rate1, 0, 60 / rate2, epsabs=0, epsrel=1e-12)[0]

    mass = integral(lambda u: 1.0)
    offset = np.array([integral(lambda u: u[0]), integral(lambda u: u[1])]) / mass
    log_mass = stats.multivariate_normal(mean, cov).logpdf(vertex) + np.log(abs(np.linalg.det(np.stack([e1, e2], 1))) * mass)
    return log_mass, vertex + offset, 1.0 / min(rate1, rate2)


def test_far_thin_wedge_sliced_along_an_edge_keeps_its_mass_and_mean():
    # A posterior region ~1.1e4 deviations from its Gaussian's mean, the mass at a vertex whose
    # wedge the slicing quadrature takes along an edge: the Gaussian along that edge bounded the
    # integrand only loosely (the slices' own masses decay ~10x faster), and 400 pieces spread
    # over that range left the bulk a few nodes: log mass 9.7 nats low, mean 14 spreads off.
    G = np.array([[0.5466163172938734, 0.8373831868792707], [-0.7435177683999556, 0.668716179012853],
                  [-0.9992161004779284, 0.03958768174170187], [0.9843112600151631, -0.17644076458506358],
                  [0.9718872517151793, 0.2354467454723373]])
    h = np.array([-0.17902700426944368, 0.7902377607498405, 2.0239322063904215, 0.24372566543486415,
                  0.011699996593360613])
    mean = np.array([7.0452011943162365, -3.551999801906469])
    cov = np.array([[4.030040419217235e-07, -1.714669854540068e-07], [-1.7146698545400676e-07, 1.691343068581954e-07]])
    log_mass, cond_mean, spread = _vertex_cone_reference(G, h, mean, cov, active=[4, 3])
    got = gauss.polytope_moments(G, h, mean, cov)
    # The log mass (5.9e7 nats) to its rounding, eps |log mass|; the mean to a thousandth of
    # the conditional spread (~2e-7 here), far above the coordinates' rounding (~1e-16).
    assert abs(got.log_mass - log_mass) <= 1e-13 * abs(log_mass)
    np.testing.assert_allclose(got.mean, cond_mean, rtol=0, atol=1e-3 * spread)
    assert np.all(np.linalg.eigvalsh(got.cov) > 0)
