"""The deep generative network z ~ N(0, I), x | z ~ N(g(z), Psi) and its exact inference."""

import numpy as np
import scipy.sparse

from . import _core
from ._validation import as_count, as_points, as_real, as_real_array, as_seed
from .decoder import Decoder
from .distributed import block_e_step, block_log_likelihood, is_dask_array, model_spec


def _as_noise_var(noise_var, dim):
    """A positive (D,) array from a scalar (isotropic) or a (D,) array (diagonal)."""
    if isinstance(noise_var, (bool, np.bool_)):
        raise ValueError(f"noise_var must be a positive number or array; got {noise_var!r}")
    arr = as_real_array(noise_var, "noise_var")
    if arr.ndim == 0:
        arr = np.full(dim, float(arr))
    if arr.shape != (dim,):
        raise ValueError(f"noise_var must be a positive scalar or an array of shape ({dim},); got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"noise_var must be positive and finite; got {noise_var!r}")
    return arr


def _as_gaussian_q(q_mean, q_var, n, latent_dim):
    """q's means (n, S) and full covariances (n, S, S), C-contiguous, from a diagonal (n, S) or
    full (n, S, S) ``q_var``; a ValueError saying what to fix otherwise."""
    mean = as_points(q_mean, latent_dim, "q_mean")
    if mean.shape[0] != n:
        raise ValueError(f"q_mean must have one row per point of X: shape ({n}, {latent_dim}); got {mean.shape}")
    var = np.asarray(q_var, dtype=np.float64)
    if var.shape == (n, latent_dim):
        if not np.all(np.isfinite(var)) or np.any(var <= 0):
            raise ValueError("q_var (diagonal variances) must be positive and finite")
        cov = np.zeros((n, latent_dim, latent_dim))
        idx = np.arange(latent_dim)
        cov[:, idx, idx] = var
        return mean, cov
    if var.shape == (n, latent_dim, latent_dim):
        if not np.all(np.isfinite(var)):
            raise ValueError("q_var contains NaN or infinite values")
        # Symmetry and positive definiteness are checked by the engine, point by point.
        return mean, np.ascontiguousarray(var)
    raise ValueError(
        f"q_var must be diagonal variances of shape ({n}, {latent_dim}) or covariances of shape "
        f"({n}, {latent_dim}, {latent_dim}); got shape {var.shape}"
    )


class Posterior:
    """The exact posterior ``p(z | x)`` of one point: a mixture over regions of truncated Gaussians.

    Obtain one from :meth:`DGN.posterior`. In region ``q`` the joint density ``p(x | z) p(z)``
    is Gaussian in ``z``, so the posterior restricted to ``q`` is a Gaussian truncated to the
    region; its weight is that Gaussian's mass on ``q``, normalised over all regions.

    Parameters
    ----------
    core : exactem._core.PosteriorCore
        The engine's posterior.
    partition : Partition
        The regions the mixture runs over.
    model : DGN, optional
        The model and ``x`` it came from; with them the posterior can be pickled (it is
        recomputed on load).
    x : ndarray of shape (D,), optional

    Attributes
    ----------
    log_likelihood : float
        ``log p(x)``.
    weights : ndarray of shape (R,)
        Posterior probability of each region.
    mean : ndarray of shape (S,)
        ``E[z | x]``.
    cov : ndarray of shape (S, S)
        ``Cov[z | x]``.

    Examples
    --------
    >>> import numpy as np
    >>> import exactem
    >>> model = exactem.DGN(exactem.Decoder.random([1, 8, 2], seed=0), noise_var=0.05)
    >>> post = model.posterior(np.array([0.1, -0.2]))
    >>> round(float(post.weights.sum()), 12)
    1.0
    >>> post.sample(3, seed=1).shape
    (3, 1)
    """

    def __init__(self, core, partition, model=None, x=None):
        self._core = core
        self.partition = partition
        self._model = model
        self._x = None if x is None else np.array(x, dtype=np.float64)

    def __getstate__(self):
        if self._model is None:
            raise TypeError("this Posterior was built without its model and x, so it cannot be pickled; "
                            "pickle the DGN and x and call DGN.posterior(x) again")
        return {"model": self._model, "x": self._x}

    def __setstate__(self, state):
        rebuilt = state["model"].posterior(state["x"])
        self.__init__(rebuilt._core, rebuilt.partition, state["model"], state["x"])

    @property
    def log_likelihood(self):
        """log p(x)."""
        return self._core.log_likelihood

    @property
    def weights(self):
        """(R,) posterior probability of each region (exactly zero only where pruned: < e^-40 relative)."""
        return self._core.weights

    @property
    def mean(self):
        """(S,) E[z | x]."""
        return self._core.mean

    @property
    def cov(self):
        """(S, S) Cov[z | x]."""
        return self._core.cov

    def logpdf(self, Z):
        """Log posterior density at latent points.

        Parameters
        ----------
        Z : array-like of shape (n, S)
            Latent points.

        Returns
        -------
        logpdf : ndarray of shape (n,)
            ``log p(z | x)`` of each row.
        """
        return self._core.logpdf(as_points(Z, self.partition.latent_dim))

    def pdf(self, Z):
        """Posterior density at latent points.

        Parameters
        ----------
        Z : array-like of shape (n, S)
            Latent points.

        Returns
        -------
        pdf : ndarray of shape (n,)
            ``p(z | x) = exp(logpdf(Z))``.
        """
        return np.exp(self.logpdf(Z))

    def map(self):
        """The most probable latent point (each region's constrained optimum, the best of them).

        Returns
        -------
        z : ndarray of shape (S,)
        """
        return self._core.map()

    def sample(self, n, seed=0):
        """Exact independent draws from the posterior.

        A region is drawn by its posterior weight, then the truncated Gaussian on it: by
        accept-reject from a Gaussian at the region's point nearest the mean where that is
        known to accept often, else (S <= 4) sequentially, each coordinate from its exact
        log-concave marginal by rejection from an envelope whose acceptance is proven at least
        0.9 (S = 1: by inversion). Thin, unbounded and far regions are sampled exactly like any
        other. Ctrl-C interrupts the call.

        Parameters
        ----------
        n : int
            Number of draws (>= 0).
        seed : int, default 0
            Seed of the generator; the draws are a deterministic function of it.

        Returns
        -------
        Z : ndarray of shape (n, S)
            The draws.
        """
        n = as_count(n, "n", minimum=0)
        return self._core.sample(n, as_seed(seed))


class EStepResult:
    """Exact E-step statistics of a batch, from :meth:`DGN.e_step`.

    Parameters
    ----------
    log_likelihood : ndarray of shape (N,)
    indptr, regions, m0 : ndarray
        The compressed-row layout of the posterior region probabilities.
    m1, m2 : ndarray
        Flattened first and second moments per stored (point, region) pair.
    n_regions : int
        Number of regions R.
    latent_dim : int
        S.

    Attributes
    ----------
    log_likelihood : ndarray of shape (N,)
        Exact ``log p(x_n)``.
    m0 : scipy.sparse.csr_matrix of shape (N, R)
        Posterior region probabilities ``P(z in q | x_n)`` (``.toarray()`` for the dense
        matrix); regions whose share is below ``e^-40`` of the largest are not stored.
    m1 : ndarray of shape (nnz, S)
        ``E[z 1_q | x_n]`` for the stored pairs, in the order of ``m0.indices``.
    m2 : ndarray of shape (nnz, S, S)
        ``E[z z^T 1_q | x_n]`` for the stored pairs.

    Examples
    --------
    >>> import numpy as np
    >>> import exactem
    >>> model = exactem.DGN(exactem.Decoder.random([1, 8, 2], seed=0), noise_var=0.05)
    >>> X, _ = model.sample(5, seed=0)
    >>> es = model.e_step(X)
    >>> bool(np.allclose(es.m0.sum(axis=1), 1.0))
    True
    >>> es.posterior_mean().shape
    (5, 1)
    """

    def __init__(self, log_likelihood, indptr, regions, m0, m1, m2, n_regions, latent_dim):
        n = len(log_likelihood)
        self.log_likelihood = log_likelihood
        self.m0 = scipy.sparse.csr_matrix((m0, regions, indptr), shape=(n, n_regions))
        self.m1 = m1.reshape(-1, latent_dim)
        self.m2 = m2.reshape(-1, latent_dim, latent_dim)

    @property
    def regions(self):
        """The region of each stored entry (same order as ``m1`` and ``m2``)."""
        return self.m0.indices

    @property
    def points(self):
        """The data point of each stored entry."""
        return np.repeat(np.arange(self.m0.shape[0]), np.diff(self.m0.indptr))

    def posterior_mean(self):
        """Posterior means ``E[z | x_n] = sum_q E[z 1_q | x_n]``.

        Returns
        -------
        mean : ndarray of shape (N, S)
        """
        n, points = self.m0.shape[0], self.points
        return np.stack([np.bincount(points, weights=self.m1[:, j], minlength=n) for j in range(self.m1.shape[1])], axis=1)


class DGN:
    """The deep generative network ``z ~ N(0, I_S)``, ``x | z ~ N(g(z), Psi)``, with exact inference.

    ``Psi`` is ``noise_var * I`` or ``diag(noise_var)``. The log-likelihood, the posterior and
    the E-step are finite sums over the decoder's regions of Gaussian integrals over polyhedra:
    exact to machine precision for S = 1 and 2; for S = 3 signed sums of vertex cones or
    adaptive quadrature over exact slices, and for S >= 4 randomised quasi-Monte Carlo, both to
    the relative accuracy ``rtol``.
    For Gaussian encoders ``q(z | x)``, :meth:`elbo` and :meth:`posterior_gap` are exact too (no
    sampling), and :meth:`iwae_bound` is a Monte Carlo estimate with exact log-weights.

    Parameters
    ----------
    decoder : Decoder
        The network ``g``.
    noise_var : float or array-like of shape (D,)
        Isotropic or diagonal noise variance, positive.
    max_regions : int, default=1_000_000
        Largest number of regions to enumerate (:class:`exactem.RegionLimitError` beyond).
    rtol : float, default=1e-6
        Relative accuracy of region integrals that are not closed-form (S >= 3).
    seed : int, default=0
        Randomisation of the quasi-Monte Carlo integrals (S >= 4).

    Attributes
    ----------
    decoder : Decoder
    noise_var : float or ndarray of shape (D,)
    regions : Partition
        The decoder's regions, enumerated at first use.
    latent_dim, output_dim : int

    Examples
    --------
    >>> import exactem
    >>> model = exactem.DGN(exactem.Decoder.random([1, 8, 2], seed=0), noise_var=0.05)
    >>> X, Z = model.sample(100, seed=0)
    >>> model.log_likelihood(X).shape
    (100,)
    """

    def __init__(self, decoder, noise_var, max_regions=1_000_000, rtol=1e-6, seed=0):
        if not isinstance(decoder, Decoder):
            raise ValueError(f"decoder must be an exactem.Decoder; got {type(decoder).__name__}")
        self._decoder = decoder
        self._noise_var = _as_noise_var(noise_var, decoder.output_dim)
        self._isotropic = np.ndim(noise_var) == 0
        self.max_regions = as_count(max_regions, "max_regions")
        self.rtol = as_real(rtol, "rtol", positive=True)
        self.seed = as_seed(seed)
        self._regions = None
        self._core = None

    def __getstate__(self):
        # The engine objects are rebuilt on first use after loading: the arrays define the model.
        return {"decoder": self._decoder, "noise_var": self._noise_var, "isotropic": self._isotropic,
                "max_regions": self.max_regions, "rtol": self.rtol, "seed": self.seed}

    def __setstate__(self, state):
        noise = float(state["noise_var"][0]) if state["isotropic"] else state["noise_var"]
        self.__init__(state["decoder"], noise, max_regions=state["max_regions"], rtol=state["rtol"],
                      seed=state["seed"])

    @property
    def decoder(self):
        """Decoder: the network g."""
        return self._decoder

    @property
    def noise_var(self):
        """A float for isotropic noise, else the (D,) diagonal."""
        return float(self._noise_var[0]) if self._isotropic else self._noise_var.copy()

    @property
    def latent_dim(self):
        """int: the latent dimension S."""
        return self._decoder.latent_dim

    @property
    def output_dim(self):
        """int: the data dimension D."""
        return self._decoder.output_dim

    @property
    def regions(self):
        """The decoder's Partition, computed once."""
        if self._regions is None:
            self._regions = self._decoder.regions(max_regions=self.max_regions)
        return self._regions

    def _engine(self):
        if self._core is None:
            self._core = _core.DgnCore(self.regions._core, self._noise_var, self.rtol, self.seed)
        return self._core

    def log_likelihood(self, X):
        """Exact log-density of each row.

        Parameters
        ----------
        X : array-like or dask.array of shape (N, D)
            Observations.

        Returns
        -------
        log_likelihood : ndarray of shape (N,)
            ``log p(x_n)``. A ``dask.array`` of rows (chunked by rows only) gives a lazy dask
            array, each block computed where dask computes it, so a dataset larger than memory
            can be scored.
        """
        if is_dask_array(X):
            return self._map_row_blocks(X, block_log_likelihood)
        return self._engine().log_likelihood(as_points(X, self.output_dim, "X"))

    def _spec(self):
        return model_spec(self._decoder, self.noise_var, self.max_regions, self.rtol, self.seed)

    def _map_row_blocks(self, X, function):
        if X.ndim != 2 or X.shape[1] != self.output_dim or len(X.chunks[1]) != 1:
            raise ValueError(f"X must be a dask array of shape (n, {self.output_dim}) chunked by rows only; "
                             f"got shape {X.shape} with chunks {X.chunks}")
        return X.map_blocks(function, self._spec(), drop_axis=1, dtype=np.float64)

    def posterior(self, x):
        """The exact posterior of one point.

        Parameters
        ----------
        x : array-like of shape (D,)
            One observation.

        Returns
        -------
        posterior : Posterior
        """
        x = as_real_array(x, "x", allow_bool=True)
        if x.shape != (self.output_dim,):
            raise ValueError(f"x must have shape ({self.output_dim},); got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("x contains NaN or infinite values")
        return Posterior(self._engine().posterior(x), self.regions, model=self, x=x)

    def e_step(self, X):
        """Exact E-step statistics of the rows of X.

        Parameters
        ----------
        X : array-like or dask.array of shape (N, D)
            Observations.

        Returns
        -------
        result : EStepResult
            Log-likelihoods and the posterior region probabilities and moments. A
            ``dask.array`` of rows gives a list of ``dask.delayed`` results instead, one per
            row block (the sparse statistics do not concatenate lazily).
        """
        if is_dask_array(X):
            import dask

            if X.ndim != 2 or X.shape[1] != self.output_dim or len(X.chunks[1]) != 1:
                raise ValueError(f"X must be a dask array of shape (n, {self.output_dim}) chunked by rows only")
            spec = self._spec()
            return [dask.delayed(block_e_step)(block, spec) for block in X.to_delayed().ravel()]
        X = as_points(X, self.output_dim, "X")
        out = self._engine().e_step(X)
        return EStepResult(*out, n_regions=len(self.regions), latent_dim=self.latent_dim)

    def elbo(self, X, q_mean, q_var, return_error=False):
        """Exact evidence lower bound of Gaussian encoders, without sampling.

        For q(z | x_n) = N(q_mean[n], V_n), ELBO_n = E_q[log p(x_n, z) - log q(z)], summed over
        the decoder's regions: on each region the expected log-likelihood is a Gaussian
        quadratic in q's truncated mass, mean and covariance there (closed form for S = 1,
        exact polygons for S = 2, the region integrals' ``rtol`` for S >= 3). Regions are left
        out only where a proven bound keeps their total below 1e-17 of the terms summed.

        Parameters
        ----------
        X : array-like of shape (N, D)
            The data points.
        q_mean : array-like of shape (N, S)
            q's mean for each point.
        q_var : array-like of shape (N, S) or (N, S, S)
            q's diagonal variances (positive), or its full covariances (symmetric positive
            definite).
        return_error : bool, default=False
            Also return an estimate of each value's absolute error.

        Returns
        -------
        elbo : ndarray of shape (N,)
            The exact ELBO of each point.
        error : ndarray of shape (N,)
            Only with ``return_error``: the estimated absolute error (bounds of the regions left
            out, the integrals' relative error times their terms, rounding). Near machine
            precision for S = 1, 2; about ``rtol`` of the terms for S >= 3.
        """
        X = as_points(X, self.output_dim, "X")
        mean, cov = _as_gaussian_q(q_mean, q_var, X.shape[0], self.latent_dim)
        value, error = self._engine().elbo(X, mean, cov)
        return (value, error) if return_error else value

    def posterior_gap(self, X, q_mean, q_var, return_error=False):
        """log p(x_n) - ELBO_n = KL(q(z | x_n) || p(z | x_n)) >= 0, computed directly.

        The KL is summed region by region from log q(z) - log p(z | x) (a Gaussian quadratic on
        each region), not as the difference of two large numbers, so a small gap (1e-6 nats
        and below) keeps its digits. A negative sum within the error estimate is rounding and is
        returned as 0.

        Parameters
        ----------
        X : array-like of shape (N, D)
            The data points.
        q_mean : array-like of shape (N, S)
            q's mean for each point.
        q_var : array-like of shape (N, S) or (N, S, S)
            q's diagonal variances or full covariances, as in :meth:`elbo`.
        return_error : bool, default=False
            Also return an estimate of each gap's absolute error.

        Returns
        -------
        gap : ndarray of shape (N,)
            KL(q || p(z | x_n)) for each point.
        error : ndarray of shape (N,)
            Only with ``return_error``: the estimated absolute error.
        """
        X = as_points(X, self.output_dim, "X")
        mean, cov = _as_gaussian_q(q_mean, q_var, X.shape[0], self.latent_dim)
        value, error = self._engine().posterior_gap(X, mean, cov)
        return (value, error) if return_error else value

    def iwae_bound(self, X, q_mean, q_var, k, n_estimates=100, seed=0):
        """The importance-weighted bound (IWAE) of Gaussian encoders, by Monte Carlo.

        IWAE_k = E[log (1/k) sum_i p(x, z_i) / q(z_i)], z_1..z_k ~ q independently; the log
        weights are exact (decoder forward pass, Gaussian densities). ELBO = IWAE_1 <=
        IWAE_k <= IWAE_{k+1} <= log p(x).

        Parameters
        ----------
        X : array-like of shape (N, D)
            The data points.
        q_mean : array-like of shape (N, S)
            q's mean for each point.
        q_var : array-like of shape (N, S) or (N, S, S)
            q's diagonal variances or full covariances, as in :meth:`elbo`.
        k : int
            Importance samples per estimate (k >= 1).
        n_estimates : int, default=100
            Independent estimates averaged per point (>= 2, for the standard error).
        seed : int, default=0
            Seed of the draws: the same seed gives the same results.

        Returns
        -------
        bound : ndarray of shape (N,)
            The mean of the ``n_estimates`` estimates of IWAE_k for each point.
        standard_error : ndarray of shape (N,)
            Its Monte Carlo standard error.
        """
        X = as_points(X, self.output_dim, "X")
        mean, cov = _as_gaussian_q(q_mean, q_var, X.shape[0], self.latent_dim)
        k = as_count(k, "k")
        n_estimates = as_count(n_estimates, "n_estimates", minimum=2)
        try:
            chol = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            raise ValueError("q_var must hold symmetric positive definite covariances") from None
        n, s, d = X.shape[0], self.latent_dim, self.output_dim
        rng = np.random.default_rng(seed)
        noise = self._noise_var
        log_norm_x = -0.5 * (d * np.log(2 * np.pi) + np.sum(np.log(noise)))
        log_det_half = np.sum(np.log(np.diagonal(chol, axis1=1, axis2=2)), axis=1)
        bound, standard_error = np.empty(n), np.empty(n)
        # Points in chunks of about a million latent draws; the draws come from one stream in
        # point order, so a point's result does not depend on the chunking.
        per_point = n_estimates * k
        chunk = max(1, 1_000_000 // (per_point * max(d, s)))
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            eps = rng.standard_normal((stop - start, n_estimates, k, s))
            Z = mean[start:stop, None, None, :] + np.einsum("nij,nekj->neki", chol[start:stop], eps)
            G = self._decoder(Z.reshape(-1, s)).reshape(stop - start, n_estimates, k, d)
            residual = X[start:stop, None, None, :] - G
            log_px_z = log_norm_x - 0.5 * np.sum(residual**2 / noise, axis=-1)
            log_pz = -0.5 * (s * np.log(2 * np.pi) + np.sum(Z**2, axis=-1))
            log_q = -0.5 * (s * np.log(2 * np.pi) + np.sum(eps**2, axis=-1)) - log_det_half[start:stop, None, None]
            log_w = log_px_z + log_pz - log_q
            top = np.max(log_w, axis=-1, keepdims=True)
            estimates = top[..., 0] + np.log(np.mean(np.exp(log_w - top), axis=-1))
            bound[start:stop] = estimates.mean(axis=1)
            standard_error[start:stop] = estimates.std(axis=1, ddof=1) / np.sqrt(n_estimates)
        return bound, standard_error

    def sample(self, n, seed=None):
        """Draw from the generative model.

        Parameters
        ----------
        n : int
            Number of draws.
        seed : int, numpy Generator or None, default=None
            Seed of the draws.

        Returns
        -------
        X : ndarray of shape (n, D)
            Observations.
        Z : ndarray of shape (n, S)
            Their latent points.
        """
        n = as_count(n, "n", minimum=0)
        rng = np.random.default_rng(seed)
        Z = rng.standard_normal((n, self.latent_dim))
        X = self._decoder(Z) + rng.standard_normal((n, self.output_dim)) * np.sqrt(self._noise_var)
        return X, Z

    def save(self, path, **extra):
        """Write the decoder and noise to an ``.npz`` file (no pickle); :meth:`load` reads it back.

        Parameters
        ----------
        path : str or path-like
            Destination file.
        **extra : array-like
            Arrays stored alongside as ``extra_<name>`` (a training history, say).
        """
        arrays = self._decoder._arrays()
        np.savez(path, noise_var=self._noise_var, isotropic=self._isotropic, **arrays,
                 **{f"extra_{k}": np.asarray(v) for k, v in extra.items()})

    @classmethod
    def load(cls, path, **kwargs):
        """Read a model written by :meth:`save`.

        Parameters
        ----------
        path : str or path-like
            An ``.npz`` file.
        **kwargs
            ``max_regions``, ``rtol``, ``seed`` as in the constructor.

        Returns
        -------
        model : DGN
        """
        with np.load(path, allow_pickle=False) as data:
            noise = data["noise_var"]
            return cls(Decoder._from_arrays(data), float(noise[0]) if bool(data["isotropic"]) else noise, **kwargs)

    def __repr__(self):
        return f"DGN({self._decoder!r}, noise_var={self.noise_var!r})"
