"""Amortised variational baselines on exactem's decoder: the VAE and the IWAE.

Both train the same generative model as :class:`exactem.ExactEM` -- ``z ~ N(0, I_S)``,
``x | z ~ N(g(z), Psi)`` with ``g`` an MLP of widths ``[latent_dim, *hidden, D]`` and a
two-slope activation -- but by stochastic gradient ascent (Adam) on a Monte Carlo lower bound
of log p(x) with a Gaussian encoder q(z | x), instead of by exact EM. What they learn is scored
exactly: ``score_samples`` is the exact log p(x) of the learned decoder and noise (the same
engine as ExactEM), and ``elbo`` is the exact ELBO of the learned encoder.

Design choices (each the textbook one, none tuned toward or against either side):

- Encoder: an MLP with ``tanh`` hidden layers (Kingma & Welling, 2014, used tanh MLPs for the
  Gaussian encoder; a smooth encoder gives a smooth log-variance head), then two affine heads,
  the mean and the log-variance of a diagonal Gaussian. Default widths (64, 64): wider than the
  decoder, so the amortisation gap is small -- a choice in the baseline's favour.
- VAE objective: the ELBO with one reparameterised sample for the reconstruction term and the
  KL(q || N(0, I)) in closed form (Kingma & Welling's estimator B). IWAE objective: the k-sample
  importance-weighted bound ``log (1/k) sum_j p(x, z_j) / q(z_j | x)`` (Burda et al., 2016) with
  its plain reparameterised gradient.
- Noise variance: ``Psi = min_noise_var + exp(rho)``, one rho (isotropic) or D of them
  (diagonal); the floor is smooth so the gradient never vanishes at it.
- Initialisation: the decoder and noise variance drawn from the estimator's seeded generator
  exactly as ``ExactEM(init=init)`` draws them, so for one ``random_state`` and ``init`` the
  baselines and exact EM start from the same model. ``init="random"`` (the default) is
  ``Decoder.random`` (torch.nn.Linear's default uniform bounds) with the data's variance as noise;
  ``init="pca"`` is ExactEM's default start. The encoder uses the torch-default uniform
  initialisation.
- Optimiser: Adam with its published defaults (beta1 0.9, beta2 0.999, eps 1e-8) and learning
  rate 1e-3, minibatches of 100 (Kingma & Welling's size), reshuffled every epoch.
- Precision: float64, like the exact engine. JAX is switched to 64-bit only inside this module's
  calls (JAX's ``enable_x64`` context manager), so importing or using these estimators does not
  change the caller's global JAX configuration.

Posterior collapse: from the default start (noise variance = the data's variance) q(z | x) can
settle on the prior while the decoder outputs the data mean -- a saddle that exact EM from the
same start can also stop at. On ``datasets.circle`` the VAE and IWAE stay there for thousands of
epochs; started with ``init_noise_var`` at a tenth of the data's variance they leave it. The
stopping rule fires on such a plateau too, so to compare methods give a time or epoch budget
(``max_time``, a large ``n_iter_no_change``) and record held-out scores with ``callback``.

Example::

    from exactem.baselines import VAE
    X_train, X_test = exactem.datasets.train_test_split(exactem.datasets.wave(1000, seed=0))
    vae = VAE(random_state=0, max_time=30, n_iter_no_change=10**9).fit(X_train)
    vae.score(X_test)                         # exact held-out log-likelihood per point
    vae.score_samples(X_test) - vae.elbo(X_test)   # exact KL(q(z|x) || p(z|x)) of each point

JAX and optax are imported only here: ``import exactem`` does not import them.
"""

import sys
import time
import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import logsumexp
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_array, check_is_fitted

from . import _core
from ._validation import as_count
from .decoder import ACTIVATIONS, Decoder, _slope
from .model import DGN

__all__ = ["VAE", "IWAE", "GaussianEncoder"]

_LOG_2PI = float(np.log(2 * np.pi))


def _x64():
    """A context in which JAX computes in float64, leaving the global setting as it was.

    JAX 0.4.x has it as ``jax.experimental.enable_x64``, later releases as ``jax.enable_x64``."""
    import jax.experimental

    enable = getattr(jax.experimental, "enable_x64", None) or jax.enable_x64
    return enable(True)


# -- the model in JAX (training) ---------------------------------------------------------------------
# Parameters are a dict of lists of (W, b) pairs with W of shape (out, in), like torch.nn.Linear.

def _encode(params, X):
    h = X
    for W, b in params["enc"]:
        h = jnp.tanh(h @ W.T + b)
    (Wm, bm), (Wv, bv) = params["enc_mean"], params["enc_logvar"]
    return h @ Wm.T + bm, h @ Wv.T + bv


def _decode(params, Z, slope):
    h = Z
    *hidden, (W_out, b_out) = params["dec"]
    for W, b in hidden:
        h = h @ W.T + b
        h = jnp.where(h >= 0, h, slope * h)
    return h @ W_out.T + b_out


def _log_likelihood_given_z(params, X, Z, slope, min_noise_var):
    """log N(x; g(z), Psi) for Z of shape (..., N, S) against X (N, D): shape (..., N)."""
    psi = min_noise_var + jnp.exp(params["log_noise"])
    r = X - _decode(params, Z, slope)
    return -0.5 * jnp.sum(_LOG_2PI + jnp.log(psi) + r * r / psi, axis=-1)


def _log_weights(params, X, eps, slope, min_noise_var):
    """log p(x, z) - log q(z | x) at z = mean + sd * eps, for eps of shape (k, N, S): (k, N)."""
    mean, logvar = _encode(params, X)
    Z = mean + jnp.exp(0.5 * logvar) * eps
    log_prior = -0.5 * jnp.sum(_LOG_2PI + Z * Z, axis=-1)
    log_q = -0.5 * jnp.sum(_LOG_2PI + logvar + eps * eps, axis=-1)
    return _log_likelihood_given_z(params, X, Z, slope, min_noise_var) + log_prior - log_q


def _bound(params, X, key, slope, min_noise_var, k, analytic_kl):
    """(N,) one Monte Carlo draw of the training bound per point."""
    mean, logvar = _encode(params, X)
    eps = jax.random.normal(key, (k,) + mean.shape, dtype=X.dtype)
    if analytic_kl:  # the VAE: one sample for the reconstruction, KL(q || N(0, I)) in closed form
        Z = mean + jnp.exp(0.5 * logvar) * eps[0]
        kl = 0.5 * jnp.sum(jnp.exp(logvar) + mean * mean - 1.0 - logvar, axis=-1)
        return _log_likelihood_given_z(params, X, Z, slope, min_noise_var) - kl
    log_w = _log_weights(params, X, eps, slope, min_noise_var)
    return logsumexp(log_w, axis=0) - np.log(k)


_ADAM = optax.scale_by_adam()  # beta1 0.9, beta2 0.999, eps 1e-8: optax.adam without its step size


@partial(jax.jit, static_argnames=("slope", "k", "analytic_kl"))
def _train_step(params, opt_state, key, batch, mask, learning_rate, min_noise_var, slope, k, analytic_kl):
    """One Adam step on the minibatch ``batch`` (B, D), whose rows with ``mask`` 0 are padding.

    Returns the new parameters, optimiser state and key, and the minibatch's mean bound at the
    parameters before the step. Every minibatch of a fit has the same shape (the last one is
    padded), and the step size is an argument rather than baked into the optimiser, so one
    compilation serves every step of every fit with the same widths and batch size."""

    def loss(p, sub):
        bound = _bound(p, batch, sub, slope, min_noise_var, k, analytic_kl)
        return -jnp.sum(mask * bound) / jnp.sum(mask)

    key, sub = jax.random.split(key)
    value, grads = jax.value_and_grad(loss)(params, sub)
    updates, opt_state = _ADAM.update(grads, opt_state, params)
    params = jax.tree_util.tree_map(lambda a, u: a - learning_rate * u, params, updates)
    return params, opt_state, key, -value


# -- the learned encoder in numpy (inference) -------------------------------------------------------

class GaussianEncoder:
    """The learned encoder q(z | x) = N(mean(x), diag(var(x))), in numpy (picklable).

    Parameters
    ----------
    weights, biases : lists of arrays
        The tanh hidden layers, weights of shape (out, in).
    mean_weight, mean_bias, logvar_weight, logvar_bias : arrays
        The affine heads giving the mean and the log-variance.
    """

    def __init__(self, weights, biases, mean_weight, mean_bias, logvar_weight, logvar_bias):
        self.weights = [np.asarray(w, dtype=np.float64) for w in weights]
        self.biases = [np.asarray(b, dtype=np.float64) for b in biases]
        self.mean_weight = np.asarray(mean_weight, dtype=np.float64)
        self.mean_bias = np.asarray(mean_bias, dtype=np.float64)
        self.logvar_weight = np.asarray(logvar_weight, dtype=np.float64)
        self.logvar_bias = np.asarray(logvar_bias, dtype=np.float64)

    @property
    def input_dim(self):
        return (self.weights[0] if self.weights else self.mean_weight).shape[1]

    @property
    def latent_dim(self):
        return self.mean_weight.shape[0]

    def __call__(self, X):
        """(q_mean, q_var), each of shape (N, S), for the rows of X (N, D)."""
        X = check_array(X, dtype=np.float64, ensure_min_samples=1)
        if X.shape[1] != self.input_dim:
            raise ValueError(f"X has {X.shape[1]} features; the encoder takes {self.input_dim}")
        h = X
        for W, b in zip(self.weights, self.biases):
            h = np.tanh(h @ W.T + b)
        return h @ self.mean_weight.T + self.mean_bias, np.exp(h @ self.logvar_weight.T + self.logvar_bias)

    def __repr__(self):
        widths = [self.input_dim] + [w.shape[0] for w in self.weights] + [self.latent_dim]
        return f"GaussianEncoder(widths={widths})"


def _torch_linear(rng, fan_in, fan_out):
    """torch.nn.Linear's default initialisation (uniform on [-1/sqrt(fan_in), 1/sqrt(fan_in)]),
    drawn by the engine as for ``Decoder.random``, seeded from ``rng``."""
    (weight,), (bias,) = _core.random_parameters([fan_in, fan_out], int(rng.integers(2**64, dtype=np.uint64)))
    return weight, bias


def _progress(name, epoch, max_epochs, bound, validation, elapsed):
    line = f"{name} epoch {epoch:4d}/{max_epochs}  bound/point {bound: .6f}"
    if validation is not None:
        line += f"  held-out exact log-lik/point {validation: .6f}"
    print(line + f"  {elapsed:7.2f} s", file=sys.stderr, flush=True)


# -- the estimators -------------------------------------------------------------------------------------

class VAE(DensityMixin, BaseEstimator):
    """A variational autoencoder on exactem's decoder, scored exactly.

    The generative model is that of :class:`exactem.ExactEM` with the same parameters
    (``latent_dim``, ``hidden``, ``activation``, ``alpha``, ``noise``, ``min_noise_var``); it is
    trained by Adam on the negative ELBO of a Gaussian encoder (see the module docstring for every
    design choice and its reason). The learned model is then an ordinary :class:`exactem.DGN`:
    ``score_samples`` is its EXACT log-likelihood, not the bound.

    Parameters
    ----------
    latent_dim : int
        S, the dimension of z.
    hidden : tuple of int
        Hidden widths of the decoder (widths ``[latent_dim, *hidden, D]``).
    activation : {"relu", "leaky_relu", "abs", "linear"}
        Decoder activation ``s(u) = u`` for ``u >= 0`` else ``slope * u`` (relu 0, abs -1,
        linear 1, leaky_relu ``alpha``).
    alpha : float
        Negative slope of "leaky_relu".
    noise : {"isotropic", "diagonal"}
        ``Psi = noise_var * I`` or ``diag(noise_var)``.
    encoder_hidden : tuple of int
        Hidden widths of the encoder (tanh layers).
    max_epochs : int
        Passes over the training data (0 returns the initial model).
    batch_size : int
        Minibatch size (clipped to the number of training points).
    learning_rate : float
        Adam's step size.
    max_time : float or None
        Stop after the first epoch that ends past this many seconds of training, counted as
        ExactEM counts them: from the start of ``fit`` (JAX's compilation included), less the time
        spent in ``callback``.
    early_stopping : bool
        Hold out ``validation_fraction`` of the rows -- the same rows ExactEM holds out for the
        same ``random_state`` -- score them by the EXACT log-likelihood after every epoch, stop
        after ``n_iter_no_change`` epochs without improvement and keep the best parameters
        (scikit-learn's MLP rule, as ExactEM applies it).
    validation_fraction : float in (0, 1)
        Share held out when ``early_stopping``.
    n_iter_no_change : int
        The stopping rule's window. Without early stopping: converged when the mean training
        bound of the last ``n_iter_no_change`` epochs exceeds that of the ``n_iter_no_change``
        epochs before by at most ``tol * (1 + |earlier mean|)`` (windows, because each epoch's bound
        is a noisy Monte Carlo estimate). With early stopping: stop after ``n_iter_no_change``
        epochs whose held-out exact log-likelihood does not beat the best by more than
        ``tol * (1 + |best|)`` (scikit-learn's MLP rule).
    tol : float
        Relative improvement that counts (see ``n_iter_no_change``); scikit-learn's MLP default.
    min_noise_var : float
        Floor of the noise variance.
    init : {"random", "pca"}
        The initial decoder and noise, drawn exactly as :class:`exactem.ExactEM` draws them for the
        same ``init`` and ``random_state``. "random": ``Decoder.random`` (torch.nn.Linear's default
        uniform bounds) and the data's variance as noise. "pca": the same random hidden layers, the
        output layer fitted by least squares to PCA scores, the residual variance as noise (ExactEM's
        default). The noise variance the VAE starts from matters: started at the whole data
        variance ("random"), the decoder has nothing to explain, q(z|x) collapses onto the prior
        and on symmetric data (the circle) it stays there (figures in benches/bench_baselines.py).
    init_noise_var : float, array of shape (D,) or None
        Overrides the initial noise variance of ``init`` (the decoder is unchanged).
    random_state : int, numpy Generator or None
        Seeds the initialisation, the validation split, the shuffling and the reparameterisation
        noise: the same seed gives the same history (its objectives; times are wall-clock) and
        parameters.
    verbose : bool
        One line per epoch on stderr.
    callback : callable or None
        ``callback(epoch, estimator)`` for the initial model (epoch 0) and after each epoch, with
        ``decoder_``, ``noise_var_``, ``encoder_`` and ``model_`` at the current parameters
        (``model_`` is built on first access). Its time is not training time.

    Attributes
    ----------
    decoder_ : exactem.Decoder
    noise_var_ : float (isotropic) or ndarray of shape (D,)
    model_ : exactem.DGN
        ``DGN(decoder_, noise_var_)``.
    encoder_ : GaussianEncoder
        ``encoder_(X) -> (q_mean, q_var)``, numpy arrays of shape (N, S).
    history_ : list of dict
        Per epoch: ``"epoch"``, ``"time"`` (training seconds, as ``max_time`` counts them) and
        ``"objective"``, the training bound per point (mean of the epoch's minibatch estimates;
        higher is better; Adam minimises its negative).
    validation_history_ : list of float or None
        With early stopping, the held-out exact log-likelihood per point of the initial model and
        after every epoch; else None.
    best_iteration_ : int or None
        With early stopping, the epoch whose parameters were kept (0: the initial model); else None.
    n_iter_ : int
        Epochs run.
    converged_ : bool
        True when the stopping rule of ``n_iter_no_change``/``tol`` ended training, False when
        ``max_epochs`` or ``max_time`` did.
    n_features_in_ : int
    """

    _name = "VAE"

    def __init__(self, latent_dim=1, hidden=(16, 16), activation="leaky_relu", alpha=0.1, noise="isotropic",
                 encoder_hidden=(64, 64), max_epochs=500, batch_size=100, learning_rate=1e-3, max_time=None,
                 early_stopping=False, validation_fraction=0.1, n_iter_no_change=10, tol=1e-4, min_noise_var=1e-6,
                 init="random", init_noise_var=None, random_state=None, verbose=False, callback=None):
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.activation = activation
        self.alpha = alpha
        self.noise = noise
        self.encoder_hidden = encoder_hidden
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.max_time = max_time
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.min_noise_var = min_noise_var
        self.init = init
        self.init_noise_var = init_noise_var
        self.random_state = random_state
        self.verbose = verbose
        self.callback = callback

    # -- the objective's shape (the IWAE overrides) -----------------------------------------------

    def _n_samples_per_point(self):
        return 1

    def _analytic_kl(self):
        return True

    # -- set-up -------------------------------------------------------------------------------------

    def _check_params(self):
        as_count(self.latent_dim, "latent_dim")
        for w in self.hidden:
            as_count(w, "every entry of hidden")
        for w in self.encoder_hidden:
            as_count(w, "every entry of encoder_hidden")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if not np.isfinite(self.alpha):
            raise ValueError(f"alpha must be finite; got {self.alpha}")
        if self.noise not in ("isotropic", "diagonal"):
            raise ValueError(f"noise must be 'isotropic' or 'diagonal'; got {self.noise!r}")
        as_count(self.max_epochs, "max_epochs", minimum=0)
        as_count(self.batch_size, "batch_size")
        as_count(self.n_iter_no_change, "n_iter_no_change")
        if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be positive; got {self.learning_rate}")
        if self.max_time is not None and not (self.max_time > 0):
            raise ValueError(f"max_time must be None or a positive number of seconds; got {self.max_time}")
        if not isinstance(self.early_stopping, (bool, np.bool_)):
            raise ValueError(f"early_stopping must be True or False; got {self.early_stopping!r}")
        if not (0 < self.validation_fraction < 1):
            raise ValueError(f"validation_fraction must be strictly between 0 and 1; got {self.validation_fraction}")
        if not (self.tol >= 0):
            raise ValueError(f"tol must be non-negative; got {self.tol}")
        if not (self.min_noise_var > 0):
            raise ValueError(f"min_noise_var must be positive; got {self.min_noise_var}")
        if self.init not in ("random", "pca"):
            raise ValueError(f"init must be 'random' or 'pca'; got {self.init!r}")
        if self.init_noise_var is not None:
            init_noise = np.asarray(self.init_noise_var, dtype=np.float64)
            if init_noise.ndim > 1 or not np.all(np.isfinite(init_noise)) or np.any(init_noise <= 0):
                raise ValueError(f"init_noise_var must be None, a positive number or a positive (D,) array; "
                                 f"got {self.init_noise_var!r}")
        if self.callback is not None and not callable(self.callback):
            raise ValueError("callback must be callable as callback(epoch, estimator), or None")

    def _initial_params(self, X, rng):
        S, D = self.latent_dim, X.shape[1]
        # ExactEM's initial model, drawn from the same seeded stream: for one random_state and init
        # the VAE, the IWAE and ExactEM start from the same decoder and noise variance.
        from .estimator import ExactEM

        start = ExactEM(latent_dim=S, hidden=self.hidden, activation=self.activation, alpha=self.alpha,
                        noise=self.noise, init=self.init, min_noise_var=self.min_noise_var)
        decoder, noise = start._initial_model(X, rng)
        if self.init_noise_var is not None:
            given = np.asarray(self.init_noise_var, dtype=np.float64)
            if given.ndim == 1 and (given.shape != (D,) or self.noise == "isotropic"):
                raise ValueError(f"init_noise_var must be a number (isotropic noise) or an array of shape ({D},) "
                                 f"(diagonal noise); got shape {given.shape} with noise={self.noise!r}")
            noise = np.broadcast_to(given, (D,)).copy()
        noise = noise if self.noise == "diagonal" else noise[:1]
        # Psi = min_noise_var + exp(rho): start at that variance (just above the floor if it is tiny).
        log_noise = np.log(np.maximum(noise - self.min_noise_var, self.min_noise_var))
        widths = [D, *self.encoder_hidden]
        enc = [_torch_linear(rng, a, b) for a, b in zip(widths[:-1], widths[1:])]
        return {
            "dec": list(zip(decoder.weights, decoder.biases)),
            "enc": enc,
            "enc_mean": _torch_linear(rng, widths[-1], S),
            "enc_logvar": _torch_linear(rng, widths[-1], S),
            "log_noise": log_noise,
        }

    def _publish(self, params):
        """Sets decoder_, noise_var_ and encoder_ from parameters (model_ follows lazily)."""
        p = jax.tree_util.tree_map(np.asarray, params)
        self.decoder_ = Decoder([w for w, _ in p["dec"]], [b for _, b in p["dec"]], activation=self.activation,
                                alpha=self.alpha)
        noise = self.min_noise_var + np.exp(p["log_noise"])
        self.noise_var_ = noise.copy() if self.noise == "diagonal" else float(noise[0])
        self.encoder_ = GaussianEncoder([w for w, _ in p["enc"]], [b for _, b in p["enc"]], *p["enc_mean"],
                                        *p["enc_logvar"])

    @property
    def model_(self):
        """``exactem.DGN(decoder_, noise_var_)``, built on first access after the parameters change."""
        decoder = self.__dict__.get("decoder_")
        if decoder is None:
            raise AttributeError(f"this {type(self).__name__} is not fitted yet; call fit(X) first")
        cached = self.__dict__.get("_model_cache")
        if cached is None or cached[0] is not decoder or cached[1] is not self.noise_var_:
            cached = (decoder, self.noise_var_, DGN(decoder, self.noise_var_))
            self._model_cache = cached
        return cached[2]

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: it may be the live __dict__
        state.pop("_model_cache", None)  # rebuilt on demand
        return state

    # -- fitting ----------------------------------------------------------------------------------------

    def fit(self, X, y=None):
        """Train on the rows of X (n_samples, n_features); returns self."""
        self._check_params()
        X = check_array(X, dtype=np.float64, ensure_min_samples=2)
        self.n_features_in_ = X.shape[1]
        self._clock_started, self._callback_time = time.perf_counter(), 0.0
        # ExactEM's held-out rows and initial model for the same settings: one split, one start.
        from .estimator import ExactEM, _generator

        X_train, X_val = ExactEM(early_stopping=self.early_stopping, validation_fraction=self.validation_fraction,
                                 random_state=self.random_state)._validation_split(X)
        rng = _generator(self.random_state)
        params = self._initial_params(X_train, rng)
        key_seed = int(rng.integers(2**32))
        self.history_ = []
        self.validation_history_ = [] if X_val is not None else None
        self.best_iteration_ = None
        self.n_iter_, self.converged_ = 0, False
        with _x64():
            self._train(params, X_train, X_val, rng, key_seed)
        return self

    def _training_time(self):
        """Seconds since fit began, less the time spent in the callback (as ExactEM counts)."""
        return time.perf_counter() - self._clock_started - self._callback_time

    def _train(self, params, X, X_val, rng, key_seed):
        params = jax.tree_util.tree_map(jnp.asarray, params)
        opt_state = _ADAM.init(params)
        key = jax.random.PRNGKey(key_seed)
        N = len(X)
        batch = min(self.batch_size, N)
        n_batches = -(-N // batch)
        padded = np.zeros((n_batches * batch, X.shape[1]))
        mask = np.zeros(n_batches * batch)
        mask[:N] = 1.0
        masks = mask.reshape(n_batches, batch)
        sizes = masks.sum(axis=1)
        config = dict(slope=_slope(self.activation, self.alpha), k=self._n_samples_per_point(),
                      analytic_kl=self._analytic_kl())
        lr, floor = float(self.learning_rate), float(self.min_noise_var)
        # Early stopping as ExactEM's (scikit-learn's MLP rule): an epoch counts as an improvement if
        # its held-out exact log-likelihood beats the best so far by more than tol (relative); the
        # best parameters are kept whenever it beats it at all; the initial model is epoch 0.
        best, best_params, stale = -np.inf, params, 0
        epoch = 0
        while True:
            stop = False
            if epoch > 0 or X_val is not None or self.callback is not None:
                self._publish(params)
            validation = None
            if X_val is not None:
                validation = float(np.mean(self.model_.log_likelihood(X_val)))
                self.validation_history_.append(validation)
                if epoch > 0 and validation <= best + self.tol * (1 + abs(best)):
                    stale += 1
                else:
                    stale = 0
                if validation > best:
                    best, best_params, self.best_iteration_ = validation, params, epoch
                stop = stale >= self.n_iter_no_change
            elif epoch >= 2 * self.n_iter_no_change:
                # The epoch bound is a Monte Carlo estimate whose noise can exceed a slow trend, so
                # windows are compared, not single epochs: converged when the mean of the last
                # n_iter_no_change epochs beats the mean of the n_iter_no_change before by no more
                # than tol (relative).
                n = self.n_iter_no_change
                recent = [h["objective"] for h in self.history_[-2 * n:]]
                before, last = np.mean(recent[:n]), np.mean(recent[n:])
                stop = last - before <= self.tol * (1 + abs(before))
            if self.verbose and epoch > 0:
                _progress(self._name, epoch, self.max_epochs, self.history_[-1]["objective"], validation,
                          self._training_time())
            if self.callback is not None:
                entered = time.perf_counter()
                self.callback(epoch, self)
                self._callback_time += time.perf_counter() - entered
            if stop:
                self.converged_ = True
                break
            if self.max_time is not None and self._training_time() >= self.max_time:
                break
            if epoch >= self.max_epochs:
                if self.max_epochs > 0:
                    warnings.warn(f"{self._name} stopped at max_epochs={self.max_epochs} before the stopping rule "
                                  f"(n_iter_no_change={self.n_iter_no_change}, tol={self.tol}) was met",
                                  ConvergenceWarning, stacklevel=3)
                break
            epoch += 1
            padded[:N] = X[rng.permutation(N)]
            batches = padded.reshape(n_batches, batch, -1)
            bounds = []
            for b in range(n_batches):
                params, opt_state, key, value = _train_step(params, opt_state, key, batches[b], masks[b], lr, floor,
                                                            **config)
                bounds.append(value)
            objective = float(np.dot(np.asarray(jnp.stack(bounds)), sizes)) / N
            if not np.isfinite(objective):
                raise FloatingPointError(f"the training bound became {objective} at epoch {epoch}; lower "
                                         f"learning_rate or raise min_noise_var")
            self.history_.append({"epoch": epoch, "time": self._training_time(), "objective": objective})
            self.n_iter_ = epoch
        if X_val is not None:
            params = best_params
        self._publish(params)

    # -- using the fitted model ------------------------------------------------------------------------

    def _check_X(self, X):
        check_is_fitted(self, "decoder_")
        X = check_array(X, dtype=np.float64, ensure_min_samples=1)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} was fitted with "
                             f"{self.n_features_in_}")
        return X

    def score_samples(self, X):
        """Exact log p(x) of each row under the learned model.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,), equal to ``model_.log_likelihood(X)``.
        """
        X = self._check_X(X)
        return self.model_.log_likelihood(X)

    def score(self, X, y=None):
        """Mean exact log-likelihood per sample (float)."""
        return float(np.mean(self.score_samples(X)))

    def elbo(self, X):
        """The exact ELBO of the learned encoder: ``model_.elbo(X, *encoder_(X))`` (no sampling).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,); ``score_samples(X) - elbo(X)`` is KL(q(z|x) || p(z|x)).
        """
        X = self._check_X(X)
        q_mean, q_var = self.encoder_(X)
        return self.model_.elbo(X, q_mean, q_var)

    def importance_weighted_bound(self, X, k=1, random_state=None):
        """A Monte Carlo draw of the k-sample importance-weighted bound of each row, in numpy.

        ``log (1/k) sum_j p(x, z_j) / q(z_j | x)`` with ``z_j ~ q(z | x)`` from the learned encoder
        and the learned model; ``k=1`` draws the ELBO's single-sample estimate. Its expectation
        rises with k toward the exact ``score_samples(X)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        k : int
        random_state : int, numpy Generator or None

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        X = self._check_X(X)
        k = as_count(k, "k")
        eps = np.random.default_rng(random_state).standard_normal((k, len(X), self.latent_dim))
        log_w = _numpy_log_weights(self.encoder_, self.decoder_, self.noise_var_, X, eps)
        top = log_w.max(axis=0)
        return top + np.log(np.mean(np.exp(log_w - top), axis=0))

    def sample(self, n_samples=1, random_state=None):
        """(X, Z): n_samples draws from the learned generative model."""
        check_is_fitted(self, "decoder_")
        return self.model_.sample(n_samples, seed=random_state)


def _numpy_log_weights(encoder, decoder, noise_var, X, eps):
    """log p(x, z) - log q(z | x) at z = mean + sd * eps (eps (k, N, S)) with numpy and the exact
    engine's decoder: an implementation independent of the JAX training code, (k, N)."""
    mean, var = encoder(X)
    Z = mean + np.sqrt(var) * eps
    k, N, S = eps.shape
    G = decoder(Z.reshape(k * N, S)).reshape(k, N, -1)
    psi = np.broadcast_to(np.asarray(noise_var, dtype=np.float64), (X.shape[1],))
    r = X - G
    log_lik = -0.5 * np.sum(_LOG_2PI + np.log(psi) + r * r / psi, axis=-1)
    log_prior = -0.5 * np.sum(_LOG_2PI + Z * Z, axis=-1)
    log_q = -0.5 * np.sum(_LOG_2PI + np.log(var) + eps * eps, axis=-1)
    return log_lik + log_prior - log_q


class IWAE(VAE):
    """An importance-weighted autoencoder (Burda et al., 2016) on exactem's decoder, scored exactly.

    As :class:`VAE` (every parameter and attribute is the same), but trained on the k-sample
    importance-weighted bound ``log (1/k) sum_j p(x, z_j) / q(z_j | x)``, which lies between the
    ELBO and log p(x) and tightens as k grows. ``history_``'s objective is that bound.

    Parameters
    ----------
    k : int
        Importance samples per point and step.
    (the others as in :class:`VAE`)
    """

    _name = "IWAE"

    def __init__(self, latent_dim=1, hidden=(16, 16), activation="leaky_relu", alpha=0.1, noise="isotropic",
                 encoder_hidden=(64, 64), max_epochs=500, batch_size=100, learning_rate=1e-3, max_time=None,
                 early_stopping=False, validation_fraction=0.1, n_iter_no_change=10, tol=1e-4, min_noise_var=1e-6,
                 init="random", init_noise_var=None, random_state=None, verbose=False, callback=None, k=5):
        super().__init__(latent_dim=latent_dim, hidden=hidden, activation=activation, alpha=alpha, noise=noise,
                         encoder_hidden=encoder_hidden, max_epochs=max_epochs, batch_size=batch_size,
                         learning_rate=learning_rate, max_time=max_time, early_stopping=early_stopping,
                         validation_fraction=validation_fraction, n_iter_no_change=n_iter_no_change, tol=tol,
                         min_noise_var=min_noise_var, init=init, init_noise_var=init_noise_var,
                         random_state=random_state, verbose=verbose, callback=callback)
        self.k = k

    def _check_params(self):
        super()._check_params()
        as_count(self.k, "k")

    def _n_samples_per_point(self):
        return int(self.k)

    def _analytic_kl(self):
        return False
