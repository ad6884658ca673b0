import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import integrate, stats
from scipy.special import logsumexp

import exactem


def log_joint(dec, noise_var, x, Z):
    """log p(x | z) + log p(z) for latent points Z (n, S), numpy only."""
    G = dec(Z)
    psi = np.broadcast_to(noise_var, (dec.output_dim,))
    log_lik = -0.5 * np.sum((x - G) ** 2 / psi + np.log(2 * np.pi * psi), axis=1)
    log_prior = -0.5 * np.sum(Z**2 + np.log(2 * np.pi), axis=1)
    return log_lik + log_prior


def quad_log_p(dec, noise_var, x, breakpoints, limit=5000.0):
    """log p(x) for S = 1 by adaptive quadrature over [-limit, limit], shifted by the integrand's
    peak so that far-away points do not underflow; region boundaries are breakpoints."""
    grid = np.linspace(-limit, limit, 2_000_001)
    f = log_joint(dec, noise_var, x, grid[:, None])
    peak_at, peak = grid[np.argmax(f)], f.max()
    g = lambda z: np.exp(log_joint(dec, noise_var, x, np.array([[z]]))[0] - peak)
    pts = np.sort(np.concatenate([breakpoints, [peak_at]]))
    edges = np.concatenate([[-limit], pts[(pts > -limit) & (pts < limit)], [limit]])
    total = sum(integrate.quad(g, a, b, epsabs=0, epsrel=1e-12, limit=200)[0] for a, b in zip(edges[:-1], edges[1:]))
    return np.log(total) + peak


def breakpoints_1d(part):
    return np.unique(np.concatenate([part.facet_points(i)[:, 0] for i in range(len(part))]))


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
@pytest.mark.parametrize("noise", [0.05, np.array([0.02, 0.3])])
def test_one_dimensional_likelihood_matches_quadrature(noise):
    dec = exactem.Decoder.random([1, 16, 16, 2], activation="leaky_relu", alpha=0.1, seed=1)
    model = exactem.DGN(dec, noise)
    X, _ = model.sample(6, seed=0)
    X = np.vstack([X, X[0] + [25.0, -30.0], [400.0, -300.0]])  # far from the data: every region in a tail
    got = model.log_likelihood(X)
    bps = breakpoints_1d(model.regions)
    expected = np.array([quad_log_p(dec, noise, x, bps) for x in X])
    assert np.all(np.abs(got - expected) <= 1e-9 * np.maximum(1, np.abs(expected))), got - expected


def test_one_dimensional_posterior_moments_and_samples():
    dec = exactem.Decoder.random([1, 12, 12, 2], activation="abs", seed=3)
    model = exactem.DGN(dec, 0.1)
    x = dec(np.array([[0.7]]))[0] + [0.1, -0.2]
    post = model.posterior(x)
    grid = np.linspace(-10, 10, 400_001)
    dens = post.pdf(grid[:, None])
    assert abs(np.trapezoid(dens, grid) - 1) < 1e-7
    mean = np.trapezoid(dens * grid, grid)
    var = np.trapezoid(dens * (grid - mean) ** 2, grid)
    np.testing.assert_allclose(post.mean, [mean], atol=1e-7)
    np.testing.assert_allclose(post.cov, [[var]], atol=1e-7)
    assert abs(post.weights.sum() - 1) < 1e-12
    # Exact samples pass a KS test against the exact CDF.
    cdf = np.concatenate([[0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))])
    cdf /= cdf[-1]
    samples = post.sample(5000, seed=4)[:, 0]
    assert stats.kstest(samples, lambda s: np.interp(s, grid, cdf)).pvalue > 1e-3
    assert abs(post.logpdf(post.map()[None])[0] - post.logpdf(grid[:, None]).max()) < 1e-6


def test_two_dimensional_likelihood_matches_brute_force_grid():
    dec = exactem.Decoder.random([2, 10, 10, 3], activation="leaky_relu", alpha=0.2, seed=5)
    model = exactem.DGN(dec, 0.2)
    X, _ = model.sample(3, seed=1)
    got = model.log_likelihood(X)
    for x, g in zip(X, got):
        post = model.posterior(x)
        sd = np.sqrt(np.diag(post.cov))
        lo, hi = post.mean - 12 * sd - 0.5, post.mean + 12 * sd + 0.5
        n = 1500
        u = np.linspace(lo[0], hi[0], n)
        v = np.linspace(lo[1], hi[1], n)
        Z = np.stack(np.meshgrid(u, v, indexing="ij"), axis=-1).reshape(-1, 2)
        f = log_joint(dec, 0.2, x, Z).reshape(n, n)
        w = np.ones(n)
        w[0] = w[-1] = 0.5
        log_cell = np.log(w[:, None] * w[None, :] * (u[1] - u[0]) * (v[1] - v[0]))
        assert abs(logsumexp(f + log_cell) - g) < 1e-6


@pytest.mark.parametrize("S", [1, 2])
def test_posterior_samples_match_exact_moments(S):
    dec = exactem.Decoder.random([S, 8, 8, 3], seed=7)
    model = exactem.DGN(dec, 0.1)
    X, _ = model.sample(1, seed=3)
    post = model.posterior(X[0])
    samples = post.sample(20_000, seed=1)
    se = np.sqrt(np.diag(post.cov) / len(samples))
    assert np.all(np.abs(samples.mean(axis=0) - post.mean) < 4 * se)



def test_e_step_rows_sum_to_one_and_match_the_posterior():
    dec = exactem.Decoder.random([2, 12, 12, 4], seed=8)
    model = exactem.DGN(dec, np.linspace(0.05, 0.3, 4))
    X, _ = model.sample(40, seed=4)
    es = model.e_step(X)
    np.testing.assert_allclose(es.m0.toarray().sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(es.log_likelihood, model.log_likelihood(X), rtol=1e-13, atol=1e-13)
    means = es.posterior_mean()
    for n in [0, 7, 39]:
        post = model.posterior(X[n])
        np.testing.assert_allclose(means[n], post.mean, atol=1e-12)
        np.testing.assert_allclose(es.m0.toarray()[n], post.weights, atol=1e-12)
    # m2 entries are E[z z^T 1_q]: symmetric, with m2 >= m1 m1^T / m0.
    np.testing.assert_allclose(es.m2, np.swapaxes(es.m2, 1, 2), atol=1e-12)


@pytest.mark.parametrize("noise", [0.05, 1e-4])
def test_one_dimensional_results_do_not_depend_on_the_other_points(noise):
    # S = 1 evaluates points sixteen at a time, ordered by region where posteriors are narrow
    # (1e-4) and as they come where they are wide (0.05): a point's bits must not depend on
    # which points share its block or batch.
    dec = exactem.Decoder.random([1, 16, 16, 2], activation="leaky_relu", alpha=0.1, seed=0)
    model = exactem.DGN(dec, noise)
    X, _ = model.sample(700, seed=2)
    ll, es = model.log_likelihood(X), model.e_step(X)
    order = np.random.default_rng(0).permutation(len(X))
    np.testing.assert_array_equal(model.log_likelihood(X[order]), ll[order])
    np.testing.assert_array_equal(model.e_step(X[order]).m0.toarray(), es.m0.toarray()[order])
    alone = [0, 17, 350, 699]
    np.testing.assert_array_equal([model.log_likelihood(X[n : n + 1])[0] for n in alone], ll[alone])
    np.testing.assert_array_equal(np.vstack([model.e_step(X[n : n + 1]).m0.toarray() for n in alone]), es.m0.toarray()[alone])


def test_bad_input_raises_value_error():
    dec = exactem.Decoder.random([1, 4, 2])
    with pytest.raises(ValueError, match="positive"):
        exactem.DGN(dec, -1.0)
    with pytest.raises(ValueError, match="shape"):
        exactem.DGN(dec, np.ones(3))
    model = exactem.DGN(dec, 0.1)
    with pytest.raises(ValueError, match="\\(n, 2\\)"):
        model.log_likelihood(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        model.log_likelihood(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="shape"):
        model.posterior(np.zeros(3))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    S=st.integers(1, 2),
    width=st.integers(1, 8),
    activation=st.sampled_from(["relu", "leaky_relu", "abs", "linear"]),
    noise=st.floats(1e-3, 10.0),
    seed=st.integers(0, 10_000),
    shift=st.floats(-100, 100),
)
def test_property_random_models(S, width, activation, noise, seed, shift):
    dec = exactem.Decoder.random([S, width, width, 2], activation=activation, seed=seed)
    model = exactem.DGN(dec, noise)
    X, _ = model.sample(5, seed=seed)
    X = X + shift
    ll = model.log_likelihood(X)
    assert np.all(np.isfinite(ll))
    es = model.e_step(X)
    np.testing.assert_allclose(es.m0.toarray().sum(axis=1), 1.0, atol=1e-10)
    np.testing.assert_allclose(es.log_likelihood, ll, rtol=1e-12, atol=1e-12)
    # log p(x) is at most the best region's log kappa (Phi <= 1), and the posterior mean is finite.
    post = model.posterior(X[0])
    assert np.all(np.isfinite(post.mean)) and abs(post.weights.sum() - 1) < 1e-10
