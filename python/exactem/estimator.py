"""ExactEM: a scikit-learn estimator that trains a deep generative network by exact EM."""

import numbers
import time
import warnings

import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from . import _core
from ._validation import as_count, as_real_array
from .decoder import ACTIVATIONS, Decoder
from .em import RegionStats, layer_factors, layer_gradient, m_step, noise_gradient, one_blas_thread
from .distributed import Shards, is_dask_array
from .model import DGN


def _leading_components(centred, k, rng):
    """The k leading singular triplets of the centred data: a full SVD where it is small, else
    scikit-learn's randomized SVD (a full SVD of 60000 x 784 rows costs tens of seconds; the
    initialisation needs only the first S directions)."""
    if min(centred.shape) <= 4 * k + 50 or centred.size <= 200_000:
        return np.linalg.svd(centred, full_matrices=False)
    from sklearn.utils.extmath import randomized_svd

    return randomized_svd(centred, k, n_oversamples=20, n_iter=7, random_state=int(rng.integers(2**31)))


def _generator(random_state):
    """A numpy Generator from scikit-learn's ``random_state`` conventions.

    ``None``, an integer or a ``numpy.random.Generator`` go to ``numpy.random.default_rng``
    (so an integer seed gives the same fit as it always has); a ``numpy.random.RandomState``
    instance, which scikit-learn also accepts, seeds a Generator from its next draw.
    """
    if random_state is None or isinstance(random_state, (numbers.Integral, np.random.Generator)):
        return np.random.default_rng(random_state)
    return np.random.default_rng(check_random_state(random_state).randint(2**32))


_MIN_DAMPING = 1e-4
_MAX_DAMPING = 1e8


class ExactEM(DensityMixin, BaseEstimator):
    """A deep generative network fitted by exact EM (or exact maximum likelihood).

    The model is ``z ~ N(0, I_S)``, ``x | z ~ N(g(z), Psi)``, where ``g`` is an MLP with
    piecewise-affine activations and ``Psi`` is ``sigma^2 I`` or diagonal. Its log-likelihood,
    posterior and E-step are exact (no variational bound), so ``solver="em"`` is textbook EM:
    an exact E-step, then a closed-form M-step per layer with the activation masks frozen,
    damped (Levenberg-Marquardt) whenever the exact log-likelihood would drop, so that it
    never decreases. ``solver="lbfgs"`` maximises the exact log-likelihood with its exact
    gradient (Fisher's identity) and scipy's L-BFGS-B.

    Parameters
    ----------
    latent_dim : int, default=1
        Latent dimension ``S``. ``S = 1`` and ``S = 2`` are exact to machine precision; ``S = 3``
        and up use adaptive quadrature or quasi-Monte Carlo to a relative error of 1e-6 and are
        much slower.
    hidden : tuple of int, default=(16, 16)
        Widths of the hidden layers (input ``S`` and output ``D`` are implied).
    activation : {"leaky_relu", "relu", "abs", "linear"}, default="leaky_relu"
        Activation of every hidden layer.
    alpha : float, default=0.1
        Negative-side slope of ``"leaky_relu"``.
    noise : {"isotropic", "diagonal"}, default="isotropic"
        Noise covariance: one variance, or one per output coordinate.
    max_iter : int, default=200
        Maximum number of EM (or L-BFGS) iterations. A ``ConvergenceWarning`` is issued when
        it is reached before convergence.
    tol : float, default=1e-6
        Convergence threshold on the gain in mean log-likelihood per iteration, relative to
        ``1 + |log-likelihood|``.
    init : {"pca", "random"}, default="pca"
        Random hidden layers; with ``"pca"`` the output layer and noise are then fitted by
        least squares to the data's principal-component scores.
    weight_decay : float, default=0.0
        L2 penalty ``weight_decay / 2 * sum ||W_l||^2`` on the weights (a Gaussian prior).
    min_noise_var : float, default=1e-6
        Lower bound on the noise variance, which keeps the likelihood bounded on data with
        repeated points.
    max_regions : int, default=1_000_000
        Largest number of latent regions allowed; beyond it :class:`exactem.RegionLimitError`.
    random_state : int, numpy Generator, RandomState or None, default=None
        Seed of the initial network. The fit is deterministic given an integer seed.
    verbose : bool, default=False
        Show a progress bar (tqdm, on stderr) with the exact log-likelihood per point.
    callback : callable or None, default=None
        Called as ``callback(iteration, estimator)`` after each accepted iteration.
    solver : {"em", "lbfgs"}, default="em"
        Exact EM, or L-BFGS-B on the exact log-likelihood.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the rows (drawn with ``random_state``), score them
        exactly after every iteration, stop after ``n_iter_no_change`` iterations without
        improvement and keep the best held-out iterate, as scikit-learn's MLP does.
    validation_fraction : float, default=0.1
        Share of the rows held out for early stopping.
    n_iter_no_change : int, default=10
        Iterations without a held-out improvement of more than ``tol * (1 + |best|)`` before
        early stopping ends the fit.
    max_time : float or None, default=None
        Stop after the first iteration that ends past this many seconds of training (time in
        ``callback`` not counted).
    n_shards : int or None, default=None
        Split the rows into this many blocks and reduce each to per-region sums before adding
        them in block order (the E-step of :mod:`exactem.distributed`). The same shards give the
        same bits here and on a Dask cluster.
    client : dask.distributed.Client or None, default=None
        Compute the shards' E-steps on this cluster (two shards per worker unless ``n_shards``).
        ``fit`` also accepts a ``dask.array`` chunked by rows, whose blocks are the shards.

    Attributes
    ----------
    decoder_ : Decoder
        The fitted decoder network.
    noise_var_ : float or ndarray of shape (n_features_in_,)
        The fitted noise variance (a float for isotropic noise).
    model_ : DGN
        The fitted generative model (decoder and noise).
    history_ : list of float
        Exact mean log-likelihood per point after each iteration (the initial model first).
        With ``solver="em"`` it never decreases.
    n_regions_ : list of int
        Number of latent regions of the decoder after each iteration.
    n_iter_ : int
        Number of iterations run.
    converged_ : bool
        Whether the convergence criterion was met before ``max_iter``.
    n_parameters_ : int
        Number of free parameters (weights, biases, noise variances).
    n_features_in_ : int
        Number of features seen during fit.
    validation_history_ : list of float or None
        With early stopping, the exact mean log-likelihood of the held-out rows at every
        iteration (the initial model first); else None.
    best_iteration_ : int or None
        With early stopping, the iteration whose parameters were kept; else None.

    See Also
    --------
    DGN : the model with exact inference, for a decoder you have already.

    Examples
    --------
    >>> import exactem
    >>> X = exactem.datasets.wave(300, noise=0.1, seed=0)
    >>> est = exactem.ExactEM(hidden=(8, 8), max_iter=20, random_state=0).fit(X)
    >>> est.score(X) > -3.0
    True
    >>> est.sample(5, random_state=0)[0].shape
    (5, 2)
    """

    def __init__(self, latent_dim=1, hidden=(16, 16), activation="leaky_relu", alpha=0.1, noise="isotropic",
                 max_iter=200, tol=1e-6, init="pca", weight_decay=0.0, min_noise_var=1e-6, max_regions=1_000_000,
                 random_state=None, verbose=False, callback=None, solver="em", early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=10, max_time=None, n_shards=None, client=None):
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.activation = activation
        self.alpha = alpha
        self.noise = noise
        self.max_iter = max_iter
        self.tol = tol
        self.init = init
        self.weight_decay = weight_decay
        self.min_noise_var = min_noise_var
        self.max_regions = max_regions
        self.random_state = random_state
        self.verbose = verbose
        self.callback = callback
        self.solver = solver
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.max_time = max_time
        self.n_shards = n_shards
        self.client = client

    # -- set-up ---------------------------------------------------------------------------------

    def _check_params(self):
        as_count(self.latent_dim, "latent_dim")
        for w in self.hidden:
            as_count(w, "every hidden width")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if self.noise not in ("isotropic", "diagonal"):
            raise ValueError(f"noise must be 'isotropic' or 'diagonal'; got {self.noise!r}")
        if self.init not in ("pca", "random"):
            raise ValueError(f"init must be 'pca' or 'random'; got {self.init!r}")
        if self.solver not in ("em", "lbfgs"):
            raise ValueError(f"solver must be 'em' or 'lbfgs'; got {self.solver!r}")
        if not (self.min_noise_var > 0):
            raise ValueError(f"min_noise_var must be positive; got {self.min_noise_var}")
        if not (self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be non-negative; got {self.weight_decay}")
        if not (self.tol >= 0):
            raise ValueError(f"tol must be non-negative; got {self.tol}")
        as_count(self.max_iter, "max_iter", minimum=0)
        as_count(self.max_regions, "max_regions")
        self._check_stopping_params()
        if self.n_shards is not None:
            as_count(self.n_shards, "n_shards")

    def _check_stopping_params(self):
        if not isinstance(self.early_stopping, (bool, np.bool_)):
            raise ValueError(f"early_stopping must be True or False; got {self.early_stopping!r}")
        if isinstance(self.validation_fraction, bool) or not isinstance(self.validation_fraction, (int, float, np.floating)) \
                or not (0 < self.validation_fraction < 1):
            raise ValueError(f"validation_fraction must be a number strictly between 0 and 1; got {self.validation_fraction!r}")
        as_count(self.n_iter_no_change, "n_iter_no_change")
        if self.max_time is not None and (isinstance(self.max_time, bool) or not isinstance(self.max_time, (int, float, np.number))
                                          or not self.max_time > 0):
            raise ValueError(f"max_time must be a positive number of seconds or None; got {self.max_time!r}")

    def _validation_split(self, X):
        """(rows to train on, held-out rows or None): the held-out rows are a seeded random
        ``validation_fraction`` of X, rounded up, as scikit-learn's train_test_split does."""
        if not self.early_stopping:
            return X, None
        n_val = int(np.ceil(self.validation_fraction * len(X)))
        if n_val < 1 or len(X) - n_val < 2:
            raise ValueError(f"early stopping with validation_fraction={self.validation_fraction} leaves "
                             f"{len(X) - n_val} of {len(X)} rows to train on; give at least 2 more rows or a "
                             f"smaller validation_fraction")
        # A stream of its own: the split does not shift the initial model's random draws.
        order = np.random.default_rng([0x5EED, *np.atleast_1d(self._seed_words())]).permutation(len(X))
        return np.ascontiguousarray(X[np.sort(order[n_val:])]), np.ascontiguousarray(X[np.sort(order[:n_val])])

    def _seed_words(self):
        """random_state as non-negative integers for a SeedSequence (fresh entropy if None)."""
        if self.random_state is None:
            return np.random.SeedSequence().entropy
        if isinstance(self.random_state, np.random.Generator):
            return self.random_state.integers(2**63)
        return int(self.random_state)

    def _initial_model(self, X, rng=None):
        """Random hidden layers; the output layer and noise fitted by least squares to PCA scores.
        ``rng`` (default: a generator from random_state) lets the VAE baselines start from the
        same model and go on drawing from the same stream."""
        rng = _generator(self.random_state) if rng is None else rng
        S, D = self.latent_dim, X.shape[1]
        widths = [S, *self.hidden, D]
        dec = Decoder.random(widths, activation=self.activation, alpha=self.alpha, seed=rng.integers(2**63))
        weights, biases = dec.weights, dec.biases
        if self.init == "pca":
            centred = X - X.mean(axis=0)
            _, sing, vt = _leading_components(centred, S, rng)
            k = min(S, vt.shape[0])
            Z = np.zeros((len(X), S))
            Z[:, :k] = centred @ vt[:k].T / np.maximum(sing[:k] / np.sqrt(len(X)), 1e-12)
            if k < S:
                Z[:, k:] = rng.standard_normal((len(X), S - k))
            H = Z
            for w, b, slope in zip(weights[:-1], biases[:-1], dec.slopes):
                H = H @ w.T + b
                H = np.where(H >= 0, H, slope * H)
            design = np.hstack([H, np.ones((len(X), 1))])
            # Random hidden features are nearly collinear: a light ridge keeps the output weights
            # of the order of the data instead of cancelling huge coefficients.
            gram = design.T @ design
            ridge = 1e-3 * np.trace(gram[:-1, :-1]) / max(gram.shape[0] - 1, 1)
            gram[np.arange(len(gram) - 1), np.arange(len(gram) - 1)] += ridge
            # Fitted to the centred data, the mean added back to the bias: data offset by 1e8 would
            # otherwise cost the normal equations every digit of the residual.
            coef = np.linalg.solve(gram, design.T @ centred)
            weights[-1], biases[-1] = coef[:-1].T, coef[-1] + X.mean(axis=0)
            resid = centred - design @ coef
        else:
            resid = X - X.mean(axis=0)
        var = np.maximum(resid.var(axis=0), self.min_noise_var)
        noise = var if self.noise == "diagonal" else np.full(D, var.mean())
        return Decoder(weights, biases, activation=self.activation, alpha=self.alpha), noise

    def _model(self, decoder, noise):
        return DGN(decoder, noise if self.noise == "diagonal" else float(noise[0]), max_regions=self.max_regions)

    # -- fitting --------------------------------------------------------------------------------

    def fit(self, X, y=None):
        """Fit to the rows of X (n_samples, n_features); returns self.

        X may be a ``dask.array`` chunked by rows: its blocks are then the shards (computed on
        ``client``'s workers if given, else here one at a time)."""
        self._check_params()
        lazy = is_dask_array(X)
        if lazy and self.early_stopping:
            raise ValueError("early_stopping holds out rows of X in memory; with a dask array, hold out rows "
                             "yourself and score them with score_samples, or pass a numpy array")
        if lazy:
            if X.ndim != 2:
                raise ValueError(f"X must be 2-D (n_samples, n_features); got a dask array of shape {X.shape}")
            self.n_features_in_ = int(X.shape[1])
        else:
            X = validate_data(self, X, dtype=np.float64, order="C", ensure_min_samples=2)
        self._start_clock()
        X, X_val = (X, None) if lazy else self._validation_split(X)
        self._start_validation(X_val)
        shards = None
        if lazy or self.client is not None or self.n_shards is not None:
            shards = Shards(X, self.n_shards, self.client)
            if shards.n_samples < 2:
                raise ValueError(f"X needs at least 2 samples; got {shards.n_samples}")
        try:
            return self._fit(shards.init_rows() if shards is not None else X, shards if shards is not None else X)
        finally:
            if shards is not None:
                shards.close()

    def _fit(self, X, data):
        """``X``: the rows the initialisation reads; ``data``: the training rows (an array, or
        :class:`Shards`)."""
        n_samples = data.n_samples if isinstance(data, Shards) else len(data)
        # One BLAS thread: the initial SVD of a (1347, 64) matrix took 0.6-3.9 s with BLAS's threads
        # on 2 busy cores, 30 ms with one.
        with one_blas_thread():
            decoder, noise = self._initial_model(X)
        n_params = sum(w.size + b.size for w, b in zip(decoder.weights, decoder.biases)) + (
            X.shape[1] if self.noise == "diagonal" else 1)
        if n_samples < n_params:
            warnings.warn(f"{n_samples} samples for {n_params} parameters: the fit is underdetermined", stacklevel=3)
        self.n_parameters_ = n_params
        self.history_, self.n_regions_ = [], []
        self.converged_ = False
        self.n_iter_ = 0
        # Held only during the fit (a progress bar is neither a parameter nor a fitted attribute).
        self._progress_bar = self._new_progress_bar(n_samples)
        try:
            if self.solver == "lbfgs":
                self._fit_lbfgs(data, decoder, noise, n_samples)
            else:
                self._fit_em(data, decoder, noise)
        finally:
            bar = self.__dict__.pop("_progress_bar", None)
            if bar is not None:
                bar.close()
        self._restore_best()
        if not self.converged_ and self.n_iter_ >= self.max_iter:
            self._warn_not_converged(f"max_iter={self.max_iter} iterations reached", stacklevel=4)
        return self

    def __getstate__(self):
        # A callback may pickle the estimator mid-fit (a checkpoint); the progress bar, the held-out
        # rows and a Dask client stay behind.
        state = dict(super().__getstate__())  # a copy: Python's own is the live __dict__
        for name in ("_progress_bar", "_X_val"):
            state.pop(name, None)
        if state.get("client") is not None:
            state["client"] = None
        return state

    def _new_progress_bar(self, n_samples):
        if not self.verbose:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.max_iter, desc=f"{self.solver.upper()} on {n_samples} points", unit="iter",
                    leave=True, dynamic_ncols=True)

    def _warn_not_converged(self, why, stacklevel):
        warnings.warn(f"ExactEM ({self.solver}) did not converge: {why}. The result is the last iterate; "
                      f"raise max_iter or tol to silence this.", ConvergenceWarning, stacklevel=stacklevel)

    def _m_step(self, decoder, noise, model, stats, damping):
        """The closed-form M-step with the current activation masks frozen, damped by ``damping``
        (a Marquardt term ``damping * diag(H)``): the proposed (decoder, noise)."""
        weights, biases, new_noise = m_step(decoder, model.regions.patterns, noise, stats,
                                            weight_decay=self.weight_decay, min_noise_var=self.min_noise_var,
                                            diagonal=self.noise == "diagonal", damping=damping)
        return Decoder(weights, biases, activation=self.activation, alpha=self.alpha), new_noise

    def _e_step(self, model, data):
        """The exact E-step of ``model`` on the training rows, reduced to what the M-step needs:
        (per-region sums, mean exact log-likelihood per row)."""
        if isinstance(data, Shards):
            return data.statistics(model.decoder, model.noise_var, self.max_regions)
        stats, log_likelihood = RegionStats.by_blocks(model, data)
        return stats, float(np.mean(log_likelihood))

    def _check_finite(self, mean_ll, iteration):
        """Raises NumericalError if the exact log-likelihood at ``iteration`` is not finite: a NaN
        must never enter ``history_`` or end a fit as converged. The attributes keep the last model
        accepted (none if the first model fails)."""
        if not np.isfinite(mean_ll):
            kept = ("the estimator keeps the last good model in decoder_, noise_var_, model_" if self.history_
                    else "this fit accepted no model")
            raise _core.NumericalError(
                f"the exact log-likelihood per point is {mean_ll} at {self.solver} iteration {iteration}: the "
                f"engine lost precision. Centre and scale the data (e.g. sklearn.preprocessing.StandardScaler) "
                f"and fit again; {kept}")

    def _accept(self, decoder, noise, model, mean_ll, iteration, started):
        """Records an iterate; True if training should stop here (early stopping or max_time)."""
        self._check_finite(mean_ll, iteration)
        self.decoder_, self.noise_var_, self.model_ = decoder, (noise if self.noise == "diagonal" else float(noise[0])), model
        self.history_.append(mean_ll)
        self.n_regions_.append(len(model.regions))
        bar = getattr(self, "_progress_bar", None)
        if bar is not None:
            bar.set_postfix({"log-lik/point": f"{mean_ll:.6f}", "regions": len(model.regions)}, refresh=False)
            bar.update(iteration - bar.n)
        stop = self._validate(iteration)
        if self.callback is not None:
            entered = time.perf_counter()
            self.callback(iteration, self)
            self._callback_time += time.perf_counter() - entered
        if self.max_time is not None and self._training_time() >= self.max_time:
            stop = True
        return stop

    # -- early stopping and the time budget --------------------------------------------------------

    def _start_clock(self):
        self._clock_started = time.perf_counter()
        self._callback_time = 0.0

    def _training_time(self):
        """Seconds since fit began, less the time spent in the callback."""
        return time.perf_counter() - self._clock_started - self._callback_time

    def _start_validation(self, X_val):
        self._X_val = X_val
        self.validation_history_ = [] if X_val is not None else None
        self.best_iteration_ = None
        self._best = None
        self._best_validation = -np.inf
        self._no_improvement = 0

    def _validate(self, iteration):
        """Scores the current iterate on the held-out rows (scikit-learn's MLP rule: an iteration
        counts as an improvement if it beats the best so far by more than tol, relative; the best
        parameters are kept whenever it beats it at all). True once n_iter_no_change iterations in a
        row have not improved."""
        if self._X_val is None:
            return False
        score = float(np.mean(self.model_.log_likelihood(self._X_val)))
        self.validation_history_.append(score)
        if iteration > 0 and score <= self._best_validation + self.tol * (1 + abs(self._best_validation)):
            self._no_improvement += 1
        else:
            self._no_improvement = 0
        if score > self._best_validation:
            self._best_validation = score
            self._best = (self.decoder_, self.noise_var_, self.model_)
            self.best_iteration_ = iteration
        return self._no_improvement >= self.n_iter_no_change

    def _restore_best(self):
        """With early stopping, the fitted attributes become the best held-out iterate's."""
        if self._best is not None:
            self.decoder_, self.noise_var_, self.model_ = self._best
        self._best = self._X_val = None

    def _fit_em(self, data, decoder, noise):
        model = self._model(decoder, noise)
        stats, ll = self._e_step(model, data)
        started = time.perf_counter()
        if self._accept(decoder, noise, model, ll, 0, started):
            return self
        damping = 0.0
        for iteration in range(1, self.max_iter + 1):
            accepted = None
            # Levenberg-Marquardt style: the undamped closed-form M-step first (or the damping that
            # last worked, relaxed); if the exact log-likelihood drops because the regions moved,
            # damp harder, which pulls the proposal back toward the current parameters.
            while damping <= _MAX_DAMPING:
                cand, new_noise = self._m_step(decoder, noise, model, stats, damping)
                cand_model = self._model(cand, new_noise)
                try:
                    cand_stats, cand_ll = self._e_step(cand_model, data)
                except _core.RegionLimitError as err:
                    raise _core.RegionLimitError(f"{err} (at EM iteration {iteration}; the estimator keeps the "
                                                 f"last good model in decoder_, noise_var_, model_)") from None
                self._check_finite(cand_ll, iteration)  # a NaN would read as "no gain" and end the fit as converged
                if cand_ll >= ll - 1e-12 * (1 + abs(ll)):
                    accepted = (cand, new_noise, cand_model, cand_stats, cand_ll)
                    break
                damping = max(10 * damping, _MIN_DAMPING)
            if accepted is None:  # even a tiny step toward the frozen-mask optimum loses: stationary
                self.converged_ = True
                break
            decoder, noise, model, stats, new_ll = accepted
            self.n_iter_ = iteration
            improvement = new_ll - ll
            ll = new_ll
            stop = self._accept(decoder, noise, model, ll, iteration, started)
            # A small gain under heavy damping only says the step was short, not that we converged.
            if improvement <= self.tol * (1 + abs(ll)) and damping <= 1.0:
                self.converged_ = True
                break
            if stop:
                break
            damping = damping / 10 if damping > _MIN_DAMPING else 0.0
        return self

    def _fit_lbfgs(self, data, decoder, noise, n_samples):
        from scipy.optimize import minimize

        shapes = [(w.shape, b.shape) for w, b in zip(decoder.weights, decoder.biases)]
        diagonal = self.noise == "diagonal"

        def unpack(theta):
            weights, biases, k = [], [], 0
            for ws, bs in shapes:
                weights.append(theta[k:k + np.prod(ws)].reshape(ws))
                k += np.prod(ws)
                biases.append(theta[k:k + bs[0]])
                k += bs[0]
            log_noise = theta[k:]
            noise_vec = np.exp(log_noise) if diagonal else np.full(len(noise), np.exp(log_noise[0]))
            return weights, biases, np.maximum(noise_vec, self.min_noise_var)

        def objective(theta):
            # Small products only (no layer system to solve): BLAS's threads would only fight
            # exactem's (30 iterations at width 64: 0.95 s with them, 0.53-0.58 s with one here).
            with one_blas_thread():
                return evaluate(theta)

        def evaluate(theta):
            weights, biases, noise_vec = unpack(theta)
            dec = Decoder(weights, biases, activation=self.activation, alpha=self.alpha)
            model = self._model(dec, noise_vec)
            stats, mean_ll = self._e_step(model, data)
            grads_w, grads_b, grad_noise = exact_gradient(dec, model.regions.patterns, noise_vec, stats, self.weight_decay)
            grad = [np.concatenate([gw.ravel(), gb]) for gw, gb in zip(grads_w, grads_b)]
            gn = grad_noise * noise_vec
            grad.append(gn if diagonal else np.array([gn.sum()]))
            n = n_samples
            penalty = 0.5 * self.weight_decay * sum(np.sum(w * w) for w in weights)
            value = -(mean_ll * n - penalty) / n
            self._check_finite(value, len(self.history_))  # L-BFGS would take a NaN for a line-search failure
            state["last"] = (dec, noise_vec, model, mean_ll)
            return value, -np.concatenate(grad) / n

        state = {}
        theta0 = np.concatenate([np.concatenate([w.ravel(), b]) for w, b in zip(decoder.weights, decoder.biases)]
                                + [np.log(noise) if diagonal else np.log(noise[:1])])
        started = time.perf_counter()
        objective(theta0)
        if self._accept(*state["last"], 0, started):
            return self

        def on_iteration(theta):
            self.n_iter_ += 1
            if self._accept(*state["last"], self.n_iter_, started):
                # scipy >= 1.11 ends the minimisation when a callback raises StopIteration.
                raise StopIteration

        try:
            result = minimize(objective, theta0, jac=True, method="L-BFGS-B", callback=on_iteration,
                              options={"maxiter": self.max_iter, "ftol": self.tol, "gtol": 1e-8})
        except StopIteration:  # scipy < 1.11 lets it out of minimize; the last accepted iterate stands
            return self
        if result.status == 99:  # stopped by on_iteration: result.x is that accepted iterate
            return self
        dec_w, dec_b, noise_vec = unpack(result.x)
        dec = Decoder(dec_w, dec_b, activation=self.activation, alpha=self.alpha)
        model = self._model(dec, noise_vec)
        self.decoder_, self.model_ = dec, model
        self.noise_var_ = noise_vec if diagonal else float(noise_vec[0])
        self.converged_ = bool(result.success)
        if not self.converged_ and result.nit < self.max_iter:
            self._warn_not_converged(f"L-BFGS-B stopped: {result.message}", stacklevel=5)
        return self

    # -- using the fitted model ------------------------------------------------------------------

    def _validated(self, X):
        check_is_fitted(self, "model_")
        return validate_data(self, X, dtype=np.float64, order="C", reset=False)

    def score_samples(self, X):
        """Exact log-density of each row under the fitted model.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
            Points to evaluate; a ``dask.array`` of rows gives a lazy dask array.

        Returns
        -------
        log_density : ndarray of shape (n_samples,)
            ``log p(x)`` of each row, exact (no bound, no sampling) for ``latent_dim <= 2``.
        """
        if is_dask_array(X):  # lazy: scored block by block where dask computes
            check_is_fitted(self, "model_")
            return self.model_.log_likelihood(X)
        X = self._validated(X)
        return self.model_.log_likelihood(X)

    def score(self, X, y=None):
        """Mean exact log-likelihood per sample.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
            Points to evaluate.
        y : None
            Ignored.

        Returns
        -------
        score : float
            ``mean(log p(x))`` over the rows of X, in nats.
        """
        return float(np.mean(self.score_samples(X)))

    def sample(self, n_samples=1, random_state=None):
        """Draw from the fitted generative model.

        Parameters
        ----------
        n_samples : int, default=1
            Number of draws.
        random_state : int, numpy Generator, RandomState or None, default=None
            Seed of the draws.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features_in_)
            Observations ``g(z) + noise``.
        Z : ndarray of shape (n_samples, latent_dim)
            Their latent points.
        """
        check_is_fitted(self, "model_")
        return self.model_.sample(n_samples, seed=_generator(random_state))

    def predict_latent(self, X):
        """Exact posterior means ``E[z | x]``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
            Observations.

        Returns
        -------
        Z : ndarray of shape (n_samples, latent_dim)
            The posterior mean of each row.
        """
        X = self._validated(X)
        return self.model_.e_step(X).posterior_mean()

    def bic(self, X):
        """Bayesian information criterion on X (lower is better).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
            Data.

        Returns
        -------
        bic : float
            ``-2 log L + n_parameters_ log n``, with the exact log-likelihood ``log L``.
        """
        X = self._validated(X)
        return -2 * self.score(X) * len(X) + self.n_parameters_ * np.log(len(X))

    def aic(self, X):
        """Akaike information criterion on X (lower is better).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
            Data.

        Returns
        -------
        aic : float
            ``-2 log L + 2 n_parameters_``, with the exact log-likelihood ``log L``.
        """
        X = self._validated(X)
        return -2 * self.score(X) * len(X) + 2 * self.n_parameters_


def exact_gradient(decoder, patterns, noise_var, stats, weight_decay=0.0):
    """The gradient of the frozen-mask objective at the current parameters.

    By Fisher's identity it is the gradient of the exact log-likelihood when the statistics
    come from the exact E-step at those parameters.

    Parameters
    ----------
    decoder : Decoder
        The current decoder.
    patterns : ndarray of shape (R, H), bool
        Activation pattern of each region (``model.regions.patterns``).
    noise_var : float or ndarray of shape (D,)
        The current noise variance.
    stats : exactem.em.RegionStats
        Per-region sums of the exact E-step statistics.
    weight_decay : float, default=0.0
        L2 penalty on the weights, as in :class:`ExactEM`.

    Returns
    -------
    grad_weights : list of ndarray
        Gradient with respect to each weight matrix (shapes as ``decoder.weights``).
    grad_biases : list of ndarray
        Gradient with respect to each bias vector.
    grad_noise : ndarray of shape (D,)
        Gradient with respect to each noise variance.

    Examples
    --------
    >>> import exactem
    >>> from exactem.em import RegionStats
    >>> X = exactem.datasets.wave(100, seed=0)
    >>> model = exactem.DGN(exactem.Decoder.random([1, 4, 2], seed=0), 0.1)
    >>> stats = RegionStats(model.e_step(X), X, len(model.regions))
    >>> gw, gb, gn = exact_gradient(model.decoder, model.regions.patterns, 0.1, stats)
    >>> [g.shape for g in gw]
    [(4, 1), (2, 4)]
    """
    factors = layer_factors(decoder, patterns)
    psi = np.broadcast_to(np.asarray(noise_var, dtype=float), (stats.dim,))
    weights, biases = decoder.weights, decoder.biases
    grads = [layer_gradient(weights, biases, factors, psi, stats, l, weight_decay) for l in range(len(weights))]
    return [g[:, :-1] for g in grads], [g[:, -1] for g in grads], noise_gradient(weights, biases, factors, psi, stats)
