"""Everything fitted pickles (and goes through joblib) to an object that gives the same results:
the arrays that define an object are stored, and the engine's objects are rebuilt on load."""

import pickle

import joblib
import numpy as np
import pytest

import exactem


def roundtrips(obj, tmp_path):
    """The object after pickle.dumps/loads and after joblib.dump/load."""
    path = tmp_path / "obj.joblib"
    joblib.dump(obj, path)
    return [pickle.loads(pickle.dumps(obj)), joblib.load(path)]


def test_decoder_roundtrip(tmp_path):
    dec = exactem.Decoder.random([2, 6, 5, 3], activation=["relu", "abs"], alpha=0.3, seed=1)
    Z = np.random.default_rng(0).normal(size=(50, 2))
    for copy in roundtrips(dec, tmp_path):
        assert copy.widths == dec.widths and copy.activations == dec.activations and copy.alpha == dec.alpha
        assert np.array_equal(copy(Z), dec(Z))
        assert np.array_equal(copy.patterns(Z), dec.patterns(Z))
        assert len(copy.regions()) == len(dec.regions())


def test_partition_roundtrip(tmp_path):
    part = exactem.Decoder.random([2, 8, 8, 3], seed=2).regions()
    for copy in roundtrips(part, tmp_path):
        assert len(copy) == len(part)
        for name in ("A", "b", "patterns", "interior_points", "bounded"):
            assert np.array_equal(getattr(copy, name), getattr(part, name)), name
        for q in (0, len(part) // 2, len(part) - 1):
            for a, b in zip(copy.facets(q), part.facets(q)):
                assert np.array_equal(a, b)
            assert np.array_equal(copy.neighbors(q), part.neighbors(q))


@pytest.mark.parametrize("noise_var", [0.05, np.array([0.02, 0.07])])
def test_dgn_and_posterior_roundtrip(tmp_path, noise_var):
    model = exactem.DGN(exactem.Decoder.random([1, 8, 8, 2], seed=3), noise_var, rtol=1e-5, seed=4)
    X, Z = model.sample(40, seed=0)
    post = model.posterior(X[0])
    for copy in roundtrips(model, tmp_path):
        assert np.array_equal(copy.log_likelihood(X), model.log_likelihood(X))
        assert np.array_equal(np.asarray(copy.noise_var), np.asarray(model.noise_var))
        assert (copy.rtol, copy.seed, copy.max_regions) == (model.rtol, model.seed, model.max_regions)
        a, b = copy.e_step(X), model.e_step(X)
        assert np.array_equal(a.m1, b.m1) and np.array_equal(a.m0.toarray(), b.m0.toarray())
    for copy in roundtrips(post, tmp_path):
        assert copy.log_likelihood == post.log_likelihood
        assert np.array_equal(copy.weights, post.weights) and np.array_equal(copy.mean, post.mean)
        assert np.array_equal(copy.sample(20, seed=5), post.sample(20, seed=5))
        assert np.array_equal(copy.logpdf(Z[:5]), post.logpdf(Z[:5]))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("solver", ["em", "lbfgs"])
def test_fitted_estimator_roundtrip(tmp_path, solver):
    X = exactem.datasets.wave(200, seed=5)
    est = exactem.ExactEM(hidden=(6, 6), max_iter=40, tol=1e-4, solver=solver, random_state=0).fit(X)
    X_test = exactem.datasets.wave(100, seed=6)
    for copy in roundtrips(est, tmp_path):
        assert copy.get_params() == est.get_params()
        assert copy.history_ == est.history_ and copy.n_iter_ == est.n_iter_
        assert np.array_equal(copy.score_samples(X_test), est.score_samples(X_test))
        assert np.array_equal(copy.predict_latent(X_test), est.predict_latent(X_test))
        assert np.array_equal(copy.sample(10, random_state=1)[0], est.sample(10, random_state=1)[0])


def test_decoder_copies_the_callers_arrays():
    """The decoder's arrays are read-only; the caller's must stay as they were (writable)."""
    w = [np.ones((3, 2)), np.ones((1, 3))]
    b = [np.zeros(3), np.zeros(1)]
    dec = exactem.Decoder(w, b)
    assert all(a.flags.writeable for a in w + b)
    w[0][0, 0] = 5.0  # the decoder does not see later changes to the caller's arrays
    assert dec.weights[0][0, 0] == 1.0


def test_partition_arrays_are_read_only():
    part = exactem.Decoder.random([2, 6, 3], seed=0).regions()
    G, h = part.facets(0)
    for arr in (part.A, part.b, part.patterns, part.interior_points, G, h, part.facet_points(0)):
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr.setflags(write=True)


_SNAPSHOTS = []


class _Checkpoint:
    """A picklable callback that pickles the estimator at iteration 2."""

    def __call__(self, iteration, estimator):
        if iteration == 2:
            _SNAPSHOTS.append(pickle.dumps(estimator))


def test_estimator_pickles_mid_fit_from_a_callback():
    """A checkpointing callback can pickle the estimator while it fits (with a progress bar)."""
    X = exactem.datasets.wave(100, seed=7)
    _SNAPSHOTS.clear()
    exactem.ExactEM(hidden=(4,), max_iter=300, tol=1e-3, verbose=True, random_state=0, callback=_Checkpoint()).fit(X)
    restored = pickle.loads(_SNAPSHOTS[0])
    assert len(restored.history_) == 3 and not hasattr(restored, "_progress_bar")
    assert abs(restored.score(X) - restored.history_[-1]) < 1e-9
