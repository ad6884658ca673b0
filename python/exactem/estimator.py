"""ExactEM: a scikit-learn style estimator that trains a deep generative network by exact EM."""

import sys
import time
import warnings

import numpy as np

from . import _core
from ._validation import as_count, as_real_array
from .decoder import ACTIVATIONS, Decoder
from .em import RegionStats, layer_factors, layer_gradient, m_step, noise_gradient, one_blas_thread
from .model import DGN


def _as_data(X):
    X = as_real_array(X, "X", allow_bool=True)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D array (n_samples, n_features); got shape {X.shape}")
    if X.shape[0] < 2 or X.shape[1] < 1:
        raise ValueError(f"X needs at least 2 samples and 1 feature; got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or infinite values")
    return np.ascontiguousarray(X)


def _progress(iteration, max_iter, mean_ll, n_regions, elapsed):
    """One line per iteration, redrawn in place on a terminal: a bar, the exact log-likelihood,
    the region count and the time per iteration."""
    width = 24
    done = int(width * iteration / max(max_iter, 1))
    per_iter = elapsed / iteration * 1e3 if iteration else 0.0
    line = (f"[{'#' * done}{'.' * (width - done)}] iter {iteration:4d}/{max_iter}  "
            f"log-lik/point {mean_ll: .6f}  regions {n_regions:6d}  {per_iter:7.1f} ms/iter")
    tty = sys.stderr.isatty()
    print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)


_MIN_DAMPING = 1e-4
_MAX_DAMPING = 1e8


class ExactEM:
    """A deep generative network ``z ~ N(0, I)``, ``x | z ~ N(g(z), Psi)`` trained by exact EM.

    Parameters follow scikit-learn's conventions; learned attributes end with an underscore.
    ``solver="em"`` runs exact EM (closed-form M-step, monotone by backtracking on the exact
    log-likelihood); ``solver="lbfgs"`` maximises the exact log-likelihood with its exact
    gradient (Fisher's identity) and scipy's L-BFGS.
    """

    def __init__(self, latent_dim=1, hidden=(16, 16), activation="leaky_relu", alpha=0.1, noise="isotropic",
                 max_iter=200, tol=1e-6, init="pca", weight_decay=0.0, min_noise_var=1e-6, max_regions=1_000_000,
                 random_state=None, verbose=False, callback=None, solver="em"):
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
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be non-negative; got {self.weight_decay}")
        as_count(self.max_iter, "max_iter", minimum=0)

    def _initial_model(self, X):
        """Random hidden layers; the output layer and noise fitted by least squares to PCA scores."""
        rng = np.random.default_rng(self.random_state)
        S, D = self.latent_dim, X.shape[1]
        widths = [S, *self.hidden, D]
        dec = Decoder.random(widths, activation=self.activation, alpha=self.alpha, seed=rng.integers(2**63))
        weights, biases = dec.weights, dec.biases
        if self.init == "pca":
            centred = X - X.mean(axis=0)
            _, sing, vt = np.linalg.svd(centred, full_matrices=False)
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
        """Fit to the rows of X (n_samples, n_features); returns self."""
        self._check_params()
        X = _as_data(X)
        decoder, noise = self._initial_model(X)
        n_params = sum(w.size + b.size for w, b in zip(decoder.weights, decoder.biases)) + (
            X.shape[1] if self.noise == "diagonal" else 1)
        if len(X) < n_params:
            warnings.warn(f"{len(X)} samples for {n_params} parameters: the fit is underdetermined", stacklevel=2)
        self.n_parameters_ = n_params
        self.history_, self.n_regions_ = [], []
        self.converged_ = False
        self.n_iter_ = 0
        if self.solver == "lbfgs":
            return self._fit_lbfgs(X, decoder, noise)
        return self._fit_em(X, decoder, noise)

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
        self._check_finite(mean_ll, iteration)
        self.decoder_, self.noise_var_, self.model_ = decoder, (noise if self.noise == "diagonal" else float(noise[0])), model
        self.history_.append(mean_ll)
        self.n_regions_.append(len(model.regions))
        if self.verbose:
            _progress(iteration, self.max_iter, mean_ll, len(model.regions), time.perf_counter() - started)
        if self.callback is not None:
            self.callback(iteration, self)

    def _fit_em(self, X, decoder, noise):
        model = self._model(decoder, noise)
        es = model.e_step(X)
        ll = float(np.mean(es.log_likelihood))
        started = time.perf_counter()
        self._accept(decoder, noise, model, ll, 0, started)
        damping = 0.0
        for iteration in range(1, self.max_iter + 1):
            stats = RegionStats(es, X, len(model.regions))
            accepted = None
            # Levenberg-Marquardt style: the undamped closed-form M-step first (or the damping that
            # last worked, relaxed); if the exact log-likelihood drops because the regions moved,
            # damp harder, which pulls the proposal back toward the current parameters.
            while damping <= _MAX_DAMPING:
                weights, biases, new_noise = m_step(decoder, model.regions.patterns, noise, stats,
                                                    weight_decay=self.weight_decay, min_noise_var=self.min_noise_var,
                                                    diagonal=self.noise == "diagonal", damping=damping)
                cand = Decoder(weights, biases, activation=self.activation, alpha=self.alpha)
                cand_model = self._model(cand, new_noise)
                try:
                    cand_es = cand_model.e_step(X)
                except _core.RegionLimitError as err:
                    raise _core.RegionLimitError(f"{err} (at EM iteration {iteration}; the estimator keeps the "
                                                 f"last good model in decoder_, noise_var_, model_)") from None
                cand_ll = float(np.mean(cand_es.log_likelihood))
                self._check_finite(cand_ll, iteration)  # a NaN would read as "no gain" and end the fit as converged
                if cand_ll >= ll - 1e-12 * (1 + abs(ll)):
                    accepted = (cand, new_noise, cand_model, cand_es, cand_ll)
                    break
                damping = max(10 * damping, _MIN_DAMPING)
            if accepted is None:  # even a tiny step toward the frozen-mask optimum loses: stationary
                self.converged_ = True
                break
            decoder, noise, model, es, new_ll = accepted
            self.n_iter_ = iteration
            improvement = new_ll - ll
            ll = new_ll
            self._accept(decoder, noise, model, ll, iteration, started)
            # A small gain under heavy damping only says the step was short, not that we converged.
            if improvement <= self.tol * (1 + abs(ll)) and damping <= 1.0:
                self.converged_ = True
                break
            damping = damping / 10 if damping > _MIN_DAMPING else 0.0
        if self.verbose and sys.stderr.isatty():
            print(file=sys.stderr)
        return self

    def _fit_lbfgs(self, X, decoder, noise):
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
            noise_vec = np.exp(log_noise) if diagonal else np.full(X.shape[1], np.exp(log_noise[0]))
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
            es = model.e_step(X)
            stats = RegionStats(es, X, len(model.regions))
            grads_w, grads_b, grad_noise = exact_gradient(dec, model.regions.patterns, noise_vec, stats, self.weight_decay)
            grad = [np.concatenate([gw.ravel(), gb]) for gw, gb in zip(grads_w, grads_b)]
            gn = grad_noise * noise_vec
            grad.append(gn if diagonal else np.array([gn.sum()]))
            n = len(X)
            penalty = 0.5 * self.weight_decay * sum(np.sum(w * w) for w in weights)
            value = -(np.sum(es.log_likelihood) - penalty) / n
            self._check_finite(value, len(self.history_))  # L-BFGS would take a NaN for a line-search failure
            state["last"] = (dec, noise_vec, model, float(np.mean(es.log_likelihood)))
            return value, -np.concatenate(grad) / n

        state = {}
        theta0 = np.concatenate([np.concatenate([w.ravel(), b]) for w, b in zip(decoder.weights, decoder.biases)]
                                + [np.log(noise) if diagonal else np.log(noise[:1])])
        started = time.perf_counter()
        objective(theta0)
        self._accept(*state["last"], 0, started)

        def on_iteration(theta):
            self.n_iter_ += 1
            self._accept(*state["last"], self.n_iter_, started)

        result = minimize(objective, theta0, jac=True, method="L-BFGS-B", callback=on_iteration,
                          options={"maxiter": self.max_iter, "ftol": self.tol, "gtol": 1e-8})
        dec_w, dec_b, noise_vec = unpack(result.x)
        dec = Decoder(dec_w, dec_b, activation=self.activation, alpha=self.alpha)
        model = self._model(dec, noise_vec)
        self.decoder_, self.model_ = dec, model
        self.noise_var_ = noise_vec if diagonal else float(noise_vec[0])
        self.converged_ = bool(result.success)
        return self

    # -- using the fitted model ------------------------------------------------------------------

    def _check_fitted(self):
        if not hasattr(self, "model_"):
            raise ValueError("this ExactEM instance is not fitted yet; call fit(X) first")

    def score_samples(self, X):
        """(n,) exact log p(x) of each row."""
        self._check_fitted()
        return self.model_.log_likelihood(_as_data(X) if len(np.shape(X)) == 2 and len(X) > 1 else np.atleast_2d(X))

    def score(self, X, y=None):
        """Mean exact log-likelihood per sample."""
        return float(np.mean(self.score_samples(X)))

    def sample(self, n_samples=1, random_state=None):
        """(X, Z): samples from the fitted generative model."""
        self._check_fitted()
        return self.model_.sample(n_samples, seed=random_state)

    def predict_latent(self, X):
        """(n, S) posterior means E[z | x]."""
        self._check_fitted()
        return self.model_.e_step(np.atleast_2d(np.asarray(X, dtype=float))).posterior_mean()

    def bic(self, X):
        X = np.atleast_2d(np.asarray(X, dtype=float))
        return -2 * self.score(X) * len(X) + self.n_parameters_ * np.log(len(X))

    def aic(self, X):
        X = np.atleast_2d(np.asarray(X, dtype=float))
        return -2 * self.score(X) * len(X) + 2 * self.n_parameters_


def exact_gradient(decoder, patterns, noise_var, stats, weight_decay=0.0):
    """The gradient of the frozen-mask objective at the current parameters. By Fisher's identity
    it is the gradient of the exact log-likelihood when the statistics come from the exact
    E-step at those parameters. Returns (weight gradients, bias gradients, noise gradient)."""
    factors = layer_factors(decoder, patterns)
    psi = np.broadcast_to(np.asarray(noise_var, dtype=float), (stats.dim,))
    weights, biases = decoder.weights, decoder.biases
    grads = [layer_gradient(weights, biases, factors, psi, stats, l, weight_decay) for l in range(len(weights))]
    return [g[:, :-1] for g in grads], [g[:, -1] for g in grads], noise_gradient(weights, biases, factors, psi, stats)
