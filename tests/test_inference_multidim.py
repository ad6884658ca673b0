"""Exact inference in latent dimensions 3 and 4, where region masses come from adaptive
quadrature over exact slices (S = 3) and quasi-Monte Carlo (S = 4): against Monte Carlo over
the prior, and the posterior's own consistency."""

import numpy as np

import exactem


def small_model():
    dec = exactem.Decoder.random([3, 5, 5, 2], activation="relu", seed=2)
    return exactem.DGN(dec, 0.5, rtol=1e-4)


def assert_matches_prior_monte_carlo(model, X, noise_var, seed, rtol):
    """p(x) = E_z[N(x; g(z), noise_var I)] over 2e6 prior draws, within 4 standard errors
    plus the relative accuracy the model was asked for."""
    got = model.log_likelihood(X)
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((2_000_000, model.latent_dim))
    G = model.decoder(Z)
    d = X.shape[1]
    for x, g in zip(X, got):
        lik = np.exp(-0.5 * np.sum((x - G) ** 2, axis=1) / noise_var) / (2 * np.pi * noise_var) ** (d / 2)
        mean, se = lik.mean(), lik.std() / np.sqrt(len(lik))
        assert abs(np.exp(g) - mean) < 4 * se + rtol * mean, (np.exp(g), mean, se)


def test_three_dimensional_likelihood_matches_prior_monte_carlo():
    model = small_model()
    X, _ = model.sample(3, seed=2)
    X = np.vstack([X, [[3.0, -2.0]]])  # and a point away from the data
    assert_matches_prior_monte_carlo(model, X, 0.5, seed=0, rtol=1e-3)


def test_three_dimensional_posterior_and_e_step_are_consistent():
    model = small_model()
    X, _ = model.sample(2, seed=5)
    es = model.e_step(X)
    assert np.allclose(es.m0.toarray().sum(axis=1), 1.0, atol=1e-12)
    # Where moments are wanted the masses are sliced more accurately than asked (the facets'
    # moments need it), so the E-step's log p(x) and log_likelihood's agree to the accuracy
    # asked, not to the last bit. Each is asked rtol of the largest terms and at most rtol of
    # the sum so far from each term below it (by the quadratures' error estimates, which
    # overstate the error of analytic integrands many times): 2 rtol of p(x), 2 rtol in log
    # space, leaves room for the minor terms' share.
    tight = exactem.DGN(model.decoder, 0.5, rtol=1e-10).log_likelihood(X)
    assert np.allclose(model.log_likelihood(X), tight, rtol=0, atol=2 * model.rtol)
    assert np.allclose(es.log_likelihood, tight, rtol=0, atol=2 * model.rtol)
    post = model.posterior(X[0])
    assert np.isclose(post.weights.sum(), 1.0)
    assert np.allclose(es.posterior_mean()[0], post.mean, atol=1e-9)
    # Exact i.i.d. samples agree with the exact moments (4 standard errors).
    samples = post.sample(20_000, seed=1)
    se = np.sqrt(np.diag(post.cov) / len(samples))
    assert np.all(np.abs(samples.mean(axis=0) - post.mean) < 4 * se + 2e-3)
    # And with the posterior density: self-normalised importance sampling from the prior.
    rng = np.random.default_rng(3)
    Z = rng.standard_normal((1_000_000, 3))
    w = np.exp(-0.5 * np.sum((X[0] - model.decoder(Z)) ** 2, axis=1) / 0.5)
    w /= w.sum()
    is_mean = w @ Z
    is_se = np.sqrt(w**2 @ (Z - is_mean) ** 2)
    assert np.all(np.abs(is_mean - post.mean) < 4 * is_se + 2e-3), (is_mean, post.mean, is_se)


def test_four_dimensional_likelihood_matches_prior_monte_carlo():
    """S = 4: region masses by tilted quasi-Monte Carlo, to rtol 1e-3."""
    model = exactem.DGN(exactem.Decoder.random([4, 4, 4, 2], activation="relu", seed=2), 0.5, rtol=1e-3)
    X, _ = model.sample(2, seed=2)
    X = np.vstack([X, [[2.5, -2.0]]])
    assert_matches_prior_monte_carlo(model, X, 0.5, seed=1, rtol=3e-3)
