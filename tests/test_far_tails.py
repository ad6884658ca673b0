"""Truncated moments far in a tail (S >= 3): boxes at distance d from the mean, against
products of one-dimensional truncated normals in mpmath, and far random polytopes.

Tolerances. S = 3 moments converge until Gauss and Kronrod disagree by at most `rtol` (mean
against the conditional standard deviation, covariance against products of them) and the
tails left out weigh at most `1e-3 rtol`; on analytic panels Kronrod's own error is far below
that disagreement (QUADPACK's estimate, `|K - G| (200 |K - G|)^1.5`, is ~1e-12 at 1e-6), so
the mean is checked to `1e-3 rtol` standard deviations and the covariance to `rtol`. On top
come the limits of double precision: a mean of size `|m|` is known to `eps |m|` (at d = 1e6
that is 2e-10, against a standard deviation of 1e-6), and where the box is rotated, a face at
distance `d` is placed to `eps d` by the input's own rounding, and a covariance whose
eigenvalues span `d^2` is stored in a frame not aligned with them to `eps` times its largest.
"""

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import exactem
from exactem import gauss



@pytest.fixture(autouse=True)
def _sixty_digits():
    """The references at 60 digits, whatever precision another test left set."""
    with mp.workdps(60):
        yield
EPS = np.finfo(float).eps
DISTANCES = [0.0, 3.0, 10.0, 100.0, 1e3, 1e4, 1e6]
RTOL = 1e-6


def truncated_normal(a, b):
    """(log mass, mean, variance) of N(0, 1) on [a, b], 60 digits."""
    a, b = mp.mpf(a), mp.mpf(b)
    if a > 0:
        mass = (mp.erfc(a / mp.sqrt(2)) - mp.erfc(b / mp.sqrt(2))) / 2
    else:
        mass = (mp.erfc(-b / mp.sqrt(2)) - mp.erfc(-a / mp.sqrt(2))) / 2
    mean = (mp.npdf(a) - mp.npdf(b)) / mass
    second = 1 + (a * mp.npdf(a) - b * mp.npdf(b)) / mass
    return mp.log(mass), mean, second - mean * mean


def box(s, d):
    """[d, d+1] x [-1, 2] x [0, 0.5] (x [-2, -1]) and its reference moments under N(0, I)."""
    lo = [d, -1.0, 0.0, -2.0][:s]
    hi = [d + 1.0, 2.0, 0.5, -1.0][:s]
    ref = [truncated_normal(a, b) for a, b in zip(lo, hi)]
    return np.array(lo), np.array(hi), sum(r[0] for r in ref), [r[1] for r in ref], [r[2] for r in ref]


@pytest.mark.parametrize("d", DISTANCES)
def test_box_in_three_dimensions(d):
    check_box(3, d, mass_rtol=1e-3 * RTOL)


def check_box(s, d, mass_rtol):
    """The box's moments against mpmath: the mean to 1e-3 rtol standard deviations and the
    covariance to rtol (module docstring), the log mass to `mass_rtol` relative."""
    lo, hi, log_mass, mean, var = box(s, d)
    G = np.vstack([np.eye(s), -np.eye(s)])
    r = gauss.polytope_moments(G, np.r_[hi, -lo], np.zeros(s), np.eye(s), rtol=RTOL)
    assert abs(r.log_mass - float(log_mass)) <= mass_rtol * max(1.0, abs(float(log_mass))) + 1e-12
    sd = [mp.sqrt(v) for v in var]
    for k in range(s):
        tol = 1e-3 * RTOL * sd[k] + 4 * EPS * abs(mean[k])
        assert abs(r.mean[k] - mean[k]) <= tol, (k, r.mean[k], mean[k])
        for j in range(s):
            expected = var[k] if j == k else 0
            assert abs(r.cov[k, j] - expected) <= RTOL * sd[k] * sd[j], (k, j, r.cov[k, j], expected)


def rotated_box(d):
    """The box seen through z = m + A y, y ~ N(0, I), A = L R with R a rotation and L unit lower
    triangular, chosen so that every input is exact in binary: the rows of G = G_y A^-1 scaled
    by 5 are integers times dyadics (R = P / 5 with P integer), h = 5 h_y + G m, cov = L L^T."""
    P = np.array([[3.0, -4.0, 0.0], [4.0, 3.0, 0.0], [0.0, 0.0, 5.0]])  # 5 R, R orthogonal
    L = np.array([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.25, -0.5, 1.0]])
    m = np.array([0.5, -0.25, 1.0])
    L_inv = np.linalg.inv(L)  # dyadic, exact
    assert np.array_equal(L_inv @ L, np.eye(3))
    rows = P.T @ L_inv  # = 5 A^-1
    lo, hi, log_mass, mean, var = box(3, d)
    G = np.vstack([rows, -rows])
    h_y = np.r_[5 * hi, -5 * lo]
    h = h_y + G @ m
    assert np.array_equal(h - G @ m, h_y)  # exact
    return G, h, m, L @ L.T, mp.matrix(L) * mp.matrix(P) / 5, log_mass, mean, var


@pytest.mark.parametrize("d", DISTANCES)
def test_rotated_correlated_box_in_three_dimensions(d):
    G, h, m, cov, A, log_mass, mean, var = rotated_box(d)
    r = gauss.polytope_moments(G, h, m, cov, rtol=RTOL)
    assert abs(r.log_mass - float(log_mass)) <= 1e-3 * RTOL * max(1.0, abs(float(log_mass))) + 1e-12
    # Back to the box's frame, exactly (mpmath): y = A^-1 (z - m), C_y = A^-1 C A^-T.
    A_inv = A**-1
    y = A_inv * (mp.matrix(r.mean.tolist()) - mp.matrix(m.tolist()))
    C = A_inv * mp.matrix(r.cov.tolist()) * A_inv.T
    sd = [mp.sqrt(v) for v in var]
    # The whitened rows are 0.6, 0.8 rounded: faces placed to ~eps d, moving the mean by as
    # much; the covariance stored in the z frame to eps times its largest entry (~1),
    # magnified by |A^-1|^2 (< 10) in the box's frame.
    placement = 64 * EPS * (1.0 + d)
    storage = 64 * EPS * 10 * float(max(abs(x) for x in r.cov.ravel()))
    for k in range(3):
        tol = 1e-3 * RTOL * sd[k] + placement + 4 * EPS * abs(mean[k])
        assert abs(y[k] - mean[k]) <= tol, (k, y[k], mean[k], tol)
        for j in range(3):
            expected = var[k] if j == k else 0
            assert abs(C[k, j] - expected) <= RTOL * sd[k] * sd[j] + storage, (k, j, C[k, j], expected)


@pytest.mark.parametrize("d", [0.0, 3.0, 10.0])
def test_box_in_four_dimensions_near(d):
    """S = 4 (quasi-Monte Carlo masses, the divergence theorem's moments) where rounding does not
    dominate: the moments carry the masses' error amplified by the terms' size against the
    result (~d^2 for the mean against its spread, ~d^4 for the covariance), here checked to
    1e-3 of the spread."""
    lo, hi, log_mass, mean, var = box(4, d)
    G = np.vstack([np.eye(4), -np.eye(4)])
    r = gauss.polytope_moments(G, np.r_[hi, -lo], np.zeros(4), np.eye(4), rtol=RTOL)
    sd = np.sqrt(np.array(var, dtype=float))
    assert np.all(np.abs(r.mean - np.array(mean, dtype=float)) <= 1e-3 * sd)
    assert np.all(np.abs(r.cov - np.diag(np.array(var, dtype=float))) <= 1e-3 * np.outer(sd, sd))


@pytest.mark.parametrize("d", [30.0, 100.0, 1e3, 1e4, 1e6])
def test_box_in_four_dimensions_far(d):
    """Far out the S = 4 divergence theorem's terms cancel beyond what rounding leaves, and the
    moments come from slices across the nearest point's direction, three-dimensional slices by
    the S = 3 engine at a tenth of rtol (their moments to 1e-3 of that). The box's nearest point
    is not on an axis, so the slices change along the slicing coordinate and its marginal has a
    kink where they stop growing, at a vertex's projection: a panel boundary, so each panel is
    analytic and its Kronrod estimate far better than its difference from Gauss (<= rtol), as
    at S = 3. The mass is the quasi-Monte Carlo one (to rtol)."""
    check_box(4, d, mass_rtol=RTOL)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    log_d=st.floats(0.5, 5.0),
    m=st.integers(4, 8),
)
def test_far_random_polytopes_have_positive_definite_covariance_and_mean_inside(seed, log_d, m):
    """Random polytopes around a point at distance d = 10^log_d from the mean (random rows,
    offsets 0.1 to 2 beyond that point), under a correlated Gaussian."""
    check_far_random_polytope(seed, log_d, m, 3)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), log_d=st.floats(1.5, 5.0), m=st.integers(4, 8))
def test_far_random_polytopes_in_four_dimensions(seed, log_d, m):
    """As above for S = 4, whose far moments come from slices by the S = 3 engine (about a
    second each where the polytope is a thin cone with its apex at the nearest point)."""
    check_far_random_polytope(seed, log_d, m, 4)


def check_far_random_polytope(seed, log_d, m, s):
    rng = np.random.default_rng(seed)
    d = 10.0**log_d
    direction = rng.standard_normal(s)
    centre = d * direction / np.linalg.norm(direction)
    G = rng.standard_normal((m, s))
    G /= np.linalg.norm(G, axis=1, keepdims=True)
    h = G @ centre + rng.uniform(0.1, 2.0, m)
    B = rng.standard_normal((s, s))
    cov = B @ B.T / s + 0.5 * np.eye(s)
    mean = rng.standard_normal(s)
    r = gauss.polytope_moments(G, h, mean, cov, rtol=1e-6)
    if not np.isfinite(r.log_mass):
        return
    assert np.all(np.isfinite(r.mean)) and np.all(np.isfinite(r.cov))
    # Positive definite: a Cholesky factor exists (the smallest eigenvalue, ~1/d^2 = 1e-10 at
    # the farthest, is well above the covariance's rounding, eps times its largest).
    np.linalg.cholesky(r.cov)
    # Inside, to the rounding of the rows at that distance.
    slack = 64 * EPS * (np.abs(h) + np.abs(G) @ np.abs(r.mean))
    assert np.all(G @ r.mean <= h + slack)
