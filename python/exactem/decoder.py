"""The decoder network g: latent z -> output x, a continuous piecewise-affine MLP."""

import numpy as np

from . import _core
from ._validation import as_count, as_points
from .partition import Partition

#: Negative-side slope of each activation; leaky_relu takes its slope from ``alpha``.
_SLOPES = {"relu": 0.0, "abs": -1.0, "linear": 1.0}
ACTIVATIONS = ("relu", "leaky_relu", "abs", "linear")


def _slope(name, alpha):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return float(alpha) if name == "leaky_relu" else _SLOPES[name]


class Decoder:
    """An MLP ``g(z) = W_L s(W_{L-1} ... s(W_1 z + b_1) ... + b_{L-1}) + b_L``.

    Every activation ``s`` is continuous and piecewise linear with two slopes (``u`` for
    ``u >= 0``, ``slope * u`` below), so ``g`` is affine on each region of a finite partition
    of latent space (:meth:`regions`). The decoder is immutable: it keeps its own read-only
    copies of the arrays it is given.

    Parameters
    ----------
    weights : list of array-like
        One matrix of shape (out, in) per layer, like ``torch.nn.Linear.weight``.
    biases : list of array-like
        One vector of shape (out,) per layer.
    activation : {"leaky_relu", "relu", "abs", "linear"} or list of str, default="leaky_relu"
        Activation of every hidden layer, or one entry per hidden layer.
    alpha : float, default=0.1
        Negative-side slope of ``"leaky_relu"``.

    Attributes
    ----------
    weights, biases : list of ndarray
        Copies of the parameters.
    widths : list of int
        ``[S, D_1, ..., D]``: latent, hidden and output widths.
    latent_dim, output_dim, n_hidden : int
        ``S``, ``D`` and the total number of hidden units.

    Examples
    --------
    >>> import numpy as np
    >>> from exactem import Decoder
    >>> dec = Decoder([np.array([[1.0], [-1.0]]), np.array([[1.0, 1.0]])], [np.zeros(2), np.zeros(1)],
    ...               activation="relu")
    >>> dec(np.array([[-2.0], [3.0]]))   # g(z) = |z|
    array([[2.],
           [3.]])
    >>> len(dec.regions())
    2
    """

    def __init__(self, weights, biases, activation="leaky_relu", alpha=0.1):
        if not isinstance(weights, (list, tuple)) or not isinstance(biases, (list, tuple)):
            raise ValueError("weights and biases must be lists of arrays, one per layer")
        if len(weights) == 0:
            raise ValueError("the decoder needs at least one layer (weights is empty)")
        if len(biases) != len(weights):
            raise ValueError(f"got {len(weights)} weight matrices but {len(biases)} bias vectors; give one per layer")
        ws, bs = [], []
        for layer, (w, b) in enumerate(zip(weights, biases)):
            w = np.asarray(w, dtype=np.float64)
            b = np.asarray(b, dtype=np.float64)
            if w.ndim != 2:
                raise ValueError(f"layer {layer}: weights[{layer}] must be 2-D (out, in); got shape {w.shape}")
            if b.ndim != 1:
                raise ValueError(f"layer {layer}: biases[{layer}] must be 1-D (out,); got shape {b.shape}")
            # Own copies: the arrays are made read-only below, which must not touch the caller's.
            ws.append(np.array(w, dtype=np.float64, order="C", copy=True))
            bs.append(np.array(b, dtype=np.float64, order="C", copy=True))
        n_hidden_layers = len(ws) - 1
        if isinstance(activation, str):
            activations = [activation] * n_hidden_layers
        else:
            activations = list(activation)
            if len(activations) != n_hidden_layers:
                raise ValueError(
                    f"activation lists {len(activations)} entries but the decoder has {n_hidden_layers} hidden layers"
                )
        if not np.isfinite(alpha):
            raise ValueError(f"alpha must be finite; got {alpha}")
        slopes = [_slope(a, alpha) for a in activations]
        self._core = _core.DecoderCore(ws, bs, slopes)
        self._weights = ws
        self._biases = bs
        self._activations = activations
        self._alpha = float(alpha)
        self._slopes = slopes
        for arr in ws + bs:
            arr.setflags(write=False)

    def __getstate__(self):
        # The Rust core is not picklable; the arrays define the decoder and rebuild it.
        return {"weights": self._weights, "biases": self._biases, "activation": self._activations,
                "alpha": self._alpha}

    def __setstate__(self, state):
        self.__init__(list(state["weights"]), list(state["biases"]), activation=list(state["activation"]),
                      alpha=state["alpha"])

    @classmethod
    def random(cls, widths, activation="leaky_relu", alpha=0.1, seed=0):
        """A decoder with ``torch.nn.Linear``'s default initialisation.

        Weights and biases are uniform on ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]``.

        Parameters
        ----------
        widths : list of int
            ``[S, D_1, ..., D_{L-1}, D]``: latent dimension, hidden widths, output dimension.
        activation : str or list of str, default="leaky_relu"
            As in :class:`Decoder`.
        alpha : float, default=0.1
            Negative-side slope of ``"leaky_relu"``.
        seed : int or numpy Generator, default=0
            Seed of the draws.

        Returns
        -------
        decoder : Decoder

        Examples
        --------
        >>> from exactem import Decoder
        >>> Decoder.random([2, 8, 3], seed=0)
        Decoder(widths=[2, 8, 3], activation='leaky_relu', alpha=0.1)
        """
        widths = [as_count(w, "every width") for w in widths]
        if len(widths) < 2:
            raise ValueError(f"widths must list at least the latent and output dimensions; got {widths}")
        rng = np.random.default_rng(seed)
        weights, biases = [], []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            bound = 1.0 / np.sqrt(fan_in)
            weights.append(rng.uniform(-bound, bound, size=(fan_out, fan_in)))
            biases.append(rng.uniform(-bound, bound, size=fan_out))
        return cls(weights, biases, activation=activation, alpha=alpha)

    @property
    def weights(self):
        """list of ndarray: copies of the weight matrices, (out, in) each."""
        return [w.copy() for w in self._weights]

    @property
    def biases(self):
        """list of ndarray: copies of the bias vectors."""
        return [b.copy() for b in self._biases]

    @property
    def activations(self):
        """list of str: the activation of each hidden layer."""
        return list(self._activations)

    @property
    def alpha(self):
        """float: negative-side slope of "leaky_relu"."""
        return self._alpha

    @property
    def slopes(self):
        """Negative-side slope of each hidden layer's activation."""
        return list(self._slopes)

    @property
    def latent_dim(self):
        """int: the latent dimension S."""
        return self._weights[0].shape[1]

    @property
    def output_dim(self):
        """int: the output dimension D."""
        return self._weights[-1].shape[0]

    @property
    def widths(self):
        """list of int: ``[S, D_1, ..., D]``."""
        return [self.latent_dim] + [w.shape[0] for w in self._weights]

    @property
    def n_hidden(self):
        """Total number of hidden units H."""
        return sum(w.shape[0] for w in self._weights[:-1])

    def __call__(self, Z):
        """Batched forward pass.

        Parameters
        ----------
        Z : array-like of shape (n, S)
            Latent points.

        Returns
        -------
        X : ndarray of shape (n, D)
            ``g(z)`` of each row.
        """
        return self._core.forward(as_points(Z, self.latent_dim))

    def patterns(self, Z):
        """Activation patterns of latent points.

        Parameters
        ----------
        Z : array-like of shape (n, S)
            Latent points.

        Returns
        -------
        patterns : ndarray of shape (n, H), bool
            True where a hidden unit's pre-activation is >= 0.
        """
        return self._core.patterns(as_points(Z, self.latent_dim))

    def regions(self, max_regions=1_000_000):
        """Every region of latent space on which the decoder is affine, exactly.

        Parameters
        ----------
        max_regions : int, default=1_000_000
            Largest number of regions to enumerate.

        Returns
        -------
        partition : Partition

        Raises
        ------
        exactem.RegionLimitError
            If there are more than ``max_regions`` regions (raised during the enumeration,
            before memory runs out).
        """
        max_regions = as_count(max_regions, "max_regions")
        return Partition(self._core.regions(max_regions), self)

    def _arrays(self):
        arrays = {f"weight_{i}": w for i, w in enumerate(self._weights)}
        arrays.update({f"bias_{i}": b for i, b in enumerate(self._biases)})
        return dict(activations=np.array(self._activations), alpha=self._alpha, **arrays)

    @classmethod
    def _from_arrays(cls, data):
        n = sum(1 for k in data.files if k.startswith("weight_"))
        weights = [data[f"weight_{i}"] for i in range(n)]
        biases = [data[f"bias_{i}"] for i in range(n)]
        activations = [str(a) for a in data["activations"]]
        return cls(weights, biases, activation=activations, alpha=float(data["alpha"]))

    def save(self, path):
        """Write the decoder to an ``.npz`` file (no pickle); :meth:`load` reads it back.

        Parameters
        ----------
        path : str or path-like
            Destination file.
        """
        np.savez(path, **self._arrays())

    @classmethod
    def load(cls, path):
        """Read a decoder written by :meth:`save`.

        Parameters
        ----------
        path : str or path-like
            An ``.npz`` file.

        Returns
        -------
        decoder : Decoder
        """
        with np.load(path, allow_pickle=False) as data:
            return cls._from_arrays(data)

    def __repr__(self):
        acts = set(self._activations)
        act = next(iter(acts)) if len(acts) == 1 else self._activations
        return f"Decoder(widths={self.widths}, activation={act!r}, alpha={self._alpha})"
