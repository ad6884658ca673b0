"""The fit figure for each data dimension: every axis labelled, a legend, and a title that names
the model, the data, the noise, the final exact log-likelihood and whether the fit converged."""

import numpy as np
import pytest

import exactem
from exactem.plots import plot_fit

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.mark.parametrize("D, noise", [(1, "isotropic"), (2, "diagonal"), (3, "isotropic"), (6, "isotropic")])
def test_fit_figure_is_labelled(D, noise):
    rng = np.random.default_rng(D)
    t = rng.normal(size=(120, 1))
    X = np.hstack([np.cos(t * (k + 1)) for k in range(D)]) + 0.1 * rng.standard_normal((120, D))
    est = exactem.ExactEM(hidden=(4,), noise=noise, max_iter=3, random_state=0).fit(X)
    fig = plot_fit(est, X, n_samples=200, resolution=30, data_name="toy", X_test=X[:20])
    title = fig._suptitle.get_text()
    for part in ("[1, 4, %d]" % D, "leaky_relu", "toy", "120 points", "noise variance",
                 "%.4f nats/point" % est.history_[-1], "not converged"):
        assert part in title, (part, title)
    plotted = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    for ax in plotted:
        if ax.has_data() and ax.get_xlabel():
            assert "(" in ax.get_xlabel() or ax.get_xlabel() == "iteration"  # units, or a count
    assert all(ax.get_xlabel() for ax in plotted if ax.get_position().y0 < 0.2)  # bottom row labelled
    assert sum(ax.get_legend() is not None for ax in plotted) >= 2  # the data panel and the curve
    curve = plotted[-1]
    assert curve.get_ylabel() == "exact log-likelihood (nats per point)"
    if D > 2:
        caption = " ".join(t.get_text() for t in fig.texts)
        assert f"of {D} coordinates" in caption or f"all {D} coordinates" in caption
