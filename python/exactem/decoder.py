"""The decoder network g: latent z -> output x, a continuous piecewise-affine MLP."""

import numpy as np

from . import _core
from ._validation import as_count, as_points, as_real, as_real_array
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

    Parameters
    ----------
    weights : list of arrays, shape (out, in) each, like ``torch.nn.Linear.weight``.
    biases : list of arrays, shape (out,) each.
    activation : "relu", "leaky_relu", "abs", "linear", or a list with one entry per hidden layer.
    alpha : negative slope of "leaky_relu".
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
            w = as_real_array(w, f"weights[{layer}]")
            b = as_real_array(b, f"biases[{layer}]")
            if w.ndim != 2:
                raise ValueError(f"layer {layer}: weights[{layer}] must be 2-D (out, in); got shape {w.shape}")
            if b.ndim != 1:
                raise ValueError(f"layer {layer}: biases[{layer}] must be 1-D (out,); got shape {b.shape}")
            ws.append(np.ascontiguousarray(w))
            bs.append(np.ascontiguousarray(b))
        n_hidden_layers = len(ws) - 1
        if isinstance(activation, str):
            activations = [activation] * n_hidden_layers
        else:
            activations = list(activation)
            if len(activations) != n_hidden_layers:
                raise ValueError(
                    f"activation lists {len(activations)} entries but the decoder has {n_hidden_layers} hidden layers"
                )
        alpha = as_real(alpha, "alpha")
        slopes = [_slope(a, alpha) for a in activations]
        self._core = _core.DecoderCore(ws, bs, slopes)
        self._weights = ws
        self._biases = bs
        self._activations = activations
        self._alpha = float(alpha)
        self._slopes = slopes
        for arr in ws + bs:
            arr.setflags(write=False)

    @classmethod
    def random(cls, widths, activation="leaky_relu", alpha=0.1, seed=0):
        """A decoder with ``torch.nn.Linear``'s default initialisation: weights and biases
        uniform on ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]``.

        ``widths`` is ``[S, D_1, ..., D_{L-1}, D]``.
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
        return [w.copy() for w in self._weights]

    @property
    def biases(self):
        return [b.copy() for b in self._biases]

    @property
    def activations(self):
        return list(self._activations)

    @property
    def alpha(self):
        return self._alpha

    @property
    def slopes(self):
        """Negative-side slope of each hidden layer's activation."""
        return list(self._slopes)

    @property
    def latent_dim(self):
        return self._weights[0].shape[1]

    @property
    def output_dim(self):
        return self._weights[-1].shape[0]

    @property
    def widths(self):
        return [self.latent_dim] + [w.shape[0] for w in self._weights]

    @property
    def n_hidden(self):
        """Total number of hidden units H."""
        return sum(w.shape[0] for w in self._weights[:-1])

    def __call__(self, Z):
        """Batched forward pass: (n, S) -> (n, D)."""
        return self._core.forward(as_points(Z, self.latent_dim))

    def patterns(self, Z):
        """Activation patterns (n, H): True where a hidden unit's pre-activation is >= 0."""
        return self._core.patterns(as_points(Z, self.latent_dim))

    def regions(self, max_regions=1_000_000):
        """Every region of latent space on which the decoder is affine (a :class:`Partition`).

        Raises :class:`exactem.RegionLimitError` if there are more than ``max_regions``.
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
        np.savez(path, **self._arrays())

    @classmethod
    def load(cls, path):
        with np.load(path, allow_pickle=False) as data:
            return cls._from_arrays(data)

    def __repr__(self):
        acts = set(self._activations)
        act = next(iter(acts)) if len(acts) == 1 else self._activations
        return f"Decoder(widths={self.widths}, activation={act!r}, alpha={self._alpha})"
