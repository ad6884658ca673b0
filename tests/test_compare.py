"""The EM-versus-VAE comparison harness: the command end to end, the rows against independent
recomputation, the shared split, architecture and early-stopping rule."""

import csv
import sys
import types
import warnings

import numpy as np
import pytest

import exactem
from exactem import ExactEM, datasets
from exactem.cli import main
from exactem.compare import COLUMNS, compare

SMALL = dict(hidden=(8,), max_iter=25, n_iter_no_change=3, validation_fraction=0.2)


@pytest.fixture(autouse=True)
def quiet_underdetermined_warnings():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Matplotlib is currently using agg")
        warnings.filterwarnings("ignore", ".*the fit is underdetermined", UserWarning)
        yield


@pytest.fixture(scope="module")
def result():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return compare(datasets.wave(160, 0.1, seed=3), methods=["lbfgs", "em"], seeds=[0, 1], name="wave160", **SMALL)


def test_compare_command_writes_the_table_csv_and_figure(tmp_path, capsys):
    prefix = tmp_path / "cmp"
    rc = main(["compare", "--data", "wave", "--n", "150", "--methods", "em,lbfgs", "--seeds", "1", "--hidden", "8",
               "--max-iter", "20", "--n-iter-no-change", "3", "--time-budget", "5", "--quiet",
               "--out-prefix", str(prefix)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Highest held-out exact log-likelihood" in out and "test LL" in out
    with open(f"{prefix}.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    assert [r["method"] for r in rows] == ["em", "lbfgs"]
    assert all(r["data"] == "wave" and r["seed"] == "0" for r in rows)
    assert all(np.isfinite(float(r["test_loglik"])) and r["test_elbo"] == "nan" for r in rows)
    assert (tmp_path / "cmp.png").stat().st_size > 20_000


def test_compare_command_rejects_unknown_methods(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--methods", "em,gan"])
    assert "methods must be" in capsys.readouterr().err


def test_every_method_gets_the_same_split_and_decoder(result):
    N = len(result.X)
    for seed, (train, test) in result.splits.items():
        assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == N
        assert len(test) == 40  # ceil(0.25 * 160)
    assert not np.array_equal(result.splits[0][1], result.splits[1][1])
    widths = {tuple(est.decoder_.widths) for est in result.estimators.values()}
    assert widths == {(1, 8, 2)}
    assert [(r["method"], r["seed"]) for r in result.rows] == [("em", 0), ("lbfgs", 0), ("em", 1), ("lbfgs", 1)]


def test_rows_agree_with_an_independent_scoring(result):
    for row in result.rows:
        est = result.estimators[row["method"], row["seed"]]
        train, test = result.splits[row["seed"]]
        model = exactem.DGN(est.decoder_, est.noise_var_)  # a fresh model from the fitted parameters
        assert row["test_loglik"] == pytest.approx(model.log_likelihood(result.X[test]).mean(), rel=1e-10, abs=1e-10)
        assert row["train_loglik"] == pytest.approx(model.log_likelihood(result.X[train]).mean(), rel=1e-10, abs=1e-10)
        assert row["n_regions"] == len(model.regions)
        assert (row["n_train"], row["n_test"]) == (len(train), len(test))
        assert row["iterations"] == est.n_iter_ and row["data"] == "wave160"
        assert np.isnan(row["test_elbo"]) and np.isnan(row["test_gap"])  # no encoder


def test_the_same_early_stopping_rule_is_applied_to_every_method(result):
    for row in result.rows:
        est = result.estimators[row["method"], row["seed"]]
        assert est.early_stopping and est.validation_fraction == 0.2 and est.n_iter_no_change == 3
        assert est.random_state == row["seed"]
        history = est.validation_history_
        assert len(history) == est.n_iter_ + 1 and row["best_iteration"] == est.best_iteration_ == int(np.argmax(history))
        if row["stopped_by"] == "early stopping":
            assert est.n_iter_ - est.best_iteration_ >= 3
        else:
            assert row["stopped_by"] in ("converged", "max_iter")


def test_curves_record_every_iterate_against_training_time(result):
    for row in result.rows:
        curve = result.curves[row["method"], row["seed"]]
        assert len(curve["time"]) == len(curve["loglik"]) == row["iterations"] + 1
        assert curve["elbo"] is None
        times = np.array(curve["time"])
        assert times[0] >= 0 and np.all(np.diff(times) >= 0) and times[-1] <= row["wall_time_s"]
        # The returned model is the best validation iterate, whose held-out score the curve recorded.
        assert curve["loglik"][row["best_iteration"]] == pytest.approx(row["test_loglik"], rel=1e-12, abs=1e-12)


def test_csv_verdict_and_figure(result, tmp_path):
    path = tmp_path / "rows.csv"
    text = result.to_csv(path)
    assert path.read_text() == text
    parsed = list(csv.DictReader(text.splitlines()))
    for row, back in zip(result.rows, parsed):
        assert float(back["test_loglik"]) == row["test_loglik"] and back["method"] == row["method"]
    means = {m: np.mean([r["test_loglik"] for r in result.rows if r["method"] == m]) for m in ("em", "lbfgs")}
    winner = max(means, key=means.get)
    assert result.verdict().startswith(f"Highest held-out exact log-likelihood: {'exact EM' if winner == 'em' else 'exact L-BFGS'}")
    assert result.summary()[0]["method"] == winner
    assert result.verdict() in result.table()
    fig = result.figure()
    assert len(fig.axes) == 5  # (a), two sample panels, two posterior panels
    assert all(ax.get_xlabel() and ax.get_ylabel() and ax.get_title() for ax in fig.axes)


def test_time_budget_ends_every_fit(tmp_path):
    res = compare(datasets.circle(120, 0.1, seed=0), methods=["em", "lbfgs"], seeds=1, hidden=(8,), max_iter=500,
                  time_budget=1e-6)
    assert [r["stopped_by"] for r in res.rows] == ["time budget", "time budget"]
    assert [r["iterations"] for r in res.rows] == [0, 0]


def test_64_dimensional_data_is_drawn_as_images():
    from sklearn.datasets import load_digits

    X = load_digits().data[:120] / 16.0
    res = compare(X, methods=["em"], seeds=1, hidden=(4,), max_iter=3, n_iter_no_change=2)
    fig = res.figure()
    titles = " ".join(ax.get_title() for ax in fig.axes)
    assert "sampled 8x8 images" in titles


@pytest.mark.parametrize("kwargs, message", [
    (dict(methods=["em", "gan"]), "methods"),
    (dict(methods=[]), "methods"),
    (dict(test_fraction=1.5), "test_fraction"),
    (dict(seeds=0), "seeds"),
    (dict(time_budget=0), "time_budget"),
])
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        compare(datasets.wave(50, seed=0), **kwargs)


# -- the encoder path ------------------------------------------------------------------------------


def _gauss_hermite_elbo(model, X, q_mean, q_var, n_nodes=80):
    """E_q[log p(x, z) - log q(z)] for S = 1 by Gauss-Hermite quadrature (accurate enough to drive
    the harness; the harness only subtracts it)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(n_nodes)
    weights = weights / weights.sum()
    psi = np.broadcast_to(model.noise_var, (X.shape[1],))
    out = np.empty(len(X))
    for n, x in enumerate(X):
        z = q_mean[n, 0] + np.sqrt(q_var[n, 0]) * nodes
        g = model.decoder(z[:, None])
        log_joint = (-0.5 * z**2 - 0.5 * np.log(2 * np.pi)
                     - 0.5 * np.sum((x - g) ** 2 / psi + np.log(2 * np.pi * psi), axis=1))
        log_q = -0.5 * nodes**2 - 0.5 * np.log(2 * np.pi * q_var[n, 0])
        out[n] = weights @ (log_joint - log_q)
    return out


class _StandInVAE(ExactEM):
    """NOT a VAE: exact EM with the VAE's constructor and an 'encoder' that moment-matches the exact
    posterior, only so that the harness's encoder path (ELBO, gap, dashed curves, q panels) runs
    before exactem.baselines exists."""

    def __init__(self, latent_dim=1, hidden=(16, 16), activation="leaky_relu", alpha=0.1, noise="isotropic",
                 max_epochs=500, early_stopping=False, validation_fraction=0.1, n_iter_no_change=10, max_time=None,
                 random_state=None, callback=None):
        super().__init__(latent_dim=latent_dim, hidden=hidden, activation=activation, alpha=alpha, noise=noise,
                         max_iter=max_epochs, early_stopping=early_stopping, validation_fraction=validation_fraction,
                         n_iter_no_change=n_iter_no_change, max_time=max_time, random_state=random_state,
                         callback=callback)

    def encoder_(self, X):
        posts = [self.model_.posterior(x) for x in np.atleast_2d(X)]
        return np.array([p.mean for p in posts]), np.array([np.diag(p.cov) for p in posts])

    def elbo(self, X):
        return _gauss_hermite_elbo(self.model_, np.asarray(X), *self.encoder_(X))


def test_encoder_methods_get_elbo_gap_and_posterior_panels(monkeypatch):
    stand_in = types.ModuleType("exactem.baselines")
    stand_in.VAE = stand_in.IWAE = _StandInVAE
    monkeypatch.setitem(sys.modules, "exactem.baselines", stand_in)
    res = compare(datasets.wave(120, 0.1, seed=4), methods=["em", "vae"], seeds=2, **SMALL)
    vae_rows = [r for r in res.rows if r["method"] == "vae"]
    assert len(vae_rows) == 2
    for row in vae_rows:
        est = res.estimators["vae", row["seed"]]
        _, test = res.splits[row["seed"]]
        assert row["test_elbo"] == pytest.approx(np.mean(est.elbo(res.X[test])), rel=1e-12)
        assert row["test_gap"] == pytest.approx(row["test_loglik"] - row["test_elbo"], rel=1e-12, abs=1e-12)
        curve = res.curves["vae", row["seed"]]
        assert len(curve["elbo"]) == len(curve["loglik"])
    fig = res.figure()
    titles = " ".join(ax.get_title() for ax in fig.axes)
    assert "against the encoder's q" in titles
    legend = " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())
    assert "VAE: held-out exact ELBO" in legend


def test_the_real_baselines_end_to_end():
    pytest.importorskip("exactem.baselines")
    res = compare(datasets.wave(200, 0.1, seed=5), methods=["em", "vae", "iwae"], seeds=1, hidden=(8,),
                  max_iter=30, n_iter_no_change=5, time_budget=20)
    for row in res.rows:
        if row["method"] in ("vae", "iwae"):
            # The exact ELBO is a lower bound on the exact log-likelihood.
            assert row["test_gap"] >= -1e-9 * (1 + abs(row["test_loglik"]))
            assert row["test_elbo"] <= row["test_loglik"] + 1e-9 * (1 + abs(row["test_loglik"]))
    res.figure()


def test_the_clock_excludes_the_harness_evaluations(monkeypatch):
    """An encoder method whose ELBO takes 0.2 s per call: the harness calls it after every iterate, and
    none of that time may appear as training time."""
    import time

    class SlowELBO(_StandInVAE):
        def elbo(self, X):
            time.sleep(0.2)
            return super().elbo(X)

    stand_in = types.ModuleType("exactem.baselines")
    stand_in.VAE = stand_in.IWAE = SlowELBO
    monkeypatch.setitem(sys.modules, "exactem.baselines", stand_in)
    res = compare(datasets.wave(120, 0.1, seed=4), methods=["vae"], seeds=1, hidden=(8,), max_iter=5,
                  n_iter_no_change=10)
    row, curve = res.rows[0], res.curves["vae", 0]
    slept = 0.2 * (len(curve["elbo"]) + 1)  # every iterate, and the final model's row
    assert len(curve["elbo"]) == 6
    # Five EM iterations on 90 points take milliseconds; even 20x slower on a busy machine they stay
    # far below the 1.4 s spent sleeping inside the evaluations.
    assert row["wall_time_s"] < slept / 2
    assert curve["time"][-1] < slept / 2
