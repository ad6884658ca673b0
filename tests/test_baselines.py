"""The VAE/IWAE baselines, the digits data set and PyTorch-layout state dicts.

Every fit here shares one data shape, batch size and set of widths, so JAX compiles each
training step once for the whole module (a compilation costs about a second)."""

import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

import exactem

pytest.importorskip("jax")
pytest.importorskip("optax")
pytest.importorskip("sklearn")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402

from exactem import baselines  # noqa: E402
from exactem.baselines import IWAE, VAE  # noqa: E402

HAS_ELBO = hasattr(exactem.DGN, "elbo")
SMALL = dict(hidden=(8, 8), encoder_hidden=(16,), batch_size=50, learning_rate=1e-2)


def curve(n=200, seed=0):
    """A bent line in the plane: a 1-D latent explains it, so a few epochs already teach a lot."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(n)
    return np.stack([2 * z, np.abs(z)], axis=1) + 0.1 * rng.standard_normal((n, 2))


@pytest.fixture(scope="module")
def data():
    return curve()


@pytest.fixture(scope="module")
def vae(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return VAE(max_epochs=30, random_state=0, **SMALL).fit(data)


@pytest.fixture(scope="module")
def iwae(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return IWAE(max_epochs=30, k=5, random_state=0, **SMALL).fit(data)


@pytest.fixture(scope="module")
def vae_diagonal(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return VAE(max_epochs=5, noise="diagonal", random_state=0, **SMALL).fit(data)


def params_of(est):
    """The fitted estimator's parameters in the JAX training layout."""
    enc = est.encoder_
    dec = est.decoder_
    noise = np.broadcast_to(np.asarray(est.noise_var_, dtype=float), (1,) if est.noise == "isotropic" else
                            (dec.output_dim,))
    return {
        "dec": list(zip(dec.weights, dec.biases)),
        "enc": list(zip(enc.weights, enc.biases)),
        "enc_mean": (enc.mean_weight, enc.mean_bias),
        "enc_logvar": (enc.logvar_weight, enc.logvar_bias),
        "log_noise": np.log(noise - est.min_noise_var),
    }


# -- import isolation and precision -------------------------------------------------------------------

def test_import_exactem_does_not_import_jax():
    code = "import sys, exactem; bad = [m for m in ('jax', 'optax') if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))


def test_fit_leaves_the_global_jax_precision_alone(data):
    before = jax.config.jax_enable_x64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        VAE(max_epochs=1, random_state=0, **SMALL).fit(data)
    assert jax.config.jax_enable_x64 == before


# -- the training code against an independent numpy/exact-engine implementation -------------------------

@pytest.mark.parametrize("which", ["vae", "iwae", "vae_diagonal"])
def test_jax_training_bound_matches_numpy_on_the_same_noise(which, data, request):
    """The bound Adam differentiates (JAX) equals a numpy evaluation that uses the exact engine's
    decoder, for the same reparameterisation noise: the analytic-KL ELBO for the VAE, the
    importance-weighted bound for the IWAE."""
    est = request.getfixturevalue(which)
    X = data[:37]
    key = jax.random.PRNGKey(3)
    analytic = which.startswith("vae")
    k = 1 if analytic else est.k
    with baselines._x64():
        params = jax.tree_util.tree_map(jnp.asarray, params_of(est))
        bound = jax.jit(baselines._bound, static_argnames=("slope", "k", "analytic_kl"))
        got = np.asarray(bound(params, jnp.asarray(X), key, slope=est.decoder_.slopes[0],
                               min_noise_var=est.min_noise_var, k=k, analytic_kl=analytic))
        eps = np.asarray(jax.random.normal(key, (k, len(X), est.latent_dim), dtype=jnp.float64))
    mean, var = est.encoder_(X)
    if analytic:
        Z = mean + np.sqrt(var) * eps[0]
        r = X - est.decoder_(Z)
        psi = est.noise_var_
        recon = -0.5 * np.sum(np.log(2 * np.pi * psi) + r * r / psi, axis=1)
        kl = 0.5 * np.sum(var + mean**2 - 1 - np.log(var), axis=1)
        want = recon - kl
    else:
        log_w = baselines._numpy_log_weights(est.encoder_, est.decoder_, est.noise_var_, X, eps)
        want = np.log(np.mean(np.exp(log_w), axis=0))
    # Same formulas in two float64 implementations (different matmul orders; the noise variance
    # round-trips through log/exp): they differ by rounding, O(1e-15) of the terms' magnitude. The
    # bound 1e-11 leaves room for thousands of roundings while any wrong or missing term (O(1e-2)
    # or more at these parameters) fails it.
    scale = 1 + np.abs(want)
    np.testing.assert_array_less(np.abs(got - want), 1e-11 * scale)


def test_importance_weights_are_unbiased_for_the_exact_likelihood(vae, data):
    """E_q[p(x, z) / q(z | x)] = p(x): the numpy importance weights, averaged over many draws,
    reproduce the exact engine's p(x) within 5 standard errors."""
    X = data[:5]
    exact = vae.score_samples(X)
    M = 20000
    eps = np.random.default_rng(7).standard_normal((M, len(X), vae.latent_dim))
    ratio = np.exp(baselines._numpy_log_weights(vae.encoder_, vae.decoder_, vae.noise_var_, X, eps) - exact)
    se = ratio.std(axis=0, ddof=1) / np.sqrt(M)
    assert np.all(np.abs(ratio.mean(axis=0) - 1) <= 5 * se + 1e-12), (ratio.mean(axis=0), se)


def test_iwae_bound_lies_between_the_elbo_and_the_exact_likelihood(iwae, data):
    """In expectation ELBO <= IWAE_k <= log p(x): Monte Carlo means over 400 draws, 4 SE slack."""
    X = data[:20]
    reps = 400
    elbo = np.array([iwae.importance_weighted_bound(X, k=1, random_state=r).mean() for r in range(reps)])
    bound = np.array([iwae.importance_weighted_bound(X, k=iwae.k, random_state=reps + r).mean() for r in range(reps)])
    exact = iwae.score(X)
    se_gap = np.sqrt(elbo.var(ddof=1) / reps + bound.var(ddof=1) / reps)
    assert bound.mean() - elbo.mean() > -4 * se_gap
    assert bound.mean() <= exact + 4 * bound.std(ddof=1) / np.sqrt(reps)
    # More samples tighten the bound: k = 50 comes closer to log p(x) than k = 1.
    tight = np.mean([iwae.importance_weighted_bound(X, k=50, random_state=r).mean() for r in range(40)])
    assert exact - tight < exact - elbo.mean()


# -- the estimator's behaviour --------------------------------------------------------------------------

def test_same_random_state_same_history_and_parameters(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fits = [IWAE(max_epochs=5, random_state=s, **SMALL).fit(data) for s in (4, 4, 5)]
    a, b, c = fits
    assert [h["objective"] for h in a.history_] == [h["objective"] for h in b.history_]
    for x, y in zip(a.decoder_.weights + a.decoder_.biases + a.encoder_.weights,
                    b.decoder_.weights + b.decoder_.biases + b.encoder_.weights):
        np.testing.assert_array_equal(x, y)
    assert a.noise_var_ == b.noise_var_
    assert [h["objective"] for h in a.history_] != [h["objective"] for h in c.history_]
    assert not np.array_equal(a.decoder_.weights[0], c.decoder_.weights[0])


def test_training_improves_the_exact_likelihood_and_the_bound(vae, iwae, data):
    initial = VAE(max_epochs=0, random_state=0, **SMALL).fit(data)
    assert initial.n_iter_ == 0 and initial.history_ == [] and initial.best_iteration_ is None
    for est in (vae, iwae):
        assert est.n_iter_ == len(est.history_) == 30 and est.validation_history_ is None
        assert [h["epoch"] for h in est.history_] == list(range(1, 31))
        times = [h["time"] for h in est.history_]
        assert all(t2 >= t1 for t1, t2 in zip(times, times[1:]))
        assert est.score(data) > initial.score(data)
        objective = [h["objective"] for h in est.history_]
        assert np.mean(objective[-5:]) > np.mean(objective[:5])


@pytest.mark.parametrize("init", ["random", "pca"])
def test_same_initial_model_as_exactem(init, data):
    """For one random_state and init the VAE starts from ExactEM's decoder and noise."""
    vae0 = VAE(max_epochs=0, init=init, random_state=3, **SMALL).fit(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        em0 = exactem.ExactEM(hidden=SMALL["hidden"], init=init, max_iter=0, random_state=3).fit(data)
    for x, y in zip(vae0.decoder_.weights + vae0.decoder_.biases, em0.decoder_.weights + em0.decoder_.biases):
        np.testing.assert_array_equal(x, y)
    assert vae0.noise_var_ == pytest.approx(em0.noise_var_, rel=1e-12)
    chosen = VAE(max_epochs=0, init=init, init_noise_var=[0.3, 0.2], noise="diagonal", random_state=3,
                 **SMALL).fit(data)
    np.testing.assert_allclose(chosen.noise_var_, [0.3, 0.2], rtol=1e-12)
    np.testing.assert_array_equal(chosen.decoder_.weights[0], vae0.decoder_.weights[0])


def test_score_samples_is_the_exact_log_likelihood(vae, data):
    np.testing.assert_array_equal(vae.score_samples(data), vae.model_.log_likelihood(data))
    assert vae.score(data) == pytest.approx(np.mean(vae.model_.log_likelihood(data)), rel=1e-15)
    assert vae.model_.decoder is vae.decoder_


@pytest.mark.skipif(not HAS_ELBO, reason="DGN.elbo (the exact ELBO) is not in this build yet")
def test_exact_elbo_is_below_the_likelihood_and_matches_monte_carlo(vae, data):
    X = data[:20]
    elbo = vae.elbo(X)
    ll = vae.score_samples(X)
    assert np.all(elbo <= ll + 1e-10 * (1 + np.abs(ll)))
    draws = np.array([vae.importance_weighted_bound(X, k=1, random_state=r) for r in range(2000)])
    se = draws.std(axis=0, ddof=1) / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(axis=0) - elbo) <= 5 * se)


def test_early_stopping_keeps_the_best_validation_parameters(data):
    seen = []

    def record(epoch, est):
        seen.append((epoch, est.decoder_.weights, est.noise_var_, est.model_.decoder is est.decoder_))

    est = VAE(max_epochs=60, early_stopping=True, validation_fraction=0.2, n_iter_no_change=3, random_state=1,
              callback=record, **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(data)
    val = est.validation_history_
    assert len(val) == est.n_iter_ + 1 == len(seen)  # the initial model first
    assert [s[0] for s in seen] == list(range(est.n_iter_ + 1))
    assert all(s[3] for s in seen)
    best = int(np.argmax(val))
    assert est.best_iteration_ == best
    for w_kept, w_best in zip(est.decoder_.weights, seen[best][1]):
        np.testing.assert_array_equal(w_kept, w_best)
    assert est.noise_var_ == seen[best][2]
    if est.converged_:
        assert est.n_iter_ - best >= est.n_iter_no_change
    else:
        assert est.n_iter_ == 60
    # The held-out rows are ExactEM's for the same settings, and the record is their exact score.
    _, X_val = exactem.ExactEM(early_stopping=True, validation_fraction=0.2, random_state=1)._validation_split(data)
    assert est.score(X_val) == pytest.approx(val[best], rel=1e-12)


def test_max_time_counts_training_not_the_callback(data):
    import time

    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # a time limit is not a convergence failure
        est = VAE(max_epochs=50, max_time=1e-9, random_state=0, **SMALL).fit(data)
    assert est.n_iter_ == 0 and not est.converged_  # the initial model already used the budget
    # A callback that sleeps 0.5 s per call (5 calls: 2.5 s) under a budget of 2 s: training (a few
    # ms per epoch once compiled; the warm-up fit compiles) still runs all 4 epochs, and history_'s
    # clock leaves the sleeps out.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        VAE(max_epochs=1, random_state=0, **SMALL).fit(data)
        slow = VAE(max_epochs=4, max_time=2.0, random_state=0, callback=lambda e, est: time.sleep(0.5),
                   **SMALL).fit(data)
    assert slow.n_iter_ == 4
    assert slow.history_[-1]["time"] < 2.0


def test_max_epochs_warns_and_stopping_rule_converges(data):
    with pytest.warns(ConvergenceWarning):
        VAE(max_epochs=2, random_state=0, **SMALL).fit(data)
    # A huge tol: the second window cannot beat the first by that much, so the rule fires at 2n epochs.
    est = VAE(max_epochs=50, n_iter_no_change=2, tol=1e6, random_state=0, **SMALL).fit(data)
    assert est.converged_ and est.n_iter_ == 4


def test_sample_encoder_and_pickling(vae, data):
    X, Z = vae.sample(7, random_state=0)
    assert X.shape == (7, 2) and Z.shape == (7, 1)
    q_mean, q_var = vae.encoder_(data)
    assert q_mean.shape == q_var.shape == (len(data), 1) and np.all(q_var > 0)
    again = pickle.loads(pickle.dumps(vae.encoder_))
    np.testing.assert_array_equal(again(data)[0], q_mean)
    # The whole estimator pickles (its DGN is rebuilt on demand) and scores the same.
    clone_ = pickle.loads(pickle.dumps(vae))
    assert "_model_cache" not in clone_.__dict__ and "_model_cache" in vae.__dict__
    np.testing.assert_array_equal(clone_.score_samples(data), vae.score_samples(data))
    np.testing.assert_array_equal(clone_.encoder_(data)[1], q_var)


def test_sklearn_conventions_and_input_errors(data):
    est = IWAE(k=3, max_epochs=1)
    assert est.get_params()["k"] == 3 and clone(est).get_params() == est.get_params()
    with pytest.raises(NotFittedError):
        est.score_samples(data)
    with pytest.raises(ValueError, match="batch_size"):
        VAE(batch_size=0).fit(data)
    with pytest.raises(ValueError, match="k must"):
        IWAE(k=0).fit(data)
    with pytest.raises(ValueError, match="noise"):
        VAE(noise="full").fit(data)
    with pytest.raises(ValueError, match="init"):
        VAE(init="zeros").fit(data)
    with pytest.raises(ValueError, match="init_noise_var"):
        VAE(init_noise_var=-1.0).fit(data)
    with pytest.raises(ValueError, match="init_noise_var"):
        VAE(init_noise_var=[1.0, 2.0, 3.0], noise="diagonal").fit(data)
    with pytest.raises(ValueError, match="max_time"):
        VAE(max_time=0).fit(data)
    with pytest.raises(ValueError):
        VAE().fit(data[:, 0])  # 1-D
    with pytest.raises(ValueError):
        VAE().fit(np.array([[1.0, np.nan], [0.0, 1.0]]))


def test_scoring_checks_the_feature_count(vae, data):
    with pytest.raises(ValueError, match="features"):
        vae.score_samples(np.ones((3, 5)))


# -- data sets -----------------------------------------------------------------------------------------

def test_digits_shape_range_and_labels():
    X, y = exactem.datasets.digits(return_labels=True)
    assert X.shape == (1797, 64) and X.dtype == np.float64 and y.shape == (1797,)
    assert X.min() == 0.0 and X.max() == 1.0
    np.testing.assert_array_equal(X * 16, np.round(X * 16))  # pixel/16 of integer pixels
    assert set(np.unique(y)) == set(range(10))
    np.testing.assert_array_equal(exactem.datasets.digits(), X)


def test_train_test_split_is_seeded_and_partitions_the_rows():
    X = np.arange(40.0).reshape(20, 2)
    a_train, a_test = exactem.datasets.train_test_split(X, test_fraction=0.25, seed=3)
    b_train, b_test = exactem.datasets.train_test_split(X, test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(a_test, b_test)
    assert a_test.shape == (5, 2) and a_train.shape == (15, 2)
    np.testing.assert_array_equal(np.sort(np.concatenate([a_train, a_test])[:, 0]), X[:, 0])
    c_train, c_test = exactem.datasets.train_test_split(X, test_fraction=0.25, seed=4)
    assert not np.array_equal(a_test, c_test)
    _, _, y_train, y_test = exactem.datasets.train_test_split(X, seed=3, labels=X[:, 0])
    np.testing.assert_array_equal(y_test, a_test[:, 0])
    with pytest.raises(ValueError, match="test_fraction"):
        exactem.datasets.train_test_split(X, test_fraction=1.5)


# -- PyTorch state dicts ----------------------------------------------------------------------------------

def test_state_dict_round_trip_is_bit_exact():
    dec = exactem.Decoder.random([2, 5, 4, 3], activation="leaky_relu", alpha=0.2, seed=1)
    state = dec.to_state_dict()
    assert list(state) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    assert state["2.weight"].shape == (4, 5) and state["4.bias"].shape == (3,)
    back = exactem.Decoder.from_state_dict(state, activation="leaky_relu", alpha=0.2)
    for x, y in zip(dec.weights + dec.biases, back.weights + back.biases):
        np.testing.assert_array_equal(x, y)
    Z = np.random.default_rng(0).normal(size=(10, 2))
    np.testing.assert_array_equal(back(Z), dec(Z))
    # A prefix (with or without its dot), lists and float32 values (torch's default dtype).
    nested = {"encoder.0.weight": np.zeros((1, 1)), **dec.to_state_dict(prefix="decoder")}
    assert "decoder.0.weight" in nested
    for prefix in ("decoder", "decoder."):
        again = exactem.Decoder.from_state_dict(nested, alpha=0.2, prefix=prefix)
        np.testing.assert_array_equal(again.weights[1], dec.weights[1])
    as32 = {k: v.astype(np.float32) for k, v in state.items()}
    from32 = exactem.Decoder.from_state_dict({k: v.tolist() for k, v in as32.items()})
    np.testing.assert_array_equal(from32.to_state_dict()["0.weight"], as32["0.weight"].astype(np.float64))


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("2.bias"), "missing key '2.bias'"),
    (lambda s: s.update({"1.weight": np.zeros((2, 2))}), "odd index"),
    (lambda s: s.update({"8.weight": np.zeros((3, 3)), "8.bias": np.zeros(3)}), "no gaps"),
    (lambda s: s.update({"2.weight": np.zeros((4, 6))}), "input width 6"),
    (lambda s: s.update({"0.bias": np.zeros(7)}), "must have shape"),
    (lambda s: s.update({"0.running_mean": np.zeros(5)}), "unexpected key"),
])
def test_state_dict_errors_name_the_key(edit, message):
    state = exactem.Decoder.random([2, 5, 4, 3], seed=1).to_state_dict()
    edit(state)
    with pytest.raises(ValueError, match=message):
        exactem.Decoder.from_state_dict(state)


def test_state_dict_wrong_prefix_lists_the_keys():
    state = exactem.Decoder.random([2, 3], seed=1).to_state_dict(prefix="net")
    with pytest.raises(ValueError, match="prefix"):
        exactem.Decoder.from_state_dict(state)
