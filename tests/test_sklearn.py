"""ExactEM as a scikit-learn estimator: scikit-learn's own estimator checks, parameters,
cloning, warnings, and the validation of inputs through scikit-learn's helpers."""

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.utils.estimator_checks import parametrize_with_checks

import exactem

# Few iterations keep these tests fast; the tests about the warning itself check it explicitly.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# Small networks and few iterations: the checks fit dozens of times on tiny data. Every check
# scikit-learn selects for a density estimator applies and passes; none is expected to fail.
# Checks for classifiers, regressors, transformers, sample weights and partial_fit are not
# selected by scikit-learn for an estimator without those methods; check_array_api_input is
# skipped by scikit-learn itself unless SCIPY_ARRAY_API=1 (exactem takes numpy arrays only).
_CHECKED = [exactem.ExactEM(hidden=(4,), max_iter=5, random_state=0),
            exactem.ExactEM(latent_dim=2, hidden=(3,), noise="diagonal", max_iter=3, random_state=0),
            exactem.ExactEM(hidden=(4,), max_iter=3, solver="lbfgs", random_state=0)]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.filterwarnings("ignore:.*underdetermined:UserWarning")
@parametrize_with_checks(_CHECKED)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_parameters_clone_and_repr():
    est = exactem.ExactEM(latent_dim=2, hidden=(8, 4), max_iter=7, random_state=3)
    params = est.get_params()
    assert params["hidden"] == (8, 4) and params["max_iter"] == 7 and params["solver"] == "em"
    copy = clone(est)
    assert copy is not est and copy.get_params() == params
    est.set_params(max_iter=11, noise="diagonal")
    assert est.max_iter == 11 and est.noise == "diagonal"
    # The repr shows the parameters that differ from the defaults.
    assert " ".join(repr(est).split()) == (
        "ExactEM(hidden=(8, 4), latent_dim=2, max_iter=11, noise='diagonal', random_state=3)")


def test_unfitted_and_bad_input_errors():
    est = exactem.ExactEM(hidden=(4,), max_iter=2, random_state=0)
    with pytest.raises(NotFittedError):
        est.score_samples(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        est.fit(np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="2D array"):
        est.fit(np.arange(5.0))
    with pytest.raises(ValueError, match="minimum of 2"):
        est.fit(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="tol"):
        exactem.ExactEM(tol=-1.0).fit(np.random.default_rng(0).normal(size=(20, 2)))
    X = exactem.datasets.wave(50, seed=0)
    with pytest.warns(ConvergenceWarning):
        est.fit(X)
    with pytest.raises(ValueError, match="2 features"):
        est.score_samples(np.zeros((3, 3)))


def test_convergence_warning_only_when_max_iter_is_reached():
    X = exactem.datasets.wave(200, seed=1)
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        est = exactem.ExactEM(hidden=(4,), max_iter=2, random_state=0).fit(X)
    assert not est.converged_ and est.n_iter_ == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est = exactem.ExactEM(hidden=(4,), max_iter=500, tol=1e-3, random_state=0).fit(X)
    assert est.converged_ and est.n_iter_ < 500


def test_random_state_conventions():
    """An integer seed, a Generator from it and a RandomState are all accepted; an integer is
    deterministic."""
    X = exactem.datasets.circle(100, seed=2)
    fits = [exactem.ExactEM(hidden=(4,), max_iter=3, random_state=rs).fit(X).history_
            for rs in (5, 5, np.random.default_rng(5))]
    assert fits[0] == fits[1] == fits[2]
    exactem.ExactEM(hidden=(4,), max_iter=3, random_state=np.random.RandomState(0)).fit(X)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_grid_search_selects_by_held_out_exact_likelihood():
    X = exactem.datasets.wave(150, seed=3)
    search = GridSearchCV(exactem.ExactEM(max_iter=3, random_state=0), {"hidden": [(2,), (6,)]}, cv=2).fit(X)
    assert search.best_params_["hidden"] in [(2,), (6,)]
    assert np.isfinite(search.best_score_)


def test_verbose_progress_bar_goes_to_stderr(capsys):
    X = exactem.datasets.wave(100, seed=4)
    exactem.ExactEM(hidden=(4,), max_iter=500, tol=1e-3, random_state=0, verbose=True).fit(X)
    captured = capsys.readouterr()
    assert "log-lik/point" in captured.err and captured.out == ""
