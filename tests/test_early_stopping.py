"""Early stopping in ExactEM (scikit-learn MLP's rule), for both solvers, on a fit that overfits:
30 points of the wave, a 2-D latent space and 16-16 hidden units (~370 parameters)."""

import warnings

import numpy as np
import pytest

from exactem import ExactEM, datasets

N_ITER_NO_CHANGE = 5
PLAIN_ITERATIONS = 40


@pytest.fixture(scope="module")
def data():
    return datasets.wave(30, 0.1, seed=1), datasets.wave(1000, 0.1, seed=2)


def make(solver, **kw):
    kw = dict(dict(latent_dim=2, hidden=(16, 16), random_state=0, tol=1e-6), **kw)
    return ExactEM(solver=solver, **kw)


def fit_quietly(est, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # underdetermined on purpose
        return est.fit(X)


@pytest.fixture(scope="module", params=["em", "lbfgs"])
def fits(request, data):
    """The early-stopped fit, and a plain fit on exactly the rows it trained on (same seed, hence
    the same initial model and the same iterates), whose every iterate is scored on the held-out
    rows by a callback."""
    X, _ = data
    solver = request.param
    stopped = fit_quietly(make(solver, early_stopping=True, validation_fraction=0.25, n_iter_no_change=N_ITER_NO_CHANGE,
                               max_iter=PLAIN_ITERATIONS), X)
    X_fit, X_val = make(solver, early_stopping=True, validation_fraction=0.25)._validation_split(X)
    plain_scores = []
    plain = fit_quietly(make(solver, max_iter=PLAIN_ITERATIONS,
                             callback=lambda it, est: plain_scores.append(est.score(X_val))), X_fit)
    return solver, stopped, plain, plain_scores, X_fit, X_val


def test_the_split_is_a_seeded_partition_of_the_rows(data):
    X, _ = data
    est = make("em", early_stopping=True, validation_fraction=0.25)
    X_fit, X_val = est._validation_split(X)
    assert len(X_val) == 8 and len(X_fit) == 22
    rows = np.concatenate([X_fit, X_val])
    assert np.array_equal(rows[np.lexsort(rows.T)], X[np.lexsort(X.T)])
    again = make("em", early_stopping=True, validation_fraction=0.25)._validation_split(X)
    assert np.array_equal(again[1], X_val)
    other = make("em", early_stopping=True, validation_fraction=0.25, random_state=1)._validation_split(X)[1]
    assert not np.array_equal(other, X_val)


def test_validation_history_is_the_exact_held_out_likelihood_of_every_iterate(fits):
    solver, stopped, plain, plain_scores, X_fit, X_val = fits
    history = np.array(stopped.validation_history_)
    assert len(history) == stopped.n_iter_ + 1 == len(stopped.history_)
    # The stopped run's iterates are the plain run's (same rows, same seed), so its record must
    # match an independent scoring of them; both are exact, so the match is to rounding.
    assert len(plain_scores) >= len(history)
    np.testing.assert_allclose(history, plain_scores[:len(history)], rtol=1e-9, atol=1e-9)


def test_training_stops_by_the_rule_and_keeps_the_best_iterate(fits):
    solver, stopped, plain, plain_scores, X_fit, X_val = fits
    history = np.array(stopped.validation_history_)
    assert stopped.n_iter_ < PLAIN_ITERATIONS, "the data set should make the fit overfit early"
    # scikit-learn's rule recomputed: the last N_ITER_NO_CHANGE iterations did not beat the best
    # before them by more than tol (relative); every earlier window of that length contained one.
    best = np.maximum.accumulate(history)
    tol = stopped.tol * (1 + np.abs(best[:-1]))
    improved = history[1:] > best[:-1] + tol
    assert not improved[-N_ITER_NO_CHANGE:].any()
    assert all(improved[k:k + N_ITER_NO_CHANGE].any() for k in range(len(improved) - N_ITER_NO_CHANGE))
    assert stopped.best_iteration_ == int(np.argmax(history))
    # The fitted model is the best iterate: its held-out exact log-likelihood is the recorded maximum.
    assert stopped.score(X_val) == pytest.approx(history.max(), rel=1e-12, abs=1e-12)
    assert stopped.model_.decoder is stopped.decoder_


def test_early_stopping_beats_the_last_iterate_held_out(fits, data):
    _, X_test = data
    solver, stopped, plain, plain_scores, X_fit, X_val = fits
    assert stopped.score(X_val) >= plain.score(X_val)
    assert stopped.score(X_test) >= plain.score(X_test)
    # The plain fit did overfit: it ends better on its training rows than the stopped one.
    assert plain.score(X_fit) > stopped.score(X_fit)


def test_early_stopping_is_deterministic(fits, data):
    X, _ = data
    solver, stopped, *_ = fits
    again = fit_quietly(make(solver, early_stopping=True, validation_fraction=0.25, n_iter_no_change=N_ITER_NO_CHANGE,
                             max_iter=PLAIN_ITERATIONS), X)
    assert again.validation_history_ == stopped.validation_history_
    assert again.best_iteration_ == stopped.best_iteration_
    for a, b in zip(again.decoder_.weights + again.decoder_.biases, stopped.decoder_.weights + stopped.decoder_.biases):
        assert np.array_equal(a, b)


def test_without_early_stopping_nothing_is_held_out(data):
    X, _ = data
    est = ExactEM(latent_dim=1, hidden=(4,), max_iter=2, random_state=0).fit(X)
    assert est.validation_history_ is None and est.best_iteration_ is None
    assert len(est.history_) == est.n_iter_ + 1


def test_max_time_stops_after_the_first_iteration_past_it(data):
    X, _ = data
    for solver in ("em", "lbfgs"):
        est = ExactEM(latent_dim=1, hidden=(4,), max_iter=50, random_state=0, solver=solver, max_time=1e-9).fit(X)
        assert est.n_iter_ == 0 and len(est.history_) == 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(validation_fraction=0.0), "validation_fraction"),
    (dict(validation_fraction=1.0), "validation_fraction"),
    (dict(n_iter_no_change=0), "n_iter_no_change"),
    (dict(early_stopping="yes"), "early_stopping"),
    (dict(max_time=-1.0), "max_time"),
])
def test_bad_stopping_parameters_are_clear_errors(data, kwargs, message):
    X, _ = data
    with pytest.raises(ValueError, match=message):
        ExactEM(hidden=(4,), **kwargs).fit(X)


def test_too_few_rows_to_hold_any_out_is_a_clear_error():
    with pytest.raises(ValueError, match="rows to train on"):
        ExactEM(hidden=(4,), early_stopping=True, validation_fraction=0.5).fit(np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 1.0]]))


def test_lbfgs_stops_the_same_where_scipy_lets_stop_iteration_out(data, monkeypatch):
    """scipy < 1.11 does not catch a callback's StopIteration; the fit must end the same way."""
    import scipy.optimize

    X, _ = data
    real_minimize = scipy.optimize.minimize

    class Escape(Exception):
        pass

    def old_minimize(fun, x0, callback=None, **kw):
        def relay(x):
            try:
                callback(x)
            except StopIteration:
                raise Escape from None

        try:
            return real_minimize(fun, x0, callback=relay, **kw)
        except Escape:
            raise StopIteration from None

    kw = dict(hidden=(8,), early_stopping=True, validation_fraction=0.25, n_iter_no_change=2, max_iter=40)
    new = fit_quietly(make("lbfgs", **kw), X)
    monkeypatch.setattr(scipy.optimize, "minimize", old_minimize)
    old = fit_quietly(make("lbfgs", **kw), X)
    assert new.n_iter_ < 40 and old.validation_history_ == new.validation_history_
    assert old.best_iteration_ == new.best_iteration_ and old.score(X) == new.score(X)
