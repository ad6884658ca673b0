"""Exact EM against amortised variational training (VAE, IWAE) of the same decoder, scored exactly.

Every method fits the same generative model ``z ~ N(0, I_S)``, ``x | z ~ N(g(z), Psi)`` with the
same piecewise-affine decoder architecture on the same seeded train/test split, under the same
early-stopping rule and time budget; every model is then scored by its *exact* log-likelihood,
which is what exactem computes and what a VAE cannot see from its bound.
"""

import csv
import io
import math
import time

import numpy as np

#: Methods :func:`compare` knows, in the order tables and figures list them.
METHODS = ("em", "lbfgs", "vae", "iwae")
_ENCODER_METHODS = ("vae", "iwae")
_LABELS = {"em": "exact EM", "lbfgs": "exact L-BFGS", "vae": "VAE", "iwae": "IWAE"}
_COLOURS = {"em": "tab:blue", "lbfgs": "tab:green", "vae": "tab:red", "iwae": "tab:purple"}

#: The columns of :attr:`CompareResult.rows` and of the CSV file, in order.
COLUMNS = ("data", "method", "seed", "wall_time_s", "iterations", "best_iteration", "stopped_by",
           "train_loglik", "test_loglik", "test_elbo", "test_gap", "n_regions", "n_train", "n_test")


def load_data(name, n=1000, noise=0.1, seed=0):
    """A data set by name: ``"wave"``, ``"circle"`` (``n`` points, noise ``noise``, drawn with
    ``seed``), ``"digits"`` (scikit-learn's 1797 8x8 digits, pixels scaled to [0, 1]), or the path
    of a ``.npy`` or ``.csv`` file of rows.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
    """
    from . import datasets

    if name in ("wave", "circle"):
        return getattr(datasets, name)(n, noise, seed=seed)
    if name == "digits":
        return datasets.digits()
    try:
        if name.endswith(".npy"):
            return np.load(name, allow_pickle=False)
        if name.endswith(".csv"):
            return np.loadtxt(name, delimiter=",", ndmin=2)
    except OSError as err:
        raise ValueError(f"cannot read data file {name!r}: {err}") from None
    raise ValueError(f"data must be wave, circle, digits, or a .npy/.csv file; got {name!r}")


def _split(n, test_fraction, seed):
    """(train indices, test indices), a seeded random split; the test part is rounded up."""
    n_test = int(math.ceil(test_fraction * n))
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _make_estimator(method, settings, seed, callback):
    common = dict(latent_dim=settings["latent_dim"], hidden=settings["hidden"], activation=settings["activation"],
                  alpha=settings["alpha"], noise=settings["noise"], early_stopping=True,
                  validation_fraction=settings["validation_fraction"], n_iter_no_change=settings["n_iter_no_change"],
                  max_time=settings["time_budget"], random_state=seed, callback=callback)
    if method in ("em", "lbfgs"):
        from .estimator import ExactEM

        return ExactEM(solver=method, max_iter=settings["max_iter"], max_regions=settings["max_regions"], **common)
    from .baselines import IWAE, VAE  # written alongside; imported only when asked for

    return (VAE if method == "vae" else IWAE)(max_epochs=settings["max_iter"], **common)


def _mean_elbo(est, X):
    return float(np.mean(np.asarray(est.elbo(X), dtype=float)))


def _stopped_by(est, train_time, settings):
    """What ended the training, as far as the fitted attributes tell."""
    budget = settings["time_budget"]
    if budget is not None and train_time >= budget:
        return "time budget"
    if est.n_iter_ >= settings["max_iter"]:
        return "max_iter"
    history, best = getattr(est, "validation_history_", None), getattr(est, "best_iteration_", None)
    if history is not None and best is not None and len(history) - 1 - best >= settings["n_iter_no_change"]:
        return "early stopping"
    return "converged"


def _fit_one(method, settings, seed, X_train, X_test):
    """Fits one method; returns its table row and its held-out curve against training time."""
    from .em import one_blas_thread

    encoder = method in _ENCODER_METHODS
    curve = {"time": [], "loglik": [], "elbo": [] if encoder else None}
    clock = {"eval": 0.0}

    def record(iteration, est):
        # The clock counts training only: the exact evaluation below is the harness's, not the method's.
        entered = time.perf_counter()
        curve["time"].append(entered - clock["start"] - clock["eval"])
        # One BLAS thread: with more, small products leave BLAS workers spinning into the training
        # that follows, and the evaluation would slow the method it is excluded from (a numpy ELBO
        # of 75 points in a callback made the EM iterations after it 10x slower on 2 cores).
        with one_blas_thread():
            curve["loglik"].append(est.score(X_test))
            if encoder:
                curve["elbo"].append(_mean_elbo(est, X_test))
        clock["eval"] += time.perf_counter() - entered

    est = _make_estimator(method, settings, seed, record)
    clock["start"] = time.perf_counter()
    est.fit(X_train)
    train_time = time.perf_counter() - clock["start"] - clock["eval"]
    test_ll = est.score(X_test)
    test_elbo = _mean_elbo(est, X_test) if encoder else float("nan")
    row = dict(data=settings["data"], method=method, seed=seed, wall_time_s=train_time, iterations=int(est.n_iter_),
               best_iteration=getattr(est, "best_iteration_", None), stopped_by=_stopped_by(est, train_time, settings),
               train_loglik=est.score(X_train), test_loglik=test_ll, test_elbo=test_elbo,
               test_gap=test_ll - test_elbo if encoder else float("nan"), n_regions=len(est.model_.regions),
               n_train=len(X_train), n_test=len(X_test))
    return row, curve, est


class CompareResult:
    """What :func:`compare` measured.

    Attributes
    ----------
    rows : list of dict
        One per (method, seed), with the keys of :data:`COLUMNS`: ``wall_time_s`` (training time,
        the harness's evaluations excluded), ``iterations`` (EM/L-BFGS iterations or epochs),
        ``best_iteration`` (the iterate kept by early stopping), ``stopped_by`` (``"early
        stopping"``, ``"converged"``, ``"max_iter"`` or ``"time budget"``), ``train_loglik`` and
        ``test_loglik`` (exact mean log-likelihood, nats per point, of the training and held-out
        parts), ``test_elbo`` and ``test_gap`` (exact mean ELBO of the encoder on the held-out
        part and ``test_loglik - test_elbo``; NaN for methods without an encoder),
        ``n_regions`` (regions of the fitted decoder's latent partition), ``n_train``, ``n_test``.
    curves : dict
        ``(method, seed) -> {"time": [...], "loglik": [...], "elbo": [...] or None}``: the held-out
        exact log-likelihood (and ELBO) of every iterate against training time in seconds.
    estimators : dict
        ``(method, seed) -> fitted estimator``.
    splits : dict
        ``seed -> (train indices, test indices)`` into ``X``.
    X : ndarray
        The data.
    settings : dict
        The shared settings the methods ran with.
    """

    def __init__(self, rows, curves, estimators, splits, X, settings):
        self.rows, self.curves, self.estimators, self.splits, self.X, self.settings = (
            rows, curves, estimators, splits, X, settings)

    @property
    def methods(self):
        return [m for m in METHODS if any(r["method"] == m for r in self.rows)]

    def summary(self):
        """Per method: mean and standard deviation over seeds of the held-out exact log-likelihood,
        best first, as a list of dicts (``method``, ``test_loglik_mean``, ``test_loglik_std``,
        ``n_seeds``)."""
        out = []
        for m in self.methods:
            values = np.array([r["test_loglik"] for r in self.rows if r["method"] == m])
            out.append(dict(method=m, test_loglik_mean=float(values.mean()),
                            test_loglik_std=float(values.std(ddof=1)) if len(values) > 1 else 0.0, n_seeds=len(values)))
        return sorted(out, key=lambda s: -s["test_loglik_mean"])

    def verdict(self):
        """One sentence saying which method has the highest mean held-out exact log-likelihood."""
        summary = self.summary()
        best = summary[0]
        text = (f"Highest held-out exact log-likelihood: {_LABELS[best['method']]}, "
                f"{best['test_loglik_mean']:.4f} nats/point"
                + (f" (mean over {best['n_seeds']} seeds, sd {best['test_loglik_std']:.4f})" if best["n_seeds"] > 1
                   else " (1 seed)"))
        if len(summary) > 1:
            second = summary[1]
            lead = best["test_loglik_mean"] - second["test_loglik_mean"]
            spread = max(best["test_loglik_std"], second["test_loglik_std"])
            # Same split and seed for both: count the seeds on which the leader is ahead.
            by_seed = {(r["method"], r["seed"]): r["test_loglik"] for r in self.rows}
            paired = [by_seed[best["method"], s] > by_seed[second["method"], s] for m, s in by_seed
                      if m == best["method"] and (second["method"], s) in by_seed]
            text += (f", ahead of {_LABELS[second['method']]} by {lead:.4f}"
                     + (" (within the seed-to-seed spread)" if len(paired) > 1 and lead <= spread else "")
                     + f"; ahead on {sum(paired)} of {len(paired)} seed{'s' if len(paired) > 1 else ''}")
        return text + "."

    def table(self):
        """The rows as aligned text, followed by the verdict."""
        heads = ["method", "seed", "time (s)", "iters", "best", "stopped by", "train LL", "test LL",
                 "test ELBO", "gap", "regions"]
        lines = []
        for r in self.rows:
            lines.append([r["method"], str(r["seed"]), f"{r['wall_time_s']:.2f}", str(r["iterations"]),
                          "-" if r["best_iteration"] is None else str(r["best_iteration"]), r["stopped_by"],
                          f"{r['train_loglik']:.4f}", f"{r['test_loglik']:.4f}",
                          "-" if np.isnan(r["test_elbo"]) else f"{r['test_elbo']:.4f}",
                          "-" if np.isnan(r["test_gap"]) else f"{r['test_gap']:.4f}", str(r["n_regions"])])
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(heads)]
        fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
        s = self.settings
        out = [f"{s['data']}: {self.rows[0]['n_train']} train / {self.rows[0]['n_test']} test points of dimension "
               f"{self.X.shape[1]}; decoder {s['widths']}, {s['activation']}; log-likelihoods exact, nats/point",
               fmt(heads), fmt(["-" * w for w in widths])]
        out += [fmt(line) for line in lines]
        return "\n".join(out + ["", self.verdict()])

    def to_csv(self, path=None):
        """Writes the rows as CSV (columns :data:`COLUMNS`) to ``path``; returns the text."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: ("" if r[k] is None else r[k]) for k in COLUMNS})
        if path is not None:
            with open(path, "w", newline="") as f:
                f.write(buffer.getvalue())
        return buffer.getvalue()

    def figure(self):
        """The comparison as a matplotlib Figure; see :func:`exactem.compare.compare`."""
        from ._compare_plots import comparison_figure

        return comparison_figure(self)


def compare(data, methods=("em", "lbfgs", "vae", "iwae"), seeds=3, latent_dim=1, hidden=(16, 16),
            activation="leaky_relu", alpha=0.1, noise="isotropic", test_fraction=0.25, validation_fraction=0.1,
            n_iter_no_change=10, max_iter=500, time_budget=None, max_regions=1_000_000, name=None, verbose=False):
    """Fits each method on the same split with the same decoder and scores them all exactly.

    For each seed, the rows of ``data`` are split at random (seeded) into a training part and a
    held-out test part (``test_fraction``). Every method then trains on the training part with
    the same decoder architecture ``[latent_dim, *hidden, D]`` and noise model, with the same
    rule to end training, and is scored on both parts by its exact log-likelihood.

    Shared by every method:

    - early stopping as scikit-learn's MLP: ``validation_fraction`` of the training part is held
      out (seeded by the seed); after every iteration (an EM or L-BFGS iteration, an epoch for
      VAE/IWAE) its exact mean log-likelihood is recorded; training stops after
      ``n_iter_no_change`` iterations without improvement and the best iterate is kept;
    - at most ``max_iter`` iterations/epochs and ``time_budget`` seconds (None: no limit);
    - the seed, as ``random_state``, of the initial decoder and of the validation split.

    Each method's own settings are its package defaults, none tuned for this comparison:

    - ``em``: :class:`exactem.ExactEM` (``solver="em"``): exact EM, closed-form M-step kept
      monotone by Levenberg-Marquardt damping; decoder initialised at random with the output layer
      fitted to PCA scores (``init="pca"``); ``tol=1e-6`` (relative).
    - ``lbfgs``: the same estimator with ``solver="lbfgs"``: scipy's L-BFGS-B on the exact
      log-likelihood with its exact gradient; same initialisation and tolerance.
    - ``vae``: ``exactem.baselines.VAE``: a Gaussian encoder MLP (``encoder_hidden=(64, 64)``),
      Adam with learning rate 1e-3, mini-batches of 100, one-sample reparameterised ELBO.
    - ``iwae``: ``exactem.baselines.IWAE``: the same with the importance-weighted bound, ``k=5``.

    Parameters
    ----------
    data : str or array-like of shape (n_samples, n_features)
        The rows, or a name for :func:`load_data` (``"wave"``, ``"circle"``, ``"digits"`` or a
        file; the built-in curves with 1000 points, noise 0.1, seed 0).
    methods : sequence of str
        Some of ``"em"``, ``"lbfgs"``, ``"vae"``, ``"iwae"``.
    seeds : int or sequence of int
        The seeds (an int n means 0, ..., n - 1). Each seed gives its own split and initialisations.
    latent_dim, hidden, activation, alpha, noise
        The generative model, as in :class:`exactem.ExactEM`.
    test_fraction : float
        Held-out share of the rows, in (0, 1).
    validation_fraction, n_iter_no_change : float, int
        The early-stopping rule (on the training part).
    max_iter : int
        Iterations (epochs for VAE/IWAE) at most.
    time_budget : float or None
        Seconds of training per fit at most. ExactEM does not count time spent in its callback
        (the harness's exact evaluations); see the VAE's documentation for its own clock.
    max_regions : int
        Region limit of the exact estimators.
    name : str or None
        The data's name in the table, CSV and figure (default: ``data`` if it is a name, else
        ``"data"``).
    verbose : bool
        Print a line per fit.

    Returns
    -------
    CompareResult
        ``.rows`` (a list of dicts, one per method and seed), ``.table()``, ``.to_csv(path)``,
        ``.figure()``, ``.verdict()``.

    Notes
    -----
    Before the timed fits, each method is fitted once for a single iteration, untimed, so that
    one-time costs (imports, thread pools, compilation) are charged to no method.

    The figure shows (a) the held-out exact log-likelihood against training time per method (mean
    over seeds, band from the lowest to the highest seed), with the encoder methods' held-out exact
    ELBO dashed beside it so the gap is visible; (b) samples from each method's fitted model (first
    seed) against the training data, or sampled 8x8 images for 64-dimensional data; (c) when
    ``latent_dim == 1``, the exact posterior p(z|x) of three held-out points under each model, and
    the encoder's Gaussian q(z|x) where there is one. The time axis counts training only; the
    harness's per-iteration exact evaluations (which the methods do not use) are excluded.

    Examples
    --------
    >>> from exactem.compare import compare
    >>> result = compare("wave", methods=["em", "lbfgs"], seeds=1, time_budget=5)  # doctest: +SKIP
    >>> print(result.table())  # doctest: +SKIP
    """
    from ._validation import as_count

    if isinstance(data, str):
        name, X = name or data, load_data(data)
    else:
        name, X = name or "data", data
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or not np.all(np.isfinite(X)):
        raise ValueError(f"data must be a finite 2-D array of rows; got shape {X.shape}")
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise ValueError(f"methods must be a non-empty list of {', '.join(METHODS)}; got {methods!r}")
    seeds = list(range(as_count(seeds, "seeds"))) if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must be a positive count or a non-empty list of seeds")
    if not (0 < test_fraction < 1):
        raise ValueError(f"test_fraction must be strictly between 0 and 1; got {test_fraction}")
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"time_budget must be a positive number of seconds or None; got {time_budget}")
    hidden = tuple(as_count(w, "every hidden width") for w in hidden)
    n_test = int(math.ceil(test_fraction * len(X)))
    if len(X) - n_test < 4:
        raise ValueError(f"{len(X)} rows leave {len(X) - n_test} to train on with test_fraction={test_fraction}; "
                         f"give more rows or a smaller test_fraction")
    settings = dict(data=name, latent_dim=latent_dim, hidden=hidden, activation=activation, alpha=alpha, noise=noise,
                    test_fraction=test_fraction, validation_fraction=validation_fraction,
                    n_iter_no_change=n_iter_no_change, max_iter=max_iter, time_budget=time_budget,
                    max_regions=max_regions, widths=[latent_dim, *hidden, X.shape[1]])
    rows, curves, estimators, splits = [], {}, {}, {}
    # One untimed fit of a single iteration per method first: one-time costs (imports, BLAS
    # thread-pool discovery, compilation) would otherwise be charged to whichever fit runs first.
    warm_up = dict(settings, max_iter=1, time_budget=None)
    train, _ = _split(len(X), test_fraction, seeds[0])
    for method in methods:
        _make_estimator(method, warm_up, seeds[0], None).fit(X[train])
    for seed in seeds:
        train, test = splits[seed] = _split(len(X), test_fraction, seed)
        for method in [m for m in METHODS if m in methods]:
            row, curve, est = _fit_one(method, settings, seed, X[train], X[test])
            rows.append(row)
            curves[method, seed], estimators[method, seed] = curve, est
            if verbose:
                print(f"{method:>5} seed {seed}: {row['iterations']} iterations in {row['wall_time_s']:.2f} s "
                      f"({row['stopped_by']}), held-out exact log-likelihood {row['test_loglik']:.4f}", flush=True)
    return CompareResult(rows, curves, estimators, splits, X, settings)
