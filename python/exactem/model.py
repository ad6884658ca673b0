"""The deep generative network z ~ N(0, I), x | z ~ N(g(z), Psi) and its exact inference."""

import numpy as np
import scipy.sparse

from . import _core
from ._validation import as_count, as_points, as_real, as_real_array, as_seed
from .decoder import Decoder


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


class Posterior:
    """The exact posterior p(z | x) of one point: a mixture over regions of truncated Gaussians."""

    def __init__(self, core, partition):
        self._core = core
        self.partition = partition

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
        """(n,) log p(z | x) at latent points (n, S)."""
        return self._core.logpdf(as_points(Z, self.partition.latent_dim))

    def pdf(self, Z):
        return np.exp(self.logpdf(Z))

    def map(self):
        """(S,) the most probable latent point."""
        return self._core.map()

    def sample(self, n, seed=0):
        """(n, S) exact independent samples (a region by its weight, then the truncated Gaussian in it)."""
        n = as_count(n, "n", minimum=0)
        return self._core.sample(n, as_seed(seed))


class EStepResult:
    """Exact E-step statistics of a batch.

    ``m0`` is a sparse (N, R) matrix of posterior region probabilities (``.toarray()`` for the
    dense one). ``m1`` (nnz, S) and ``m2`` (nnz, S, S) hold E[z 1_q | x_n] and
    E[z z^T 1_q | x_n] for the stored (n, q) pairs, in the order of ``m0.indices``.
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
        """(N, S) E[z | x_n] = sum_q m1."""
        n, points = self.m0.shape[0], self.points
        return np.stack([np.bincount(points, weights=self.m1[:, j], minlength=n) for j in range(self.m1.shape[1])], axis=1)


class DGN:
    """z ~ N(0, I_S), x | z ~ N(decoder(z), Psi), with Psi = noise_var * I or diag(noise_var).

    Exact inference: ``log_likelihood``, ``posterior``, ``e_step``. ``rtol`` is the relative
    accuracy of the region integrals where they are not closed-form: adaptive quadrature over
    exact slices for S = 3, quasi-Monte Carlo (randomised by ``seed``) for S >= 4. S = 1, 2 are
    exact to machine precision.
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

    @property
    def decoder(self):
        return self._decoder

    @property
    def noise_var(self):
        """A float for isotropic noise, else the (D,) diagonal."""
        return float(self._noise_var[0]) if self._isotropic else self._noise_var.copy()

    @property
    def latent_dim(self):
        return self._decoder.latent_dim

    @property
    def output_dim(self):
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
        """(N,) exact log p(x_n)."""
        return self._engine().log_likelihood(as_points(X, self.output_dim, "X"))

    def posterior(self, x):
        """The exact posterior of one point x of shape (D,)."""
        x = as_real_array(x, "x", allow_bool=True)
        if x.shape != (self.output_dim,):
            raise ValueError(f"x must have shape ({self.output_dim},); got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("x contains NaN or infinite values")
        return Posterior(self._engine().posterior(x), self.regions)

    def e_step(self, X):
        """Exact E-step statistics of the rows of X (N, D); see :class:`EStepResult`."""
        X = as_points(X, self.output_dim, "X")
        out = self._engine().e_step(X)
        return EStepResult(*out, n_regions=len(self.regions), latent_dim=self.latent_dim)

    def sample(self, n, seed=None):
        """(X, Z): n draws from the generative model."""
        n = as_count(n, "n", minimum=0)
        rng = np.random.default_rng(seed)
        Z = rng.standard_normal((n, self.latent_dim))
        X = self._decoder(Z) + rng.standard_normal((n, self.output_dim)) * np.sqrt(self._noise_var)
        return X, Z

    def save(self, path, **extra):
        """Writes the decoder and noise to an .npz file; ``extra`` arrays (a training history, say)
        are stored alongside. :meth:`load` reads it back."""
        arrays = self._decoder._arrays()
        np.savez(path, noise_var=self._noise_var, isotropic=self._isotropic, **arrays,
                 **{f"extra_{k}": np.asarray(v) for k, v in extra.items()})

    @classmethod
    def load(cls, path, **kwargs):
        """The model saved by :meth:`save`; ``kwargs`` as in the constructor."""
        with np.load(path, allow_pickle=False) as data:
            noise = data["noise_var"]
            return cls(Decoder._from_arrays(data), float(noise[0]) if bool(data["isotropic"]) else noise, **kwargs)

    def __repr__(self):
        return f"DGN({self._decoder!r}, noise_var={self.noise_var!r})"
