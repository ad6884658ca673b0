"""The decoder network g: latent z -> output x, a continuous piecewise-affine MLP."""

import numpy as np

from . import _core
from ._validation import as_count, as_points, as_real, as_real_array, as_seed
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
            w = as_real_array(w, f"weights[{layer}]")
            b = as_real_array(b, f"biases[{layer}]")
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
            Seed of the draws (an integer in ``[0, 2**64)``; a Generator gives one): PCG64 in
            the Rust engine, the same initialisation as the engine's own tests and benchmarks.

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
        if isinstance(seed, np.random.Generator):
            seed = int(seed.integers(2**64, dtype=np.uint64))
        weights, biases = _core.random_parameters(widths, as_seed(seed))
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

    # -- PyTorch state dicts ----------------------------------------------------------------------

    @classmethod
    def from_state_dict(cls, state, activation="leaky_relu", alpha=0.1, prefix=""):
        """The decoder held in a PyTorch ``nn.Sequential`` state dict.

        The layout is that of ``nn.Sequential(Linear, act, Linear, act, ..., Linear)``: the Linear
        layers sit at the even indices 0, 2, 4, ... with keys ``"0.weight"``, ``"0.bias"``,
        ``"2.weight"``, ...; the activations at the odd indices have no parameters, so they are not
        in the dict and are given by ``activation`` and ``alpha`` instead. The last Linear layer is
        the output layer and is affine (a trailing activation module would leave no trace in the
        state dict and is not represented). Weights have shape (out, in), as in ``nn.Linear``;
        every layer must have a bias.

        Parameters
        ----------
        state : mapping
            Key -> array. Any value ``numpy.asarray`` accepts: numpy arrays, nested lists, or
            tensors converted with ``t.detach().cpu().numpy()``. Values are converted to float64
            (exact for float32 and float64 inputs).
        activation : str or list of str
            As in :class:`Decoder`: one name for every hidden layer or one per hidden layer.
        alpha : float
            Negative slope of "leaky_relu" (``nn.LeakyReLU(negative_slope=alpha)``).
        prefix : str
            The submodule holding the decoder in a larger model's state dict, e.g. ``"decoder"``
            for keys ``"decoder.0.weight"``, ... (a trailing dot is optional). Keys outside the
            prefix are ignored.

        Returns
        -------
        Decoder

        Raises
        ------
        ValueError
            When no key carries the prefix, a key under the prefix is not ``"<even index>.weight"``
            or ``"<even index>.bias"``, a layer misses its weight or bias, the layer indices are
            not 0, 2, 4, ... without gaps, or the shapes do not chain.

        Examples
        --------
        >>> import exactem
        >>> dec = exactem.Decoder.random([1, 4, 2], seed=0)
        >>> state = dec.to_state_dict(prefix="decoder")
        >>> sorted(state)
        ['decoder.0.bias', 'decoder.0.weight', 'decoder.2.bias', 'decoder.2.weight']
        >>> back = exactem.Decoder.from_state_dict(state, prefix="decoder")
        >>> bool((back.weights[1] == dec.weights[1]).all())
        True
        """
        import re

        if not hasattr(state, "keys") or not hasattr(state, "__getitem__"):
            raise ValueError(f"state must be a mapping of key -> array (a state dict); got {type(state).__name__}")
        if not isinstance(prefix, str):
            raise ValueError(f"prefix must be a string; got {prefix!r}")
        if prefix and not prefix.endswith("."):
            prefix += "."
        keys = [k for k in state.keys() if isinstance(k, str) and k.startswith(prefix)]
        if not keys:
            seen = ", ".join(repr(k) for k in list(state.keys())[:6])
            raise ValueError(f"no key of the state dict starts with prefix {prefix!r} (keys seen: {seen or 'none'}); "
                             f"pass prefix= the submodule name of the decoder, e.g. prefix='decoder'")
        layers = {}
        pattern = re.compile(r"(\d+)\.(weight|bias)")
        for key in keys:
            match = pattern.fullmatch(key[len(prefix):])
            if match is None:
                nested = re.fullmatch(r"(.+)\.\d+\.(weight|bias)", key)
                hint = f"; for a submodule's keys pass prefix={nested.group(1)!r}" if nested else ""
                raise ValueError(f"unexpected key {key!r}: expected '{prefix}<index>.weight' or '{prefix}<index>.bias' "
                                 f"of an nn.Sequential of Linear layers{hint}")
            index, kind = int(match.group(1)), match.group(2)
            if index % 2:
                raise ValueError(f"key {key!r} puts a layer with parameters at the odd index {index}; the layout "
                                 f"is nn.Sequential(Linear, activation, Linear, ...) with Linear layers at 0, 2, 4, ...")
            layers.setdefault(index, {})[kind] = key
        indices = sorted(layers)
        expected = list(range(0, 2 * len(indices), 2))
        if indices != expected:
            raise ValueError(f"the Linear layers sit at indices {indices}; expected {expected} (no gaps)")
        weights, biases = [], []
        for index in indices:
            for kind in ("weight", "bias"):
                if kind not in layers[index]:
                    raise ValueError(f"missing key '{prefix}{index}.{kind}' (every Linear layer needs a weight and a bias)")
            w_key, b_key = layers[index]["weight"], layers[index]["bias"]
            try:
                w = np.asarray(state[w_key], dtype=np.float64)
                b = np.asarray(state[b_key], dtype=np.float64)
            except (TypeError, ValueError, RuntimeError) as err:
                raise ValueError(f"cannot read {w_key!r}/{b_key!r} as float64 arrays ({err}); convert tensors with "
                                 f"t.detach().cpu().numpy()") from None
            if w.ndim != 2:
                raise ValueError(f"{w_key!r} must be 2-D (out, in); got shape {w.shape}")
            if b.shape != (w.shape[0],):
                raise ValueError(f"{b_key!r} must have shape ({w.shape[0]},) to match {w_key!r} of shape {w.shape}; "
                                 f"got {b.shape}")
            if weights and w.shape[1] != weights[-1].shape[0]:
                prev = f"{prefix}{index - 2}.weight"
                raise ValueError(f"{w_key!r} has shape {w.shape}: its input width {w.shape[1]} must equal the "
                                 f"output width {weights[-1].shape[0]} of {prev!r}")
            weights.append(w)
            biases.append(b)
        return cls(weights, biases, activation=activation, alpha=alpha)

    def to_state_dict(self, prefix=""):
        """The parameters in the key layout of a PyTorch ``nn.Sequential`` (see
        :meth:`from_state_dict`): ``{"0.weight": (out, in), "0.bias": (out,), "2.weight": ...}``.

        Parameters
        ----------
        prefix : str
            Prepended to every key (``"decoder"`` gives ``"decoder.0.weight"``, ...).

        Returns
        -------
        dict of str -> float64 numpy array (copies). ``torch.nn.Sequential.load_state_dict``
        takes it after ``{k: torch.from_numpy(v) for k, v in ...}`` (float64 tensors; call
        ``.float()`` on the module or the tensors for float32).
        """
        if not isinstance(prefix, str):
            raise ValueError(f"prefix must be a string; got {prefix!r}")
        if prefix and not prefix.endswith("."):
            prefix += "."
        state = {}
        for layer, (w, b) in enumerate(zip(self._weights, self._biases)):
            state[f"{prefix}{2 * layer}.weight"] = w.copy()
            state[f"{prefix}{2 * layer}.bias"] = b.copy()
        return state

    def __repr__(self):
        acts = set(self._activations)
        act = next(iter(acts)) if len(acts) == 1 else self._activations
        return f"Decoder(widths={self.widths}, activation={act!r}, alpha={self._alpha})"
