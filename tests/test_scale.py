"""Right at any scale: log p(x), posteriors and E-step statistics against mpmath references when
weights, data or noise are scaled by large factors (noise variance down to 1e-12 and beyond).

References (all independent of exactem's algebra):
- S = 1: mpmath quadrature of N(z; 0, 1) N(x; g(z), Psi) over each region (40 digits), the
  integrand evaluated directly from the region's affine map, cut at the breakpoints and around
  the integrand's peak.
- S = 2 rank-deficient: a linear decoder, whose marginal is N(x; b, Psi + A A^T) and posterior
  Gaussian, in closed form with 60-digit mpmath linear algebra; a ReLU net g(z) = f(u . z),
  which reduces to a 1-D mpmath quadrature along u (the orthogonal direction integrates out).
- Scale equivariance: scaling the last layer by c, x by c and the noise by c^2 changes log p by
  exactly -D log c.
The target accuracy is 1e-9 relative (of max(1, |log p|)), the issue's requirement; the
methods' own errors are ~1e-12 there.
"""

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import exactem
from exactem.gauss import polytope_moments

RTOL = 1e-9


def scaled(decoder, factor, activation="leaky_relu"):
    """The decoder with every weight and bias multiplied by ``factor``."""
    return exactem.Decoder([w * factor for w in decoder.weights], [b * factor for b in decoder.biases],
                           activation=activation, alpha=decoder.alpha)


def interval_of(partition, q):
    G, h = partition.facets(q)
    lo, hi = -mp.inf, mp.inf
    for g, c in zip(G[:, 0], h):
        if g > 0:
            hi = min(hi, mp.mpf(float(c)) / mp.mpf(float(g)))
        else:
            lo = max(lo, mp.mpf(float(c)) / mp.mpf(float(g)))
    return lo, hi


def piecewise_reference(pieces, x, noise_var, moments=False, dps=30):
    """``(log p, E[t], E[t^2], [log of each piece's mass])`` of t ~ N(0, 1), x | t ~ N(a t + b, Psi),
    g piecewise affine: ``pieces`` lists ``(lo, hi, a, b)`` in mpmath numbers (moments NaN unless
    asked for). Quadrature with breakpoints at the piece ends and around each piece's own peak
    (the integrand can be far narrower than the piece). A piece is skipped where the bound
    ``max f * sqrt(2 pi) sd`` on its integral is below e^-60 of the largest such bound."""
    with mp.workdps(dps):
        xs = [mp.mpf(float(v)) for v in x]
        psi = [mp.mpf(float(v)) for v in np.broadcast_to(noise_var, (len(x),))]
        log_norm = -mp.mpf(len(x) + 1) / 2 * mp.log(2 * mp.pi) - sum(mp.log(p) for p in psi) / 2
        prepared = []
        for lo, hi, a, b in pieces:
            precision = 1 + sum(ai * ai / p for ai, p in zip(a, psi))
            peak = sum(ai * (xi - bi) / p for ai, xi, bi, p in zip(a, xs, b, psi)) / precision
            sd = 1 / mp.sqrt(precision)

            def log_f(t, a=a, b=b):
                return log_norm - t * t / 2 - sum((xi - ai * t - bi) ** 2 / (2 * p) for ai, xi, bi, p in zip(a, xs, b, psi))

            top = log_f(min(max(peak, lo), hi))
            prepared.append((lo, hi, peak, sd, log_f, top, top + mp.log(mp.sqrt(2 * mp.pi) * sd)))
        best = max(p[-1] for p in prepared)
        totals = [mp.mpf(0)] * 3
        piece_masses = []
        for lo, hi, peak, sd, log_f, top, bound in prepared:
            if bound < best - 60:
                piece_masses.append(-mp.inf)
                continue
            cuts = [peak + k * sd for k in (-40, -8, -2, 0, 2, 8, 40)]
            points = sorted(set([lo, hi] + [c for c in cuts if lo < c < hi]))
            mass = None
            for k in range(3 if moments else 1):
                value = mp.exp(top) * mp.quad(lambda t: t ** k * mp.exp(log_f(t) - top), points)
                totals[k] += value
                mass = value if k == 0 else mass
            piece_masses.append(mp.log(mass) if mass > 0 else -mp.inf)
        moment = (lambda k: float(totals[k] / totals[0])) if moments else (lambda k: float("nan"))
        return float(mp.log(totals[0])), moment(1), moment(2), [float(m) for m in piece_masses]


def s1_reference(decoder, noise_var, x, moments=False):
    """The S = 1 reference over the partition's regions (their A and b taken as exact)."""
    partition = decoder.regions()
    pieces = []
    for q in range(len(partition)):
        lo, hi = interval_of(partition, q)
        pieces.append((lo, hi, [mp.mpf(float(v)) for v in partition.A[q][:, 0]], [mp.mpf(float(v)) for v in partition.b[q]]))
    return piecewise_reference(pieces, x, noise_var, moments)


def close(got, want, rtol=RTOL):
    return abs(got - want) <= rtol * max(1.0, abs(want))


@pytest.mark.parametrize("factor", [1.0, 1e2, 1e3, 1e4])
def test_large_weights_s1_log_likelihood_posterior_and_e_step(factor):
    # Weights x1e4 on three layers put x ~ 1e12 against noise sd 0.3: the completed square
    # (x - b)^T Psi^-1 (x - b) - mu^T Sigma^-1 mu cancels ~1e25 down to ~10 (it was off by 9e8
    # nats); the residual form at mu keeps 1e-9.
    decoder = scaled(exactem.Decoder.random([1, 16, 16, 2], seed=0), factor)
    model = exactem.DGN(decoder, 0.1)
    X, _ = model.sample(1, seed=2)
    log_p = model.log_likelihood(X)
    stats = model.e_step(X)
    for n, x in enumerate(X):
        want, mean, second, piece_log_masses = s1_reference(decoder, 0.1, x, moments=True)
        assert close(log_p[n], want), (factor, log_p[n], want)
        post = model.posterior(x)
        assert close(post.log_likelihood, want)
        # The posterior mean and variance, relative to the posterior's own spread.
        sd = np.sqrt(max(second - mean * mean, 0.0))
        assert abs(post.mean[0] - mean) <= RTOL * (abs(mean) + sd) + 1e-6 * sd
        # E-step: each region's weight, against the reference's region masses.
        weights = np.exp(np.array(piece_log_masses) - want)
        got = stats.m0.toarray()[n]
        assert np.allclose(got, weights, rtol=0, atol=1e-9), (got, weights)


@pytest.mark.parametrize("noise", [1e-6, 1e-9, 1e-12])
def test_tiny_noise_s1(noise):
    decoder = exactem.Decoder.random([1, 8, 8, 3], seed=4)
    model = exactem.DGN(decoder, noise)
    X, _ = model.sample(2, seed=5)
    log_p = model.log_likelihood(X)
    for n, x in enumerate(X):
        want = s1_reference(decoder, noise, x)[0]
        assert close(log_p[n], want), (noise, log_p[n], want)


@pytest.mark.parametrize("factor", [1e3, 1e6])
def test_data_far_from_the_manifold_s1(factor):
    decoder = exactem.Decoder.random([1, 8, 8, 3], seed=4)
    model = exactem.DGN(decoder, 0.05)
    X, _ = model.sample(2, seed=6)
    X = X * factor
    log_p = model.log_likelihood(X)
    for n, x in enumerate(X):
        want = s1_reference(decoder, 0.05, x)[0]
        assert close(log_p[n], want), (factor, log_p[n], want)


def test_noise_1e_minus_300_on_the_manifold():
    # g(z) = (1, 1, 1) z, x = (t, t, t) exactly: log p = log N(x; 0, psi I + 1 1^T), about +1e3.
    # The completed square subtracts numbers of size 1e300 (relative error was 7e16).
    decoder = exactem.Decoder([np.ones((3, 1))], [np.zeros(3)], activation="linear")
    psi, t = 1e-300, 0.75
    model = exactem.DGN(decoder, psi)
    got = model.log_likelihood(np.full((1, 3), t))[0]
    with mp.workdps(50):
        p = mp.mpf(psi)
        # det(psi I + 1 1^T) = psi^2 (psi + 3); x^T (psi I + 1 1^T)^-1 x = 3 t^2 / (psi + 3).
        want = float(-mp.mpf(3) / 2 * mp.log(2 * mp.pi) - (2 * mp.log(p) + mp.log(p + 3)) / 2 - 3 * mp.mpf(t) ** 2 / (2 * (p + 3)))
    assert close(got, want), (got, want)


def linear_reference(x, A, b, noise):
    """log N(x; b, noise I + A A^T), and the Gaussian posterior's mean and covariance."""
    with mp.workdps(60):
        D, S = A.shape
        Am = mp.matrix([[mp.mpf(float(v)) for v in row] for row in A])
        C = Am * Am.T + mp.mpf(noise) * mp.eye(D)
        r = mp.matrix([mp.mpf(float(x[i])) - mp.mpf(float(b[i])) for i in range(D)])
        quad = (r.T * mp.lu_solve(C, r))[0]
        log_p = -mp.mpf(D) / 2 * mp.log(2 * mp.pi) - mp.log(mp.det(C)) / 2 - quad / 2
        precision = mp.eye(S) + Am.T * Am / mp.mpf(noise)
        cov = precision ** -1
        mean = cov * (Am.T * r) / mp.mpf(noise)
        return (float(log_p), np.array([float(v) for v in mean]),
                np.array([[float(cov[i, j]) for j in range(S)] for i in range(S)]))


@pytest.mark.parametrize("noise", [1e-2, 1e-6, 1e-8, 1e-12, 1e-16])
def test_rank_deficient_linear_decoder(noise):
    # W = ones((3, 2)): A^T Psi^-1 A has rank one, so I + A^T Psi^-1 A has condition ~6 / noise
    # (it was 0.56 nats off at 1e-8 and not positive definite in floating point at 1e-16).
    W, b = np.ones((3, 2)), np.array([0.5, -0.25, 0.125])
    model = exactem.DGN(exactem.Decoder([W], [b], activation="linear"), noise)
    rng = np.random.default_rng(0)
    x = b + W @ np.array([0.3, -0.7]) + np.sqrt(noise) * rng.standard_normal(3)
    want, mean, cov = linear_reference(x, W, b, noise)
    assert close(model.log_likelihood(x[None])[0], want)
    post = model.posterior(x)
    # The posterior is a needle: sd 1 along (1, -1), sqrt(noise / 6) along (1, 1).
    for v in (np.array([1.0, 1.0]) / np.sqrt(2), np.array([1.0, -1.0]) / np.sqrt(2)):
        spread = np.sqrt(v @ cov @ v)
        assert abs(v @ (post.mean - mean)) <= 1e-6 * spread + RTOL * abs(v @ mean)
        # The posterior's covariance comes from E[z z^T] - E[z] E[z]^T over the region: its
        # needle direction keeps only ~eps |E[z]|^2 absolute (an open problem, see notes).
        assert abs(v @ post.cov @ v - spread ** 2) <= 1e-6 * spread ** 2 + 8 * np.finfo(float).eps * (mean @ mean)


def test_rank_deficient_linear_decoder_in_three_dimensions():
    W, b = np.ones((4, 3)), np.zeros(4)
    for noise in [1e-6, 1e-12]:
        model = exactem.DGN(exactem.Decoder([W], [b], activation="linear"), noise)
        x = np.full(4, 0.4) + np.sqrt(noise) * np.array([0.3, -1.0, 0.2, 0.5])
        assert close(model.log_likelihood(x[None])[0], linear_reference(x, W, b, noise)[0])


def rank_one_pieces(W1, b1, W2, b2, u):
    """The S = 2 net g(z) = W2 relu(W1 z + b1) + b2 with every row of W1 along u, as 1-D pieces in
    t = u . z / |u| (exact mpmath affine maps)."""
    norm = np.linalg.norm(u)
    slopes = W1 @ u / norm  # pre-activation i = slopes[i] t + b1[i]
    breaks = sorted(-b1[i] / slopes[i] for i in range(len(b1)) if slopes[i] != 0)
    ends = [-mp.inf] + [mp.mpf(float(v)) for v in breaks] + [mp.inf]
    pieces = []
    for lo, hi in zip(ends[:-1], ends[1:]):
        t = (lo + hi) / 2 if lo != -mp.inf and hi != mp.inf else (hi - 1 if lo == -mp.inf else lo + 1)
        if lo == -mp.inf and hi == mp.inf:
            t = mp.mpf(0)
        on = [mp.mpf(float(slopes[i])) * t + mp.mpf(float(b1[i])) > 0 for i in range(len(b1))]
        a = [sum(mp.mpf(float(W2[k, i])) * mp.mpf(float(slopes[i])) for i in range(len(b1)) if on[i]) for k in range(W2.shape[0])]
        b = [sum(mp.mpf(float(W2[k, i])) * mp.mpf(float(b1[i])) for i in range(len(b1)) if on[i]) + mp.mpf(float(b2[k])) for k in range(W2.shape[0])]
        pieces.append((lo, hi, a, b))
    return pieces


@pytest.mark.parametrize("noise", [1e-2, 1e-6, 1e-8, 1e-12])
def test_rank_one_relu_net_in_two_dimensions(noise):
    # g(z) = f(u . z): every region has rank one (3.7e-3 nats off at 1e-6, 5.8 at 1e-8).
    rng = np.random.default_rng(1)
    u = np.array([0.6, 0.8])
    W1 = np.outer([1.0, -1.0, 2.0], u)
    b1 = np.array([0.1, 0.2, -0.3])
    W2, b2 = rng.standard_normal((3, 3)), rng.standard_normal(3)
    model = exactem.DGN(exactem.Decoder([W1, W2], [b1, b2], activation="relu"), noise)
    pieces = rank_one_pieces(W1, b1, W2, b2, u)
    X, _ = model.sample(2, seed=3)
    log_p = model.log_likelihood(X)
    for n, x in enumerate(X):
        want, mean_t, _, _ = piecewise_reference(pieces, x, noise, moments=True)
        assert close(log_p[n], want), (noise, log_p[n], want)
        # E[u . z | x] / |u| = E[t | x]; across u the posterior stays N(0, 1).
        post = model.posterior(x)
        assert abs(post.mean @ u - mean_t) <= 1e-6 * np.sqrt(noise) + RTOL * abs(mean_t)
        assert abs(post.mean @ np.array([-0.8, 0.6])) <= 1e-9


@pytest.mark.parametrize("radius", [1e3, 1e6])
def test_far_points_in_two_dimensions(radius):
    # |x| = 1e3 and 1e6 from a rank-one net's manifold: the same 1-D reference.
    u = np.array([0.6, 0.8])
    W1, b1 = np.outer([1.0, -1.0, 2.0], u), np.array([0.1, 0.2, -0.3])
    W2 = np.array([[1.0, 0.5, -0.2], [0.3, -1.0, 0.4], [-0.6, 0.2, 1.0]])
    b2 = np.array([0.1, -0.2, 0.3])
    model = exactem.DGN(exactem.Decoder([W1, W2], [b1, b2], activation="relu"), 0.1)
    x = radius * np.array([0.48, -0.6, 0.64])
    want, mean_t, second_t, _ = piecewise_reference(rank_one_pieces(W1, b1, W2, b2, u), x, 0.1, moments=True)
    assert close(model.log_likelihood(x[None])[0], want)
    stats = model.e_step(x[None])
    assert abs(stats.m0.sum() - 1.0) < 1e-12
    post = model.posterior(x)
    sd = np.sqrt(max(second_t - mean_t ** 2, 0.0))
    assert abs(post.mean @ u - mean_t) <= 1e-6 * sd + RTOL * abs(mean_t)


@settings(max_examples=12, deadline=None)
@given(log_factor=st.floats(0.0, 6.0), s=st.sampled_from([1, 2]))
def test_scaling_output_data_and_noise_together_shifts_log_p_by_d_log_c(log_factor, s):
    # Last layer x c, x x c, noise x c^2: p_c(c x) = p(x) / c^D exactly (the same regions, the
    # same posterior), for c up to 1e6.
    c = 10.0 ** log_factor
    base = exactem.Decoder.random([s, 6, 3], seed=7)
    weights, biases = base.weights, base.biases
    weights[-1], biases[-1] = weights[-1] * c, biases[-1] * c
    big = exactem.Decoder(weights, biases, alpha=base.alpha)
    model = exactem.DGN(base, 0.05)
    X, _ = model.sample(3, seed=8)
    want = model.log_likelihood(X) - 3 * np.log(c)
    got = exactem.DGN(big, 0.05 * c * c).log_likelihood(X * c)
    assert np.allclose(got, want, rtol=RTOL, atol=RTOL)


@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_truncated_moments_far_in_a_tail(s):
    # Half-space z_0 <= 0 with the mean 1e6 away: E[z_0 | z_0 <= 0] = -1/d (1 - 2/d^2 + ...),
    # Var = 1/d^2 (1 - ...); the other coordinates stay N(0, 1). mean 19.8 before for S >= 2.
    d = 1e6
    G = np.zeros((1, s))
    G[0, 0] = 1.0
    mean = np.zeros(s)
    mean[0] = d
    got = polytope_moments(G, [0.0], mean, np.eye(s))
    with mp.workdps(40):
        t = mp.mpf(d)
        log_mass = mp.log(mp.ncdf(-t))
        ratio = mp.npdf(t) / mp.ncdf(-t)  # E[z_0 - d | ...] = -ratio
        want_mean = float(t - ratio)
        want_var = float(1 - ratio * (ratio - t))
    assert close(got.log_mass, float(log_mass))
    # The conditional mean is a difference of numbers ~1e6: good to ~eps d absolute.
    assert abs(got.mean[0] - want_mean) <= 1e-9 / d + 4 * np.finfo(float).eps * d
    assert np.allclose(got.mean[1:], 0.0)
    assert abs(got.cov[0, 0] - want_var) <= 1e-6 * want_var
    assert np.allclose(got.cov[1:, 1:], np.eye(s - 1))


@pytest.mark.parametrize("s", [2, 3])
@pytest.mark.parametrize("factor", [1e-300, 1e-200, 1e200, 1e300])
def test_polytope_rows_at_any_scale(s, factor):
    rng = np.random.default_rng(0)
    G = rng.standard_normal((s + 2, s))
    h = np.ones(s + 2)
    base = polytope_moments(G, h, np.zeros(s), np.eye(s), rtol=1e-10)
    got = polytope_moments(G * factor, h * factor, np.zeros(s), np.eye(s), rtol=1e-10)
    assert np.isfinite(base.log_mass) and abs(got.log_mass - base.log_mass) <= 1e-9 * max(1.0, abs(base.log_mass))
    assert np.allclose(got.mean, base.mean, atol=1e-9)
    # Rows scaled differently from one another: the same polyhedron too.
    scales = np.array([1e-300, 1e300, 1.0, 1e-150, 3e200][: s + 2])
    mixed = polytope_moments(G * scales[:, None], h * scales, np.zeros(s), np.eye(s), rtol=1e-10)
    assert abs(mixed.log_mass - base.log_mass) <= 1e-9 * max(1.0, abs(base.log_mass))


def test_zero_rows_constrain_nothing_or_empty_the_polytope():
    G = np.array([[1.0, 0.0], [0.0, 0.0]])
    half = polytope_moments(G[:1], [0.5], np.zeros(2), np.eye(2))
    assert polytope_moments(G, [0.5, 0.0], np.zeros(2), np.eye(2)).log_mass == pytest.approx(half.log_mass, abs=1e-15)
    assert polytope_moments(G, [0.5, -1e-300], np.zeros(2), np.eye(2)).log_mass == -np.inf
