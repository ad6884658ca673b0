import numpy as np
import pytest
from scipy.optimize import minimize

import exactem
from exactem.em import RegionStats, frozen_objective, layer_factors, update_layer
from exactem.estimator import exact_gradient


def ppca_log_likelihood(X, S):
    """Tipping & Bishop's closed-form maximum likelihood of probabilistic PCA, per point."""
    N, D = X.shape
    C = np.cov(X.T, bias=True)
    eig = np.sort(np.linalg.eigvalsh(C))[::-1]
    sigma2 = eig[S:].mean()
    model_cov_logdet = np.sum(np.log(eig[:S])) + (D - S) * np.log(sigma2)
    # At the optimum tr(C_model^-1 C) = D.
    return -0.5 * (D * np.log(2 * np.pi) + model_cov_logdet + D)


def ppca_held_out(X_train, X_test, S):
    mean = X_train.mean(0)
    C = np.cov(X_train.T, bias=True)
    vals, vecs = np.linalg.eigh(C)
    vals, vecs = vals[::-1], vecs[:, ::-1]
    sigma2 = vals[S:].mean()
    W = vecs[:, :S] * np.sqrt(np.maximum(vals[:S] - sigma2, 0))
    cov = W @ W.T + sigma2 * np.eye(len(mean))
    from scipy.stats import multivariate_normal

    return multivariate_normal(mean, cov).logpdf(X_test).mean()


@pytest.mark.parametrize(
    "data, S, hidden, noise, seed",
    [
        ("wave", 1, (8, 8), "isotropic", 0),
        ("wave", 1, (16, 16), "diagonal", 1),
        ("circle", 1, (12,), "isotropic", 2),
        ("circle", 2, (6,), "diagonal", 3),
        ("wave", 2, (5, 5), "isotropic", 4),
    ],
)
def test_exact_log_likelihood_never_decreases(data, S, hidden, noise, seed):
    X = getattr(exactem.datasets, data)(300, 0.1, seed=seed)
    est = exactem.ExactEM(latent_dim=S, hidden=hidden, noise=noise, max_iter=15, random_state=seed).fit(X)
    history = np.array(est.history_)
    assert len(history) >= 2
    assert np.all(np.diff(history) >= -1e-9 * (1 + np.abs(history[:-1])))
    # The recorded history is the exact log-likelihood of the returned model.
    assert abs(est.score(X) - history[-1]) < 1e-9
    assert est.n_regions_[-1] == len(est.model_.regions)


def frozen_problem(X, hidden, max_iter, latent_dim=1):
    """A fitted decoder and what a layer update needs: E-step sums, activation slopes, noise."""
    est = exactem.ExactEM(latent_dim=latent_dim, hidden=hidden, max_iter=max_iter, random_state=0).fit(X)
    dec, model = est.decoder_, est.model_
    stats = RegionStats(model.e_step(X), X, len(model.regions))
    return dec, stats, layer_factors(dec, model.regions.patterns), np.full(X.shape[1], est.noise_var_)


def _four_dimensional_wave(n, seed):
    """wave's points and a fixed linear image of them: data wider than the hidden layers."""
    X = exactem.datasets.wave(n, 0.1, seed=seed)
    return np.hstack([X, X @ np.array([[0.7, -0.2], [0.3, 0.9]])])


@pytest.mark.parametrize("X, S", [(exactem.datasets.wave(200, 0.1, seed=0), 1), (_four_dimensional_wave(200, 0), 2)],
                         ids=["D < width, S = 1", "D > width, S = 2"])
def test_each_layer_update_maximises_the_frozen_objective(X, S):
    # D < D_l applies the curvature through the output map, D >= D_l forms it: both against a
    # general-purpose optimiser of the frozen objective written out over regions.
    dec, stats, factors, psi = frozen_problem(X, (3, 3), max_iter=0, latent_dim=S)
    for layer in range(3):
        for decay in [0.0, 0.5]:
            W, b = update_layer(dec.weights, dec.biases, factors, psi, stats, layer, decay)

            def negative(theta, layer=layer, decay=decay):
                ws, bs = dec.weights, dec.biases
                shape = ws[layer].shape
                ws[layer] = theta[: np.prod(shape)].reshape(shape)
                bs[layer] = theta[np.prod(shape):]
                return -frozen_objective(ws, bs, factors, psi, stats) + 0.5 * decay * np.sum(ws[layer] ** 2)

            closed = negative(np.concatenate([W.ravel(), b]))
            start = np.concatenate([dec.weights[layer].ravel(), dec.biases[layer]])
            numeric = minimize(negative, start, method="BFGS", options={"gtol": 1e-10, "maxiter": 5000}).fun
            assert closed <= numeric + 1e-7 * (1 + abs(numeric)), (layer, decay, closed, numeric)


def test_exact_gradient_matches_finite_differences_of_the_exact_likelihood():
    X = exactem.datasets.wave(60, 0.1, seed=1)
    dec = exactem.Decoder.random([1, 4, 3, 2], seed=3)
    noise = 0.2
    model = exactem.DGN(dec, noise)
    stats = RegionStats(model.e_step(X), X, len(model.regions))
    gw, gb, gn = exact_gradient(dec, model.regions.patterns, np.full(2, noise), stats)

    def total(weights, biases, noise_var):
        return exactem.DGN(exactem.Decoder(weights, biases, activation=dec.activations, alpha=dec.alpha), noise_var).log_likelihood(X).sum()

    h = 1e-6
    rng = np.random.default_rng(0)
    for layer in range(3):
        for _ in range(3):
            i, j = rng.integers(dec.weights[layer].shape[0]), rng.integers(dec.weights[layer].shape[1])
            plus, minus = dec.weights, dec.weights
            plus[layer][i, j] += h
            minus[layer][i, j] -= h
            fd = (total(plus, dec.biases, noise) - total(minus, dec.biases, noise)) / (2 * h)
            assert abs(fd - gw[layer][i, j]) < 1e-5 * (1 + abs(fd)), (layer, i, j, fd, gw[layer][i, j])
        i = rng.integers(len(dec.biases[layer]))
        plus, minus = dec.biases, dec.biases
        plus[layer][i] += h
        minus[layer][i] -= h
        fd = (total(dec.weights, plus, noise) - total(dec.weights, minus, noise)) / (2 * h)
        assert abs(fd - gb[layer][i]) < 1e-5 * (1 + abs(fd))
    # Isotropic noise: the derivative in the common variance is the sum over coordinates.
    fd = (total(dec.weights, dec.biases, noise + h) - total(dec.weights, dec.biases, noise - h)) / (2 * h)
    assert abs(fd - gn.sum()) < 1e-5 * (1 + abs(fd))


def test_linear_decoder_recovers_probabilistic_pca():
    rng = np.random.default_rng(0)
    W = np.array([[2.0], [1.0], [-0.5]])
    X = rng.standard_normal((500, 1)) @ W.T + 0.3 * rng.standard_normal((500, 3)) + [1.0, -2.0, 0.5]
    est = exactem.ExactEM(latent_dim=1, hidden=(), activation="linear", max_iter=500, tol=1e-13, random_state=0).fit(X)
    assert abs(est.score(X) - ppca_log_likelihood(X, 1)) < 1e-6


@pytest.mark.parametrize("data", ["wave", "circle"])
def test_em_beats_ppca_on_nonlinear_data(data):
    X = getattr(exactem.datasets, data)(600, 0.1, seed=5)
    X_test = getattr(exactem.datasets, data)(600, 0.1, seed=6)
    est = exactem.ExactEM(latent_dim=1, hidden=(8, 8), max_iter=60, random_state=0).fit(X)
    assert est.score(X_test) > ppca_held_out(X, X_test, 1) + 0.3


def test_estimator_api_and_bad_input():
    X = exactem.datasets.circle(100, 0.1, seed=0)
    est = exactem.ExactEM(latent_dim=1, hidden=(4,), max_iter=3, random_state=0)
    assert est.fit(X) is est
    Xs, Zs = est.sample(7, random_state=1)
    assert Xs.shape == (7, 2) and Zs.shape == (7, 1)
    assert est.predict_latent(X[:5]).shape == (5, 1)
    assert est.score_samples(X).shape == (100,)
    k = est.n_parameters_
    assert k == (4 * 1 + 4) + (2 * 4 + 2) + 1
    assert np.isclose(est.bic(X), -2 * est.score(X) * 100 + k * np.log(100))
    assert np.isclose(est.aic(X), -2 * est.score(X) * 100 + 2 * k)
    for bad in [np.zeros(5), np.array([[np.nan, 0.0], [1.0, 2.0]]), np.zeros((1, 2))]:
        with pytest.raises(ValueError):
            exactem.ExactEM(max_iter=1).fit(bad)
    with pytest.raises(ValueError, match="noise"):
        exactem.ExactEM(noise="full").fit(X)
    with pytest.raises(ValueError, match="not fitted"):
        exactem.ExactEM().score(X)
    with pytest.warns(UserWarning, match="underdetermined"):
        exactem.ExactEM(hidden=(32, 32), max_iter=0).fit(X[:20])


def test_region_limit_keeps_the_last_good_model():
    X = exactem.datasets.wave(100, 0.1, seed=0)
    with pytest.warns(UserWarning, match="underdetermined"):
        free = exactem.ExactEM(latent_dim=1, hidden=(16, 16), max_iter=30, random_state=0).fit(X)
    # This fit's region count grows past its start; cap it just above the start.
    limit = free.n_regions_[0] + 2
    assert max(free.n_regions_) > limit
    est = exactem.ExactEM(latent_dim=1, hidden=(16, 16), max_iter=30, max_regions=limit, random_state=0)
    with pytest.raises(exactem.RegionLimitError, match="last good model"), pytest.warns(UserWarning):
        est.fit(X)
    assert len(est.history_) >= 1 and max(est.n_regions_) <= limit
    assert abs(est.score(X) - est.history_[-1]) < 1e-9


def test_lbfgs_solver_increases_the_likelihood():
    X = exactem.datasets.wave(200, 0.1, seed=2)
    est = exactem.ExactEM(latent_dim=1, hidden=(6,), max_iter=15, random_state=0, solver="lbfgs").fit(X)
    assert est.history_[-1] > est.history_[0] + 0.05
    assert abs(est.score(X) - est.history_[-1]) < 1e-6


def test_deterministic_given_random_state():
    X = exactem.datasets.wave(150, 0.1, seed=0)
    a = exactem.ExactEM(hidden=(5,), max_iter=5, random_state=3).fit(X)
    b = exactem.ExactEM(hidden=(5,), max_iter=5, random_state=3).fit(X)
    assert a.history_ == b.history_


@pytest.mark.parametrize("hidden", [(3, 3), (4, 3, 3)])
def test_m_step_carries_the_curvature_the_formed_maps_give(hidden):
    # Where the output is as wide as the layers, the M-step carries each hidden layer's output
    # map as its curvature and projections (shared by regions of one pattern above) instead
    # of forming F_q: the same updates as update_layer on maps formed layer by layer, top down.
    from exactem import em

    X = _four_dimensional_wave(300, 1)
    dec, stats, factors, psi = frozen_problem(X, hidden, max_iter=2, latent_dim=2)
    patterns = exactem.DGN(dec, psi).regions.patterns
    decay, damping = 0.2, 0.05
    weights, biases, _ = em.m_step(dec, patterns, psi, stats, weight_decay=decay, damping=damping)
    ws, bs = [w.copy() for w in dec.weights], [b.copy() for b in dec.biases]
    for layer in reversed(range(len(ws))):
        ws[layer], bs[layer] = update_layer(ws, bs, factors, psi, stats, layer, decay, damping)
    for got, want in zip(weights + biases, ws + bs):
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9 * (1 + np.abs(want).max()))


def test_conjugate_gradient_layer_solve_agrees_with_the_dense_one(monkeypatch):
    from exactem import em

    X = exactem.datasets.wave(300, 0.1, seed=0)
    dec, stats, factors, psi = frozen_problem(X, (12, 12), max_iter=2)
    # Run to convergence: the solve itself is what is compared (EM truncates it, see below).
    monkeypatch.setattr(em, "CG_MAX_ITER", 5000)
    monkeypatch.setattr(em, "CG_GAIN_RTOL", 0.0)
    for layer in range(3):
        monkeypatch.setattr(em, "CG_THRESHOLD", 10**9)
        dense = update_layer(dec.weights, dec.biases, factors, psi, stats, layer, 0.1, 0.01)
        monkeypatch.setattr(em, "CG_THRESHOLD", 0)
        iterative = update_layer(dec.weights, dec.biases, factors, psi, stats, layer, 0.1, 0.01)
        for a, b in zip(dense, iterative):
            assert np.allclose(a, b, rtol=1e-6, atol=1e-8 * (1 + np.abs(a).max()))


def test_region_sums_match_dense_sums_over_points():
    # The M-step's per-region sums against the same sums written out densely over points and
    # regions (S = 2: the second moments are S x S).
    X = exactem.datasets.wave(150, 0.1, seed=2)
    X = np.concatenate([X, X[:, :1] ** 2], axis=1)
    model = exactem.DGN(exactem.Decoder.random([2, 4, 3], seed=5), 0.3)
    es = model.e_step(X)
    R, S = len(model.regions), 2
    stats = RegionStats(es, X, R)
    m0 = es.m0.toarray()
    m1, m2 = np.zeros((len(X), R, S)), np.zeros((len(X), R, S, S))
    m1[es.points, es.regions] = es.m1
    m2[es.points, es.regions] = es.m2
    assert np.allclose(stats.s0, m0.sum(axis=0), rtol=1e-12, atol=1e-12)
    assert np.allclose(stats.s1, m1.sum(axis=0), rtol=1e-12, atol=1e-12)
    assert np.allclose(stats.s2, m2.sum(axis=0), rtol=1e-12, atol=1e-12)
    # The sums over the data are in the frame centred on the data's mean.
    np.testing.assert_allclose(stats.centre, X.mean(axis=0), rtol=1e-15)
    Xc = X - stats.centre
    assert np.allclose(stats.sx0, np.einsum("nq,nd->qd", m0, Xc), rtol=1e-12, atol=1e-12)
    assert np.allclose(stats.sx1, np.einsum("nqs,nd->qds", m1, Xc), rtol=1e-12, atol=1e-12)
    assert np.allclose(stats.sum_x2, (Xc * Xc).sum(axis=0), rtol=1e-12, atol=1e-12)


def test_normal_equations_solve_by_cholesky_else_least_squares():
    from exactem import em

    rng = np.random.default_rng(0)
    B = rng.standard_normal((6, 6))
    system = B @ B.T + np.eye(6)
    rhs = rng.standard_normal(6)
    x = em._solve_spd(system.copy(), lambda: pytest.fail("rebuilt a positive definite system"), rhs)
    np.testing.assert_allclose(x, np.linalg.solve(system, rhs), rtol=1e-10)
    # A unit with no data: its row and column are zero, Cholesky fails, least squares answers
    # (zero for that unknown, the exact solution for the others).
    system[2, :] = system[:, 2] = 0.0
    rhs[2] = 0.0
    x = em._solve_spd(system.copy(), lambda: system.copy(), rhs)
    np.testing.assert_allclose(system @ x, rhs, atol=1e-10)
    assert abs(x[2]) < 1e-12


def test_the_m_step_uses_one_blas_thread(monkeypatch):
    from threadpoolctl import ThreadpoolController

    from exactem import em

    def blas_threads():
        return [lib["num_threads"] for lib in ThreadpoolController().select(user_api="blas").info()]

    seen = []
    solve = em._update_layer

    def recording(*args):
        seen.append(blas_threads())
        return solve(*args)

    monkeypatch.setattr(em, "_update_layer", recording)
    X = exactem.datasets.wave(200, 0.1, seed=0)
    dec, stats, factors, psi = frozen_problem(X, (4, 4), max_iter=0)
    before = blas_threads()
    em.m_step(dec, exactem.DGN(dec, psi[0]).regions.patterns, psi, stats)
    assert len(seen) == 3 and all(n == 1 for threads in seen for n in threads)
    assert blas_threads() == before


def test_truncated_conjugate_gradients_still_increase_the_frozen_objective(monkeypatch):
    # A generalised EM step: a few CG iterations from the current parameters never lower the
    # frozen-mask objective (CG from zero decreases the quadratic at every step), damped or not.
    from exactem import em

    X = exactem.datasets.wave(300, 0.1, seed=1)
    dec, stats, factors, psi = frozen_problem(X, (12, 12), max_iter=2)
    monkeypatch.setattr(em, "CG_THRESHOLD", 0)
    start = frozen_objective(dec.weights, dec.biases, factors, psi, stats)
    for iterations, gain_rtol in [(1, 0.0), (3, 0.0), (10, 0.0), (100, 1e-1), (100, 1e-3)]:
        monkeypatch.setattr(em, "CG_MAX_ITER", iterations)
        monkeypatch.setattr(em, "CG_GAIN_RTOL", gain_rtol)
        for layer in range(2):
            for damping in [0.0, 0.1]:
                W, b = update_layer(dec.weights, dec.biases, factors, psi, stats, layer, 0.0, damping)
                ws, bs = dec.weights, dec.biases
                ws[layer], bs[layer] = W, b
                assert frozen_objective(ws, bs, factors, psi, stats) >= start - 1e-10 * abs(start)


@pytest.mark.parametrize("noise", [np.array([0.05, 0.2]), np.array([0.1, 0.1])])
def test_output_layer_rows_solve_the_full_system(noise):
    # The output layer's system is (sum_q T_q) (x) Psi^-1: solved row by row, it must equal the
    # full Kronecker system solved densely, with damping and weight decay, diagonal noise too.
    from exactem import em

    X = exactem.datasets.wave(300, 0.1, seed=2)
    dec, stats, factors, _ = frozen_problem(X, (6, 6), max_iter=2)
    layer = 2
    frame = em._in_frame(dec.biases, stats)  # the sums are about the data's mean
    maps = em.frozen_maps(dec.weights, frame, factors, layer)
    layer_system = em._LayerSystem(maps[:2], None, noise, stats)  # the output layer: F_q = I
    T = layer_system.T
    R, A1 = T.shape[0], T.shape[1]
    D = len(noise)
    decay, damping = 0.3, 0.05
    penalty = np.zeros((D, A1))
    penalty[:, :-1] = decay
    system = sum(np.kron(np.diag(1 / noise), T[q]) for q in range(R))  # unknowns theta[i, a] -> i * A1 + a
    diag = np.diag(system) + penalty.ravel()
    system = system + np.diag(penalty.ravel() + damping * diag + em._ridge(diag.reshape(D, A1)))
    theta_old = np.hstack([dec.weights[layer], frame[layer][:, None]])
    rhs = layer_system.rhs.ravel()
    residual = rhs - (system - np.diag(damping * diag + em._ridge(diag.reshape(D, A1)))) @ theta_old.ravel()
    expected = theta_old + np.linalg.solve(system, residual).reshape(D, A1)
    expected[:, -1] += stats.centre
    W, b = update_layer(dec.weights, dec.biases, factors, noise, stats, layer, decay, damping)
    np.testing.assert_allclose(np.hstack([W, b[:, None]]), expected, rtol=1e-8, atol=1e-10 * np.abs(expected).max())


def test_m_step_memory_does_not_grow_with_the_output_dimension_squared():
    # D = 400 outputs: an (R, D, D) array (the output layer's F_q^T Psi^-1 F_q, identities) would be
    # R x 1.3 MB; the M-step's own arrays are O(R D (width + S)).
    import tracemalloc

    from exactem.em import m_step

    rng = np.random.default_rng(0)
    dec = exactem.Decoder.random([1, 8, 400], seed=0)
    model = exactem.DGN(dec, 0.5)
    X, _ = model.sample(200, seed=1)
    R = len(model.regions)
    stats = RegionStats(model.e_step(X), X, R)
    tracemalloc.start()
    m_step(dec, model.regions.patterns, np.full(400, 0.5), stats)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert R >= 5
    assert peak < 0.5 * R * 400 * 400 * 8, (peak, R)


def test_s3_em_never_decreases_and_never_panics():
    # S = 3 integrals are adaptive quadrature to rtol, deterministic: the history is the exact
    # log-likelihood (to rtol) of each accepted model, the score of the returned one reproduces
    # its last entry, and the fit ends by its own rule, not by an engine failure.
    X = exactem.datasets.wave(40, 0.1, seed=5)
    est = exactem.ExactEM(latent_dim=3, hidden=(4,), max_iter=4, random_state=5).fit(X)
    history = np.array(est.history_)
    assert len(history) >= 2 and np.all(np.isfinite(history))
    assert np.all(np.diff(history) >= -1e-9 * (1 + np.abs(history[:-1])))
    assert history[-1] > history[0]
    assert abs(est.score(X) - history[-1]) <= 1e-6 * (1 + abs(history[-1]))
    assert est.n_regions_[-1] == len(est.model_.regions)
