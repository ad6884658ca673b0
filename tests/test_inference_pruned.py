"""S = 2 inference prunes regions by an upper bound on log kappa before forming it exactly
(rust/inference/pruned.rs). Its results must be the per-point path's (DGN.posterior still
takes that path) and brute-force quadrature's, for networks where the bound is tight and where
it is loose: large weights (nearly singular regions, huge offsets), small noise, points far
off the decoder's image."""

import numpy as np
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

import exactem


def log_joint(dec, noise_var, x, Z):
    """log p(x | z) + log p(z) for latent points Z (n, S), numpy only."""
    G = dec(Z)
    psi = np.broadcast_to(noise_var, (dec.output_dim,))
    log_lik = -0.5 * np.sum((x - G) ** 2 / psi + np.log(2 * np.pi * psi), axis=1)
    return log_lik - 0.5 * np.sum(Z**2 + np.log(2 * np.pi), axis=1)


def grid_log_p(dec, noise_var, x, post, axes, half_width=25.0, n=1500):
    """log p(x) by the trapezoidal rule in log space on an n x n grid of +-half_width posterior
    standard deviations around the exact posterior mean, along the given orthonormal axes. The
    integrand is smooth between the regions' boundaries, where it has kinks: the rule's error
    there is O(h^2) of a few cells' mass. A posterior that is a thin needle across the grid's
    axes, or has a second mode beyond the window, is missed: see reference_log_p."""
    variances = np.einsum("ij,jk,ki->i", axes.T, post.cov, axes)
    sd = np.sqrt(np.maximum(variances, 0.0))
    u = np.linspace(-half_width * sd[0], half_width * sd[0], n)
    v = np.linspace(-half_width * sd[1], half_width * sd[1], n)
    coords = np.stack(np.meshgrid(u, v, indexing="ij"), axis=-1).reshape(-1, 2)
    Z = post.mean + coords @ axes.T  # a rotation: the cell area is unchanged
    w = np.ones(n)
    w[0] = w[-1] = 0.5
    log_cell = np.log(w[:, None] * w[None, :] * (u[1] - u[0]) * (v[1] - v[0]))
    return logsumexp(log_joint(dec, noise_var, x, Z).reshape(n, n) + log_cell)


def reference_log_p(dec, noise_var, x, post):
    """Two independent grids, one along the latent axes and one along the posterior's principal
    axes, and their disagreement as the reference's own error estimate (it is large where the
    posterior has mass neither grid resolves)."""
    along_latent = grid_log_p(dec, noise_var, x, post, np.eye(2))
    along_principal = grid_log_p(dec, noise_var, x, post, np.linalg.eigh(post.cov)[1])
    return 0.5 * (along_latent + along_principal), abs(along_latent - along_principal)


def scaled(dec, scale):
    return exactem.Decoder([w * scale for w in dec.weights], [b * scale for b in dec.biases],
                           activation="leaky_relu", alpha=0.1)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), width=st.sampled_from([6, 12]), dim=st.sampled_from([3, 16]),
       scale=st.sampled_from([1.0, 100.0]), noise=st.sampled_from([0.3, 0.01]), far=st.sampled_from([0.0, 0.5, 3.0]))
def test_pruned_s2_matches_the_per_point_path_and_a_grid(seed, width, dim, scale, noise, far):
    base = exactem.Decoder.random([2, width, width, dim], activation="leaky_relu", alpha=0.1, seed=seed)
    dec = scaled(base, scale)
    noise_var = noise * scale**2
    model = exactem.DGN(dec, noise_var)
    X, _ = model.sample(4, seed=seed)
    # Off the decoder's image by `far` times the data's spread in every output: every region's
    # posterior mean far outside it, the bound loose where D is large.
    rng = np.random.default_rng(seed)
    X = X + far * X.std(axis=0, keepdims=True) * rng.standard_normal(X.shape) * np.sqrt(dim)
    ll = model.log_likelihood(X)
    es = model.e_step(X)
    # The E-step sums its terms as weights, log_likelihood as a running log-sum-exp.
    np.testing.assert_allclose(es.log_likelihood, ll, rtol=1e-13, atol=1e-13)
    for i, x in enumerate(X):
        post = model.posterior(x)  # the per-point path: every region's log kappa and bound
        assert abs(post.log_likelihood - ll[i]) <= 1e-12 * (1 + abs(ll[i]))
        row = slice(es.m0.indptr[i], es.m0.indptr[i + 1])
        np.testing.assert_allclose(es.m0.data[row].sum(), 1.0, atol=1e-12)
        np.testing.assert_allclose(es.posterior_mean()[i], post.mean, rtol=1e-9, atol=1e-9 * (1 + np.abs(post.mean).max()))
        if np.all(np.sqrt(np.linalg.eigvalsh(post.cov)) > 1e-6):
            reference, error = reference_log_p(dec, noise_var, x, post)
            tolerance = 1e-6 * (1 + abs(ll[i]))
            note(f"row {i}: engine {ll[i]!r}, grids {reference!r} +- {error:.2e}")
            if error < tolerance:  # otherwise neither grid can vouch for this row
                assert abs(reference - ll[i]) < tolerance, (i, ll[i], reference, error)
