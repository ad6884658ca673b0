"""Exact ELBO, posterior gap and IWAE bound of Gaussian encoders (DGN.elbo, posterior_gap,
iwae_bound) against independent references: Monte Carlo ELBOs computed here with a plain numpy
forward pass, closed forms for linear decoders, and the exact log-likelihood."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import exactem as ex
from reference import forward

LOG_2PI = np.log(2 * np.pi)


def mc_elbo(model, x, mean, cov, n_draws=1_000_000, seed=0):
    """Monte Carlo ELBO of q = N(mean, cov) at x with its standard error: plain numpy draws,
    the reference forward pass and Gaussian log densities (nothing from exactem but weights)."""
    rng = np.random.default_rng(seed)
    s = len(mean)
    chol = np.linalg.cholesky(cov)
    eps = rng.standard_normal((n_draws, s))
    z = mean + eps @ chol.T
    dec = model.decoder
    g, _ = forward(dec.weights, dec.biases, dec.slopes, z)
    psi = np.broadcast_to(np.asarray(model.noise_var, dtype=float), (len(x),))
    log_px_z = -0.5 * (len(x) * LOG_2PI + np.sum(np.log(psi)) + np.sum((x - g) ** 2 / psi, axis=1))
    log_pz = -0.5 * (s * LOG_2PI + np.sum(z**2, axis=1))
    log_q = -0.5 * (s * LOG_2PI + np.sum(eps**2, axis=1)) - np.sum(np.log(np.diag(chol)))
    values = log_px_z + log_pz - log_q
    return values.mean(), values.std(ddof=1) / np.sqrt(n_draws)


def full(var):
    """Diagonal variances (n, S) as covariances (n, S, S)."""
    return np.stack([np.diag(v) for v in var])


CASES = [
    # (widths, activation, noise, diagonal q?)
    ([1, 8, 8, 3], "leaky_relu", 0.1, True),
    ([1, 6, 6, 2], "abs", np.array([0.05, 0.3]), False),
    ([2, 8, 8, 4], "leaky_relu", 0.2, True),
    ([2, 6, 6, 3], "relu", np.array([0.1, 0.2, 0.05]), False),
    ([3, 6, 4], "leaky_relu", 0.1, True),
    ([3, 5, 3], "abs", 0.2, False),
]


@pytest.mark.parametrize("widths,activation,noise,diagonal", CASES)
def test_exact_elbo_matches_monte_carlo(widths, activation, noise, diagonal):
    s = widths[0]
    dec = ex.Decoder.random(widths, activation=activation, seed=len(widths) + s)
    model = ex.DGN(dec, noise, rtol=1e-7)
    X, Z = model.sample(2, seed=1)
    rng = np.random.default_rng(2)
    # q near the posterior, q far from it (wide and off-centre), and a point far from the data.
    far_x = 20.0 + 10.0 * X[1]
    X = np.vstack([X, far_x])
    mean = np.vstack([Z[0] + 0.05, Z[1] + 3.0, rng.standard_normal(s)])
    var = np.array([np.full(s, 0.02), np.full(s, 2.5), np.full(s, 0.5)])
    if diagonal:
        q_var = var
    else:
        q_var = full(var)
        q_var[:, 0, -1] = q_var[:, -1, 0] = 0.3 * np.sqrt(var[:, 0] * var[:, -1]) if s > 1 else q_var[:, 0, 0]
    value, error = model.elbo(X, mean, q_var, return_error=True)
    for n in range(len(X)):
        cov = q_var[n] if not diagonal else np.diag(var[n])
        expected, se = mc_elbo(model, X[n], mean[n], cov, seed=10 + n)
        assert abs(value[n] - expected) < 4 * se + error[n], (n, value[n], expected, se, error[n])
        if s <= 2:
            # Near machine precision: the error estimate is rounding-sized.
            assert error[n] < 1e-12 * (1 + abs(value[n]))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    s=st.integers(1, 2),
    seed=st.integers(0, 10_000),
    shift=st.floats(-10, 10),
    log_var=st.floats(-20, 4),
    far=st.floats(0, 50),
    activation=st.sampled_from(["relu", "leaky_relu", "abs"]),
)
def test_elbo_never_exceeds_log_likelihood(s, seed, shift, log_var, far, activation):
    dec = ex.Decoder.random([s, 6, 6, 3], activation=activation, seed=seed)
    model = ex.DGN(dec, 0.1)
    X, Z = model.sample(3, seed=seed)
    X[2] += far
    mean, var = Z + shift, np.full((3, s), np.exp(log_var))
    value, error = model.elbo(X, mean, var, return_error=True)
    log_p = model.log_likelihood(X)
    # Allowance: the ELBO's own error estimate and log p(x)'s accuracy. S = 1, 2 region masses are
    # good to ~1e-14 relative typically (1e-10 at worst, README), and log p and the gap now take
    # log kappa_q from different forms (the completed square or the residual at mu, whichever
    # its proven bound allows), each exact to its rounding: 1e-12 relative, a margin of 100 on
    # the typical accuracy, scaled by |log p| for rounding.
    log_p_error = 1e-12 * (1 + np.abs(log_p))
    assert np.all(value <= log_p + error + log_p_error), (value, log_p)
    gap, gap_error = model.posterior_gap(X, mean, var, return_error=True)
    assert np.all(gap >= 0)
    # The directly summed KL is log p - ELBO within the error estimates.
    np.testing.assert_array_less(np.abs(gap - (log_p - value)), gap_error + error + log_p_error)


def linear_model(s=2, d=4, seed=0, hidden=True):
    """A decoder with linear activations (its regions all share one affine map) and its map."""
    dec = ex.Decoder.random([s, 5, d] if hidden else [s, d], activation="linear", seed=seed)
    A, b = np.eye(s), np.zeros(s)
    for w, c in zip(dec.weights, dec.biases):
        A, b = w @ A, w @ b + c
    return dec, A, b


def exact_posterior(A, b, psi, x):
    """The closed-form Gaussian posterior of a linear decoder."""
    precision = np.eye(A.shape[1]) + A.T @ (A / psi[:, None])
    sigma = np.linalg.inv(precision)
    return sigma @ A.T @ ((x - b) / psi), sigma, precision


@pytest.mark.parametrize("s", [1, 2, 3])
def test_gap_vanishes_at_the_exact_posterior_of_a_linear_decoder(s):
    dec, A, b = linear_model(s=s, seed=s)
    psi = np.array([0.1, 0.2, 0.3, 0.05])
    model = ex.DGN(dec, psi, rtol=1e-8)
    X, _ = model.sample(3, seed=0)
    X[2] += 15.0  # far from the data
    means, covs = zip(*[exact_posterior(A, b, psi, x)[:2] for x in X])
    mean, cov = np.array(means), np.array(covs)
    gap, error = model.posterior_gap(X, mean, cov, return_error=True)
    assert np.all((gap >= 0) & (gap <= 1e-10)), gap
    # And the ELBO is log p(x) in closed form: N(x; b, Psi + A A^T).
    marginal = np.diag(psi) + A @ A.T
    r = X - b
    log_p = -0.5 * (len(psi) * LOG_2PI + np.linalg.slogdet(marginal)[1] + np.einsum("ni,ij,nj->n", r, np.linalg.inv(marginal), r))
    value, value_error = model.elbo(X, mean, cov, return_error=True)
    tol = (1e-12 if s <= 2 else 1e-6) * (1 + np.abs(log_p))
    np.testing.assert_allclose(value, log_p, rtol=0, atol=tol.max())
    # Any other q has a positive gap: the KL between Gaussians in closed form.
    other_mean, other_cov = mean + 0.3, cov * 1.5
    gap = model.posterior_gap(X, other_mean, other_cov)
    for n in range(len(X)):
        mu, sigma, precision = exact_posterior(A, b, psi, X[n])
        d = mu - other_mean[n]
        kl = 0.5 * (np.trace(precision @ other_cov[n]) + d @ precision @ d - s - np.linalg.slogdet(precision @ other_cov[n])[1])
        assert gap[n] > 0
        assert abs(gap[n] - kl) < (1e-11 if s <= 2 else 1e-6) * (1 + kl), (gap[n], kl)


@pytest.mark.parametrize("s", [1, 2])
def test_small_gap_keeps_its_digits(s):
    """q the exact posterior with its mean moved so that KL = 1e-6: the gap keeps ~6 digits,
    where log p(x) - ELBO (both of order 10) would keep ~4."""
    dec, A, b = linear_model(s=s, seed=7)
    psi = np.array([0.1, 0.2, 0.3, 0.05])
    model = ex.DGN(dec, psi)
    X, _ = model.sample(2, seed=3)
    X[1] += 30.0
    for x in X:
        mu, sigma, precision = exact_posterior(A, b, psi, x)
        direction = np.ones(s) / np.sqrt(np.ones(s) @ precision @ np.ones(s))
        delta = np.sqrt(2e-6) * direction  # 1/2 delta^T P delta = 1e-6
        gap = model.posterior_gap(x[None], (mu + delta)[None], sigma[None])[0]
        # The gap sums terms log p(x) - log kappa_q + ..., each of size |log p(x)|, to a result
        # of 1e-6: rounding leaves a few dozen eps |log p(x)| (the engine's own rounding
        # estimate is (S^2 + 32) eps times the terms' magnitude): below 1e-12 where log p(x) is
        # of order 10, up to ~1e-10 at the point moved 30 away (log p(x) ~ -1e4).
        log_p = model.log_likelihood(x[None])[0]
        assert abs(gap - 1e-6) < 1e-12 + 100 * np.finfo(float).eps * abs(log_p), (gap, log_p)


@pytest.mark.parametrize("widths", [[1, 8, 8, 3], [2, 8, 8, 3], [3, 5, 3]])
def test_gap_agrees_with_log_likelihood_minus_elbo_where_large(widths):
    s = widths[0]
    model = ex.DGN(ex.Decoder.random(widths, seed=4), 0.1, rtol=1e-8)
    X, Z = model.sample(4, seed=5)
    mean, var = Z + 1.0, np.full((4, s), 0.3)
    gap, gap_error = model.posterior_gap(X, mean, var, return_error=True)
    value, value_error = model.elbo(X, mean, var, return_error=True)
    log_p = model.log_likelihood(X)
    assert np.all(gap > 0.1)
    # log p(x)'s own accuracy: ~1e-14 relative for S <= 2, rtol for S = 3.
    log_p_error = (1e-13 if s <= 2 else 1e-7) * (1 + np.abs(log_p))
    np.testing.assert_array_less(np.abs(gap - (log_p - value)), gap_error + value_error + log_p_error)


def test_iwae_bound_lies_between_elbo_and_log_likelihood_and_grows_with_k():
    model = ex.DGN(ex.Decoder.random([2, 8, 8, 3], seed=6), 0.1)
    X, Z = model.sample(3, seed=7)
    mean, var = Z + 0.5, np.full((3, 2), 0.2)
    elbo = model.elbo(X, mean, var)
    log_p = model.log_likelihood(X)
    one, se_one = model.iwae_bound(X, mean, var, 1, n_estimates=20_000, seed=1)
    # IWAE_1 is an unbiased estimate of the ELBO.
    np.testing.assert_array_less(np.abs(one - elbo), 4 * se_one)
    previous, previous_se = one, se_one
    for k in [4, 32, 256]:
        bound, se = model.iwae_bound(X, mean, var, k, n_estimates=400, seed=k)
        assert np.all(bound > elbo - 4 * se)
        assert np.all(bound < log_p + 4 * se)
        # Increasing in k, in expectation: the difference beyond 4 combined standard errors.
        assert np.all(bound - previous > -4 * np.hypot(se, previous_se))
        previous, previous_se = bound, se
    # And strictly above the ELBO by k = 256 (the gap log p - ELBO is ~1 nat here).
    assert np.all(previous - elbo > 4 * previous_se)


def test_iwae_bound_is_deterministic_given_its_seed():
    model = ex.DGN(ex.Decoder.random([1, 4, 2], seed=0), 0.1)
    X, Z = model.sample(5, seed=0)
    a = model.iwae_bound(X, Z, np.full((5, 1), 0.1), 8, n_estimates=10, seed=3)
    b = model.iwae_bound(X, Z, np.full((5, 1), 0.1), 8, n_estimates=10, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    # The first points' results do not depend on the points after them.
    c = model.iwae_bound(X[:2], Z[:2], np.full((2, 1), 0.1), 8, n_estimates=10, seed=3)
    np.testing.assert_array_equal(a[0][:2], c[0])


@pytest.mark.parametrize(
    "q_mean,q_var,message",
    [
        (np.zeros((3, 2)), np.ones((3, 2)), "q_mean"),
        (np.zeros((2, 2)), np.ones((3, 2)), "q_mean"),
        (np.zeros((3, 1)), np.ones((3, 2)), "q_var"),
        (np.zeros((3, 1)), np.array([[1.0], [0.0], [1.0]]), "positive"),
        (np.zeros((3, 1)), np.array([[1.0], [np.nan], [1.0]]), "positive"),
        (np.array([[0.0], [np.inf], [0.0]]), np.ones((3, 1)), "NaN or infinite"),
        (np.zeros((3, 1)), np.ones((3, 1, 1)) * np.array([1.0, -1.0, 1.0])[:, None, None], "q_var\\[1\\]"),
    ],
)
def test_bad_encoder_outputs_raise_value_error(q_mean, q_var, message):
    model = ex.DGN(ex.Decoder.random([1, 4, 2], seed=0), 0.1)
    X, _ = model.sample(3, seed=0)
    for call in (model.elbo, model.posterior_gap):
        with pytest.raises(ValueError, match=message):
            call(X, q_mean, q_var)


def test_full_covariances_must_be_symmetric_positive_definite():
    model = ex.DGN(ex.Decoder.random([2, 4, 2], seed=0), 0.1)
    X, _ = model.sample(2, seed=0)
    mean = np.zeros((2, 2))
    asymmetric = np.array([np.eye(2), [[1.0, 0.5], [0.0, 1.0]]])
    with pytest.raises(ValueError, match="q_var\\[1\\].*symmetric"):
        model.elbo(X, mean, asymmetric)
    indefinite = np.array([np.eye(2), [[1.0, 2.0], [2.0, 1.0]]])
    with pytest.raises(ValueError, match="q_var\\[1\\].*positive definite"):
        model.elbo(X, mean, indefinite)
    with pytest.raises(ValueError, match="positive definite"):
        model.iwae_bound(X, mean, indefinite, 2)


def test_ctrl_c_interrupts_a_long_elbo():
    import os
    import signal
    import threading
    import time

    model = ex.DGN(ex.Decoder.random([2, 32, 32, 10], seed=0), 0.1)
    X, Z = model.sample(20_000, seed=1)
    var = np.full(Z.shape, 0.05)
    model.elbo(X[:2], Z[:2], var[:2])  # the regions, outside the timed call
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    start = time.perf_counter()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        model.elbo(X, Z, var)  # ~50 s uninterrupted on 2 cores
    assert time.perf_counter() - start < 5
    # The engine is usable after an interrupted call.
    assert np.isfinite(model.elbo(X[:2], Z[:2], var[:2])).all()


def mp_elbo_1d(model, x, m, v):
    """The S = 1 ELBO in 40-digit arithmetic: interval by interval, E_q[1 log N(x; a z + b, Psi)]
    from the truncated normal's mass and first two moments in closed form (mpmath), plus
    E_q[log p(z)] + H(q)."""
    import mpmath as mp

    mp.mp.dps = 40
    part = model.regions
    psi = np.broadcast_to(np.asarray(model.noise_var, dtype=float), (model.output_dim,))
    m, v = mp.mpf(m), mp.mpf(v)
    sd = mp.sqrt(v)
    k0 = -mp.mpf(len(psi)) / 2 * mp.log(2 * mp.pi) - sum(mp.log(mp.mpf(p)) for p in psi) / 2
    total = -(m * m + v - 1 - mp.log(v)) / 2
    for q in range(len(part)):
        G, h = part.facets(q)
        lo = max([-mp.inf] + [mp.mpf(-hh) for g, hh in zip(G[:, 0], h) if g < 0])
        hi = min([mp.inf] + [mp.mpf(hh) for g, hh in zip(G[:, 0], h) if g > 0])
        alpha, beta = (lo - m) / sd, (hi - m) / sd
        mass = mp.ncdf(beta) - mp.ncdf(alpha)
        pdf = lambda t: mp.npdf(t) if mp.isfinite(t) else mp.mpf(0)
        tpdf = lambda t: t * mp.npdf(t) if mp.isfinite(t) else mp.mpf(0)
        # E[w 1], E[w^2 1] for w = (z - m) / sd standard normal on [alpha, beta].
        w1 = pdf(alpha) - pdf(beta)
        w2 = mass + tpdf(alpha) - tpdf(beta)
        z1 = m * mass + sd * w1
        z2 = m * m * mass + 2 * m * sd * w1 + v * w2
        a, b = part.A[q][:, 0], part.b[q]
        term = k0 * mass
        for ai, bi, xi, pi in zip(a, b, x, psi):
            r = mp.mpf(xi) - mp.mpf(bi)
            term -= (r * r * mass - 2 * r * mp.mpf(ai) * z1 + mp.mpf(ai) ** 2 * z2) / (2 * mp.mpf(pi))
        total += term
    return float(total)


def test_one_dimensional_elbo_to_machine_precision_against_mpmath():
    model = ex.DGN(ex.Decoder.random([1, 8, 8, 3], seed=2), np.array([0.1, 0.05, 0.3]))
    X, Z = model.sample(2, seed=3)
    X = np.vstack([X, X[0] + 25.0])
    # Near the posterior, narrow in a tail, wide, and q far off for a point far from the data.
    mean = np.array([[Z[0, 0] + 0.01], [Z[1, 0] + 4.0], [-1.0]])
    var = np.array([[1e-3], [1e-4], [4.0]])
    value = model.elbo(X, mean, var)
    for n in range(len(X)):
        expected = mp_elbo_1d(model, X[n], mean[n, 0], var[n, 0])
        assert abs(value[n] - expected) <= 1e-13 * (1 + abs(expected)), (n, value[n], expected)


def mp_elbo_one_unit(model, x, m, V):
    """The ELBO of a decoder with one hidden unit (two half-space regions) in 40-digit
    arithmetic, any S: along the unit's normal g, u = g.z is normal, z - m given u is Gaussian
    regression, so each half-space's truncated moments of z are closed form."""
    import mpmath as mp

    mp.mp.dps = 40
    part = model.regions
    s = len(m)
    psi = np.broadcast_to(np.asarray(model.noise_var, dtype=float), (model.output_dim,))
    m, V = mp.matrix(list(m)), mp.matrix(V.tolist())
    k0 = -mp.mpf(len(psi)) / 2 * mp.log(2 * mp.pi) - sum(mp.log(mp.mpf(p)) for p in psi) / 2
    total = -((m.T * m)[0] + sum(V[i, i] for i in range(s)) - s - mp.log(mp.det(V))) / 2
    for q in range(len(part)):
        G, h = part.facets(q)
        assert len(h) <= 1
        if len(h) == 0:
            mass, first, second = mp.mpf(1), mp.matrix(s, 1), V
        else:
            g = mp.matrix(list(G[0]))
            Vg = V * g
            sd = mp.sqrt((g.T * Vg)[0])
            beta = (mp.mpf(h[0]) - (g.T * m)[0]) / sd
            mass = mp.ncdf(beta)
            w1, w2 = -mp.npdf(beta), mass - beta * mp.npdf(beta)  # E[w 1], E[w^2 1] on w <= beta
            first = Vg * (w1 / sd)
            second = (V - Vg * Vg.T / sd**2) * mass + Vg * Vg.T * (w2 / sd**2)
        A, b = part.A[q], part.b[q]
        term = k0 * mass
        for i in range(len(psi)):
            a = mp.matrix(list(A[i]))
            r = mp.mpf(x[i]) - mp.mpf(b[i]) - (a.T * m)[0]
            term -= (r * r * mass - 2 * r * (a.T * first)[0] + (a.T * second * a)[0]) / (2 * mp.mpf(psi[i]))
        total += term
    return float(total)


@pytest.mark.parametrize("s", [2, 3])
def test_one_unit_elbo_against_mpmath(s):
    """S = 2 to near machine precision, S = 3 to its error estimate, full covariances."""
    model = ex.DGN(ex.Decoder.random([s, 1, 4], activation="abs", seed=s), 0.2, rtol=1e-8)
    X, Z = model.sample(2, seed=s)
    X = np.vstack([X, X[0] + 15.0])
    rng = np.random.default_rng(s)
    L = np.tril(rng.normal(size=(3, s, s)), -1) * 0.3 + np.eye(s) * np.array([0.05, 0.5, 1.5])[:, None, None]
    cov = L @ np.transpose(L, (0, 2, 1))
    mean = np.vstack([Z[0], Z[1] + 2.0, -Z[0]])
    value, error = model.elbo(X, mean, cov, return_error=True)
    for n in range(len(X)):
        expected = mp_elbo_one_unit(model, X[n], mean[n], cov[n])
        tol = 1e-13 * (1 + abs(expected)) if s == 2 else error[n] + 1e-13 * (1 + abs(expected))
        assert abs(value[n] - expected) <= tol, (n, value[n], expected, error[n])
