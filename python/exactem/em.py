"""Exact EM for deep generative networks (docs/design.md §6).

The E-step is exact (:meth:`DGN.e_step`). With the E-step's activation masks frozen, the decoder
is affine in each layer's parameters, so every layer has a closed-form update; the layers are
updated in turn (block-coordinate ascent on the frozen-mask objective), then the noise. Because
regions move once the parameters change, the estimator computes each proposal's exact
log-likelihood and, if it dropped, solves the M-step again with a Marquardt damping term
(``damping`` here), which pulls the proposal toward the previous parameters.
"""

import functools

import numpy as np
import scipy.linalg
import scipy.sparse


class RegionStats:
    """Per-region sums of the E-step statistics: all the M-step needs, independent of N.

    Parameters
    ----------
    es : EStepResult
        The exact E-step of the data (:meth:`DGN.e_step`).
    X : ndarray of shape (N, D)
        The data.
    n_regions : int
        Number of regions R of the model.

    Attributes
    ----------
    s0 : ndarray of shape (R,)
        ``sum_n P(q | x_n)``.
    s1 : ndarray of shape (R, S)
        ``sum_n E[z 1_q | x_n]``.
    s2 : ndarray of shape (R, S, S)
        ``sum_n E[z z^T 1_q | x_n]``.
    sx0 : ndarray of shape (R, D)
        ``sum_n x_n P(q | x_n)``.
    sx1 : ndarray of shape (R, D, S)
        ``sum_n x_n E[z 1_q | x_n]^T``.
    sum_x2 : ndarray of shape (D,)
        ``sum_n x_n^2`` per coordinate.
    n_points, dim : int
        N and D.
    centre : ndarray of shape (D,)
        The origin of the sums over the data: they are of ``x - centre`` (default: the data's
        mean). The frozen objective expands ``|x - A z - b|^2`` into sums that lose ``eps``
        times ``|x|^2``, which for data offset by 1e8 was all of the residual. The functions
        below take the decoder in the data's frame and move its output bias into this one
        (:func:`_in_frame`): a translation, exact algebra, so the updates are those of the data
        as given. Sums of several row blocks must share one centre.

    Examples
    --------
    >>> import exactem
    >>> from exactem.em import RegionStats
    >>> X = exactem.datasets.wave(100, seed=0)
    >>> model = exactem.DGN(exactem.Decoder.random([1, 4, 2], seed=0), 0.1)
    >>> stats = RegionStats(model.e_step(X), X, len(model.regions))
    >>> round(float(stats.s0.sum()), 9)   # every point's region probabilities sum to one
    100.0
    """

    def __init__(self, es, X, n_regions, centre=None):
        S = es.m1.shape[1]
        q = es.regions
        self.n_points, self.dim = X.shape
        if centre is None:
            centre = X.mean(axis=0) if len(X) else np.zeros(X.shape[1])
        self.centre = np.asarray(centre, dtype=np.float64)
        X = X - self.centre
        # Sums by region as products with sparse (N, R) matrices laid out as m0 (a statistic
        # per stored (point, region) pair): np.add.at scattered one pair at a time, and took six
        # times the E-step's own time at S = 1 (BENCHMARKS.md).
        def by_region(values):
            return scipy.sparse.csr_matrix((values, es.m0.indices, es.m0.indptr), shape=es.m0.shape).T

        m1 = es.m1.reshape(-1, S)
        m2 = es.m2.reshape(-1, S * S)
        self.s0 = np.bincount(q, weights=es.m0.data, minlength=n_regions)
        self.s1 = np.stack([np.bincount(q, weights=m1[:, j], minlength=n_regions) for j in range(S)], axis=1)
        self.s2 = np.stack([np.bincount(q, weights=m2[:, k], minlength=n_regions) for k in range(S * S)], axis=1).reshape(n_regions, S, S)
        self.sx0 = np.asarray(by_region(es.m0.data) @ X)
        self.sx1 = np.stack([np.asarray(by_region(m1[:, j]) @ X) for j in range(S)], axis=2)
        self.sum_x2 = (X * X).sum(axis=0)  # sum over points of x^2, per coordinate

    _SUMS = ("s0", "s1", "s2", "sx0", "sx1", "sum_x2")

    @classmethod
    def by_blocks(cls, model, X, centre=None, block_rows=None):
        """The exact E-step of ``model`` on the rows of X, reduced to these sums as it goes.

        The engine takes ``block_rows`` rows at a time (a copy of those rows only), computes
        their E-step, adds its statistics to per-region sums and drops it: memory is that of
        one block and the sums, whatever N, and no per-(point, region) statistic reaches
        Python. The sums are those of ``RegionStats(model.e_step(X), X, ...)`` up to the order
        of the additions (each value a sum in one fixed order, whatever the thread count).

        Parameters
        ----------
        model : DGN
            The model whose E-step is taken.
        X : array-like of shape (N, D)
            The data.
        centre : array-like of shape (D,), optional
            The origin of the sums over the data (default: the data's mean), as in the class.
        block_rows : int, optional
            Rows per block (default: about 32 MB of rows and statistics, from the shapes only,
            so the bits of the sums do not depend on the machine).

        Returns
        -------
        stats : RegionStats
            The per-region sums.
        log_likelihood : ndarray of shape (N,)
            Exact ``log p(x_n)`` of each row.

        Examples
        --------
        >>> import numpy as np
        >>> import exactem
        >>> from exactem.em import RegionStats
        >>> X = exactem.datasets.wave(100, seed=0)
        >>> model = exactem.DGN(exactem.Decoder.random([1, 4, 2], seed=0), 0.1)
        >>> stats, log_p = RegionStats.by_blocks(model, X, block_rows=16)
        >>> bool(np.isclose(stats.s0.sum(), 100.0)), log_p.shape
        (True, (100,))
        """
        from ._validation import as_count, as_points

        X = as_points(X, model.output_dim, "X")
        if block_rows is not None:
            block_rows = as_count(block_rows, "block_rows")
        if centre is None:
            centre = X.mean(axis=0) if len(X) else np.zeros(X.shape[1])
        centre = np.ascontiguousarray(centre, dtype=np.float64)
        if centre.shape != (X.shape[1],):
            raise ValueError(f"centre must have shape ({X.shape[1]},); got {centre.shape}")
        log_likelihood, s0, s1, s2, sx0, sx1, sum_x2 = model._engine().e_step_sums(X, centre, block_rows)
        R, S, D = len(model.regions), model.latent_dim, X.shape[1]
        stats = cls.__new__(cls)
        stats.n_points, stats.dim, stats.centre = len(X), D, centre
        stats.s0, stats.s1, stats.s2 = s0, s1.reshape(R, S), s2.reshape(R, S, S)
        stats.sx0, stats.sx1, stats.sum_x2 = sx0.reshape(R, D), sx1.reshape(R, D, S), sum_x2
        return stats, log_likelihood

    @classmethod
    def combine(cls, parts):
        """The sums of several row blocks' statistics (same regions), added in the order given:
        the same blocks in the same order give the same bits wherever they were computed."""
        parts = list(parts)
        if any(not np.array_equal(part.centre, parts[0].centre) for part in parts):
            raise ValueError("RegionStats.combine needs sums about one centre (RegionStats(..., centre=c))")
        total = cls.__new__(cls)
        total.centre = parts[0].centre
        for name in cls._SUMS:
            value = getattr(parts[0], name).copy()
            for part in parts[1:]:
                value += getattr(part, name)
            setattr(total, name, value)
        total.n_points = sum(part.n_points for part in parts)
        total.dim = parts[0].dim
        return total

    def restricted(self, keep):
        """These sums for the regions where ``keep`` (a boolean mask over regions) is true."""
        part = self.__class__.__new__(self.__class__)
        part.__dict__.update(self.__dict__)
        for name in ("s0", "s1", "s2", "sx0", "sx1"):
            setattr(part, name, getattr(self, name)[keep])
        return part

    def moment_matrix(self):
        """(R, S+1, S+1): E[[z; 1][z; 1]^T 1_q] summed over points."""
        R, S = self.s1.shape
        K = np.empty((R, S + 1, S + 1))
        K[:, :S, :S] = self.s2
        K[:, :S, S] = self.s1
        K[:, S, :S] = self.s1
        K[:, S, S] = self.s0
        return K

    def cross_matrix(self):
        """(R, D, S+1): sum_n x_n E[[z; 1] 1_q]^T."""
        return np.concatenate([self.sx1, self.sx0[:, :, None]], axis=2)


def _in_frame(biases, stats):
    """The biases with the output layer's moved into the frame of ``stats`` (x - centre)."""
    return [*biases[:-1], biases[-1] - stats.centre]


def layer_factors(decoder, patterns):
    """Per region and hidden layer, the activation slopes: a list of (R, D_l) arrays."""
    factors, offset = [], 0
    for w, slope in zip(decoder.weights[:-1], decoder.slopes):
        on = patterns[:, offset:offset + w.shape[0]]
        factors.append(np.where(on, 1.0, slope))
        offset += w.shape[0]
    return factors


def frozen_maps(weights, biases, factors, layer):
    """For every region, with the activation pattern frozen: the post-activation of the layer below
    `layer` as ``E z + f`` (E: (R, D_{l-1}, S), f: (R, D_{l-1})), and the output as ``F u + r`` in
    terms of `layer`'s pre-activation u (F: (R, D, D_l), r: (R, D))."""
    E, f = _layer_inputs(weights, biases, factors, upto=layer)[layer]
    D_l = weights[layer].shape[0]
    F = np.broadcast_to(np.eye(D_l), (E.shape[0], D_l, D_l))
    r = np.zeros((E.shape[0], D_l))
    for k in range(layer + 1, len(weights)):
        # u_k = W_k s(u_{k-1}) + b_k with s frozen: compose from the layer upward.
        step = weights[k] * factors[k - 1][:, None, :]
        F = step @ F
        r = np.einsum("rij,rj->ri", step, r) + biases[k]
    return E, f, F, r


def _layer_inputs(weights, biases, factors, upto=None):
    """The input of every layer up to ``upto`` (default: all) as ``E z + f`` per region, composed
    upward from ``E = I``, ``f = 0`` at the latent layer: a list of (E, f)."""
    R = factors[0].shape[0] if factors else 1
    S = weights[0].shape[1]
    E = np.broadcast_to(np.eye(S), (R, S, S))
    f = np.zeros((R, S))
    inputs = [(E, f)]
    for k in range(len(weights) - 1 if upto is None else upto):
        E = factors[k][:, :, None] * (weights[k] @ E)
        f = factors[k] * (f @ weights[k].T + biases[k])
        inputs.append((E, f))
    return inputs


def frozen_objective(weights, biases, factors, noise_var, stats):
    """The frozen-mask expected complete-data log-likelihood, up to the prior's constant."""
    psi = np.broadcast_to(noise_var, (stats.dim,))
    res = _expected_residuals(weights, biases, factors, stats)
    return float(-0.5 * (stats.n_points * np.sum(np.log(2 * np.pi * psi)) + np.sum(res / psi)))


def _expected_residuals(weights, biases, factors, stats):
    """Per output coordinate: sum_{n,q} E[(x_n - A_q z - b_q)^2 1_q], with A_q, b_q the output
    map of region q with its activation pattern frozen."""
    biases = _in_frame(biases, stats)
    E, f = _layer_inputs(weights, biases, factors)[-1]
    A = weights[-1] @ E
    b = f @ weights[-1].T + biases[-1]
    res = stats.sum_x2.copy()
    res -= 2 * np.einsum("rd,rd->d", b, stats.sx0)
    res += np.einsum("r,rd->d", stats.s0, b * b)
    res -= 2 * np.einsum("rds,rds->d", A, stats.sx1)
    res += 2 * np.einsum("rd,rds,rs->d", b, A, stats.s1)
    res += np.einsum("rds,rst,rdt->d", A, stats.s2, A)
    return res


class _FormedOutputMap:
    """The output as ``F_q u + r_q`` in a hidden layer's pre-activation ``u``, with ``F_q``
    (R, D, D_l) and ``r_q`` (R, D) formed: the form to carry where the output is narrower than
    the layers (the operator then applies ``C_q`` through ``F_q``)."""

    def __init__(self, F, r, psi):
        self.F, self.r, self.psi = F, r, psi
        self._C = None

    @classmethod
    def of_output_layer(cls, weight, bias, slopes, psi):
        """The map of the last hidden layer's pre-activation: ``W_L diag(s) u + b_L``."""
        step = weight * slopes[:, None, :]
        return cls(step, np.broadcast_to(bias, (step.shape[0], len(bias))), psi)

    def below(self, weight, bias, slopes):
        """The map one layer down, through ``u_k = W_k s(u_{k-1}) + b_k`` with ``s`` frozen."""
        step = weight * slopes[:, None, :]
        return _FormedOutputMap(self.F @ step, self.F @ bias + self.r, self.psi)

    def projected(self, cross, k):
        """``F_q^T Psi^-1 (X_q - r_q k_q^T)``, (R, D_l, S+1), for cross moments X (R, D, S+1)."""
        residual = cross - self.r[:, :, None] * k[:, None, :]
        return np.swapaxes(self.F, 1, 2) @ (residual / self.psi[None, :, None])

    @property
    def C(self):
        """``C_q = F_q^T Psi^-1 F_q``, (R, D_l, D_l), formed at the first ask."""
        if self._C is None:
            scaled = self.F / np.sqrt(self.psi)[None, :, None]
            self._C = np.swapaxes(scaled, 1, 2) @ scaled
        return self._C

    def curvature_diagonal(self):
        if self._C is not None:
            return np.einsum("rii->ri", self._C)
        return np.einsum("rdi,rdi,d->ri", self.F, self.F, 1.0 / self.psi)

    def operator(self, M, K):
        narrow = self.F.shape[1] < self.F.shape[2]
        return _KroneckerOperator(None if narrow else self.C, self.F, M, K, self.psi)


class _CurvatureOutputMap:
    """The same output map carried only through what a layer's system needs of it, never
    forming ``F_q`` (R, D, D_l): ``C_q = F_q^T Psi^-1 F_q`` as ``diag(s_q) B_g diag(s_q)`` with
    ``B_g`` shared by the regions of one activation pattern above the layer, ``v_q = F_q^T
    Psi^-1 r_q`` and ``Y_q = F_q^T Psi^-1 X_q`` (X_q the region's data cross moments). One layer
    down costs O(G D_l^3 + R D_l^2) (G distinct patterns above) instead of F's O(R D D_l^2):
    the form to carry where the output is as wide as the layers or wider (digits, images)."""

    def __init__(self, base, group, slopes, v, Y, psi):
        self.base, self.group, self.slopes, self.v, self.Y, self.psi = base, group, slopes, v, Y, psi
        self._C = None

    @classmethod
    def of_output_layer(cls, weight, bias, slopes, psi, cross):
        inverse_psi = 1.0 / psi
        base = (weight.T * inverse_psi) @ weight
        group = np.zeros(len(slopes), dtype=np.intp)
        v = slopes * (weight.T @ (inverse_psi * bias))[None, :]
        Y = slopes[:, :, None] * _times_each(weight * inverse_psi[:, None], cross)
        return cls(base[None], group, slopes, v, Y, psi)

    def below(self, weight, bias, slopes):
        # The distinct C_q of this layer, one per (pattern above, slopes here) ...
        keys = np.concatenate([self.group[:, None].astype(float), self.slopes], axis=1)
        distinct, first, group = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        group = group.ravel()
        s_first = self.slopes[first]
        C_distinct = s_first[:, :, None] * self.base[self.group[first]] * s_first[:, None, :]
        # ... carried one layer down: W^T C W, shared again by the regions of that pattern.
        base = np.swapaxes(weight, 0, 1)[None] @ C_distinct @ weight[None]
        Cb = np.einsum("gij,j->gi", C_distinct, bias)[group]
        v = slopes * ((Cb + self.v) @ weight)
        Y = slopes[:, :, None] * _times_each(weight, self.Y)
        return _CurvatureOutputMap(base, group, slopes, v, Y, self.psi)

    def projected(self, cross, k):
        return self.Y - self.v[:, :, None] * k[:, None, :]

    @property
    def C(self):
        if self._C is None:
            self._C = self.slopes[:, :, None] * self.base[self.group] * self.slopes[:, None, :]
        return self._C

    def curvature_diagonal(self):
        return self.slopes**2 * np.einsum("gii->gi", self.base)[self.group]

    def operator(self, M, K):
        return _KroneckerOperator(self.C, None, M, K, self.psi)


class _LayerSystem:
    """The frozen-mask normal equations of one layer in the factors they are applied from
    (docs/design.md, the M-step): ``sum_q C_q Theta T_q = rhs`` with ``T_q = M_q K_q M_q^T`` and
    ``C_q = F_q^T Psi^-1 F_q``, where ``M_q`` (R, D_{l-1}+1, S+1) maps ``[z; 1]`` to the layer's
    input ``[a; 1]``, ``K_q`` is the region's moment matrix and ``F_q`` the output's map of the
    layer's pre-activation: ``output`` (a :class:`_FormedOutputMap` or
    :class:`_CurvatureOutputMap`), or None for the output layer (the identity, never formed).

    Nothing of size (R, D, D_l + D_{l-1}) is formed: the right-hand side
    ``sum_q F_q^T Psi^-1 (X_q - r_q k_q^T) M_q^T`` (``X_q`` the region's data cross moments, (D, S+1))
    is taken through the (D_l, S+1) products first, and ``C_q`` only where the solve needs it."""

    def __init__(self, inputs, output, psi, stats):
        E, f = inputs
        self.K = K = stats.moment_matrix()
        R, D_prev, S = E.shape
        # M maps [z; 1] to [a; 1].
        M = np.zeros((R, D_prev + 1, S + 1))
        M[:, :D_prev, :S] = E
        M[:, :D_prev, S] = f
        M[:, D_prev, S] = 1.0
        self.M, self.psi, self.output = M, psi, output
        self.output_layer = output is None
        # T_q = (M_q K_q) M_q^T, a sum of S+1 outer products: numpy's stacked products of
        # such thin matrices are slow.
        MK = M @ K
        self.T = np.einsum("rak,rbk->rab", MK, M, optimize=True)
        if output is None:
            projected = stats.cross_matrix() / psi[None, :, None]  # Psi^-1 X_q, F_q = I, r_q = 0
        else:
            projected = output.projected(stats.cross_matrix(), K[:, S, :])
        self.rhs = _sum_times_maps(projected, M)

    @property
    def C(self):
        """``C_q``, (R, D_l, D_l), for the hidden layers."""
        return self.output.C

    def curvature_diagonal(self):
        """``C_q[i, i]`` per region, (R, D_l)."""
        return self.output.curvature_diagonal()

    def apply(self, theta):
        """``sum_q C_q Theta T_q`` (the hidden layers' through the engine's operator)."""
        if self.output_layer:
            return (theta @ self.T.sum(axis=0)) / self.psi[:, None]
        return self.operator()(theta)

    def operator(self):
        """The hidden layer's :class:`_KroneckerOperator`."""
        return self.output.operator(self.M, self.K)


def _layer_maps(weights, frame, factors, layer, psi):
    """The layer's input maps ``(E, f)`` and its output map from :func:`frozen_maps` (biases in
    the frame of the statistics); None for the output layer, whose output map is the identity."""
    E, f, F, r = frozen_maps(weights, frame, factors, layer)
    return (E, f), (None if layer == len(weights) - 1 else _FormedOutputMap(F, r, psi))


def _times_each(weight, P):
    """``weight^T P_q`` for every q, P (R, n, k): one matrix product (an einsum does not use BLAS)."""
    return np.swapaxes(np.tensordot(P, weight, axes=([1], [0])), 1, 2)


def _sum_times_maps(P, M):
    """``sum_q P_q M_q^T`` for P (R, n, S+1) and M (R, A1, S+1): one matrix product."""
    return np.tensordot(P, M, axes=([0, 2], [0, 2]))


def layer_gradient(weights, biases, factors, psi, stats, layer, weight_decay=0.0):
    """d Q / d [W_l, b_l] = sum_q F_q^T Psi^-1 (Y_q - F_q Theta T_q) - weight_decay [W_l, 0]."""
    biases = _in_frame(biases, stats)
    system = _LayerSystem(*_layer_maps(weights, biases, factors, layer, psi), psi, stats)
    theta = np.hstack([weights[layer], biases[layer][:, None]])
    grad = system.rhs - system.apply(theta)
    grad[:, :-1] -= weight_decay * weights[layer]
    return grad


# BLAS's own worker threads cost more than they give on the M-step's products, which are batches of
# small per-region matrices and (below CG_THRESHOLD unknowns) small dense systems: inside EM on 2
# cores the Cholesky factorisation of a 272-unknown system took 1.9 ms with two threads against
# 0.12 ms with one (its threads wait for cores that exactem's workers hold), and they spin after
# each call while the next E-step runs (EM iteration, [1, 16, 16, 2], N = 1000: 16 ms against 6).
# The M-step therefore runs with one BLAS thread throughout.


@functools.cache
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def one_blas_thread():
    """A context in which BLAS uses one thread."""
    return _blas_controller().limit(limits=1, user_api="blas")


def update_layer(weights, biases, factors, psi, stats, layer, weight_decay=0.0, damping=0.0, maps=None):
    """The maximiser of the frozen-mask objective in layer `layer`'s weights and bias: the
    Kronecker-structured system ``sum_q C_q Theta T_q (+ decay) = sum_q F_q^T Psi^-1 Y_q``.

    ``damping`` > 0 maximises instead the objective minus a Marquardt proximal term
    ``damping / 2 * sum_i H_ii (theta_i - theta_old_i)^2`` (H the system's diagonal): the
    update then moves less, most of all in directions the frozen objective constrains weakly,
    which are the directions in which the frozen masks stop being true. ``biases`` are in the
    data's frame; ``maps`` are the layer's input maps ``(E, f)`` and output map (None for the
    output layer) in the frame of ``stats`` (:func:`_in_frame`), if the caller has them."""
    frame = _in_frame(biases, stats)
    if maps is None:
        maps = _layer_maps(weights, frame, factors, layer, psi)
    with one_blas_thread():
        weight, bias = _update_layer(weights, frame, maps, psi, stats, layer, weight_decay, damping)
    if layer == len(weights) - 1:
        bias = bias + stats.centre  # back to the data's frame
    return weight, bias


def _update_layer(weights, biases, maps, psi, stats, layer, weight_decay, damping):
    system = _LayerSystem(*maps, psi, stats)
    T, rhs = system.T, system.rhs
    R, A1 = T.shape[0], T.shape[1]
    D_prev = A1 - 1
    D_l = weights[layer].shape[0]
    penalty = np.zeros((D_l, A1))
    penalty[:, :D_prev] = weight_decay
    theta_old = np.hstack([weights[layer], biases[layer][:, None]])
    if system.output_layer:
        # The output layer: C_q = Psi^-1 in every region, so the system is (sum_q T_q) (x) Psi^-1
        # and the rows of Theta decouple: one (D_prev+1)-square system per output unit, with the
        # damping of the full system (its diagonal is psi_i^-1 sum_q T_q[a, a]) row by row.
        T_sum, inverse_psi = T.sum(axis=0), 1.0 / psi
        diagonal = inverse_psi[:, None] * np.diag(T_sum)[None, :] + penalty
        extra = damping * diagonal + _ridge(diagonal)
        residual = rhs - (inverse_psi[:, None] * (theta_old @ T_sum) + penalty * theta_old)
        blocks = inverse_psi[:, None, None] * T_sum[None, :, :]
        delta = _RowBlocks(blocks, penalty + extra).solve(residual)
    else:
        curvature_diagonal = system.curvature_diagonal()  # (R, D_l)
        # The system's diagonal: sum_q C_q[i, i] T_q[a, a] (+ decay).
        diagonal = curvature_diagonal.T @ np.einsum("raa->ra", T) + penalty
        extra = damping * diagonal + _ridge(diagonal)
        if D_l * A1 <= CG_THRESHOLD:
            C = system.C

            def system_of(diagonal):
                # sum_q T_q (x) C_q as one matrix product; unknowns ordered theta[i, a] -> i * A1 + a.
                dense = (T.reshape(R, A1 * A1).T @ C.reshape(R, D_l * D_l)).reshape(A1, A1, D_l, D_l)
                dense = dense.transpose(2, 0, 3, 1).reshape(D_l * A1, D_l * A1)
                dense[np.diag_indices_from(dense)] += diagonal.ravel()
                return dense

            dense = system_of(penalty)
            residual = rhs.ravel() - dense @ theta_old.ravel()
            dense[np.diag_indices_from(dense)] += extra.ravel()
            delta = _solve_spd(dense, lambda: system_of(penalty + extra), residual).reshape(D_l, A1)
        else:
            operator = system.operator()
            residual = rhs - (operator(theta_old) + penalty * theta_old)
            diagonal_blocks = (curvature_diagonal.T @ T.reshape(R, A1 * A1)).reshape(D_l, A1, A1)
            preconditioner = _RowBlocks(diagonal_blocks, penalty + extra)
            delta = _conjugate_gradients(lambda X: operator(X) + (penalty + extra) * X, preconditioner.solve,
                                         residual, max_iter=CG_MAX_ITER)
    theta = theta_old + delta
    return theta[:, :D_prev], theta[:, D_prev]


def _ridge(diagonal):
    """A ridge at rounding level: directions the frozen objective does not constrain at all (a
    unit with no posterior mass on one side) keep their values instead of taking arbitrary ones;
    every other direction gets its exact maximiser. The unknown is the change delta."""
    return 1e-12 * max(diagonal.mean(), 1e-300)


def m_step(decoder, patterns, noise_var, stats, weight_decay=0.0, min_noise_var=1e-6, diagonal=False, damping=0.0):
    """Closed-form updates of every layer (last to first), then the noise; masks frozen.

    Parameters
    ----------
    decoder : Decoder
        The current decoder.
    patterns : ndarray of shape (R, H), bool
        The activation pattern of each region, frozen (``model.regions.patterns``).
    noise_var : float or ndarray of shape (D,)
        The current noise variance.
    stats : RegionStats
        Per-region sums of the exact E-step.
    weight_decay : float, default=0.0
        L2 penalty on the weights.
    min_noise_var : float, default=1e-6
        Floor of the new noise variance.
    diagonal : bool, default=False
        One variance per coordinate instead of one in all.
    damping : float, default=0.0
        Marquardt damping, as in :func:`update_layer`.

    Returns
    -------
    weights, biases : list of ndarray
        The new parameters.
    noise_var : ndarray of shape (D,)
        The new noise variance (all equal unless ``diagonal``).
    """
    with one_blas_thread():
        return _m_step(decoder, patterns, noise_var, stats, weight_decay, min_noise_var, diagonal, damping)


def _m_step(decoder, patterns, noise_var, stats, weight_decay, min_noise_var, diagonal, damping):
    # A region no point's posterior reaches has every sum exactly zero and adds nothing to any
    # layer's system: it is left out (digits, S = 2: 40% of the regions).
    reached = stats.s0 > 0
    if not reached.all():
        patterns, stats = np.asarray(patterns)[reached], stats.restricted(reached)
    weights = [w.copy() for w in decoder.weights]
    biases = [b.copy() for b in decoder.biases]
    factors = layer_factors(decoder, patterns)
    psi = np.broadcast_to(np.asarray(noise_var, dtype=float), (stats.dim,))
    # From the last layer down, each layer's input maps come from the layers below, not yet
    # updated, so they are composed once for all; its output map from the layers above, already
    # updated, one step down from the previous layer's: formed where the output is narrower than
    # every hidden layer, else carried as the curvature and projections the systems need.
    inputs = _layer_inputs(weights, biases, factors)
    L = len(weights)
    narrow = stats.dim < min((w.shape[0] for w in weights[:-1]), default=0)
    output = None
    for layer in reversed(range(L)):
        if layer == L - 2:
            weight, bias = weights[L - 1], _in_frame(biases, stats)[L - 1]
            output = (_FormedOutputMap.of_output_layer(weight, bias, factors[layer], psi) if narrow else
                      _CurvatureOutputMap.of_output_layer(weight, bias, factors[layer], psi, stats.cross_matrix()))
        elif layer < L - 2:
            output = output.below(weights[layer + 1], biases[layer + 1], factors[layer])
        weights[layer], biases[layer] = update_layer(weights, biases, factors, psi, stats, layer, weight_decay,
                                                    damping, maps=(inputs[layer], output))
    res = _expected_residuals(weights, biases, factors, stats) / stats.n_points
    new_noise = np.maximum(res if diagonal else np.full(stats.dim, res.mean()), min_noise_var)
    return weights, biases, new_noise


def noise_gradient(weights, biases, factors, psi, stats):
    """d Q / d psi per output coordinate: -N / (2 psi) + residual / (2 psi^2)."""
    res = _expected_residuals(weights, biases, factors, stats)
    return -stats.n_points / (2 * psi) + res / (2 * psi**2)


# Above this many unknowns in a hidden layer the normal equations are solved by preconditioned
# conjugate gradients on the Kronecker-structured operator instead of forming the dense system,
# whose size grows like width^4 (2 GB at width 128) and whose Cholesky factorisation like width^6
# (BENCHMARKS.md, the M-step). Each CG iterate increases the frozen objective from the current
# parameters (CG from zero decreases the quadratic at every step), so an inexact solve is still an
# ascent step, and the exact likelihood check keeps EM monotone either way.
CG_THRESHOLD = 600
CG_MAX_ITER = 100
CG_RTOL = 1e-10
# CG also stops once a step raises the frozen objective by less than this fraction of what the
# solve has gained so far: on digits the layer's operator is ill-conditioned enough that CG never
# reaches CG_RTOL within CG_MAX_ITER, while the likelihood EM reaches after a few iterations is
# the same with half the steps (S = 2: 26.607 against 26.608 nats per point after 8 iterations,
# 27-64 steps against 100; S = 1: 24.20 against 24.04 after 30). The exact likelihood check
# keeps EM monotone whatever the solve's accuracy.
CG_GAIN_RTOL = 1e-3


class _KroneckerOperator:
    """``X -> sum_q C_q X T_q`` without forming the system, in the low-rank form of its factors:
    ``T_q = M_q K_q M_q^T`` has rank at most S + 1, and ``C_q = F_q^T Psi^-1 F_q`` is applied
    through ``F_q`` where the output has fewer coordinates than the layer has units (``C`` is
    then None). Per application O(R D_l (D_l or D) (S + 1) + R D_l A1 (S + 1)) instead of the
    dense system's (D_l A1)^2. Applied by the engine (``learning::kronecker``: one pass over the
    regions, in parallel, the same bits whatever the number of threads);
    :class:`_KroneckerOperatorNumpy` is the same operator in numpy, its reference."""

    def __init__(self, C, F, M, K, psi):
        from . import _core

        M, K = np.ascontiguousarray(M, dtype=np.float64), np.ascontiguousarray(K, dtype=np.float64)
        if M.shape[2] > _core.KRONECKER_MAX_LATENT1:  # the engine's kernels stop at S = 4
            self._core = _KroneckerOperatorNumpy(C, F, M, K, psi)
        elif C is None:
            self._core = _core.KroneckerCore(M, K, output_map=np.ascontiguousarray(F, dtype=np.float64),
                                             inverse_noise=np.ascontiguousarray(1.0 / psi, dtype=np.float64))
        else:
            self._core = _core.KroneckerCore(M, K, curvature=np.ascontiguousarray(C, dtype=np.float64))

    def __call__(self, X):
        return self._core(np.ascontiguousarray(X, dtype=np.float64))


class _KroneckerOperatorNumpy:
    """:class:`_KroneckerOperator` as numpy batches of per-region products (the reference the
    engine's operator is tested against)."""

    def __init__(self, C, F, M, K, psi):
        R, A1, S1 = M.shape
        self._R, self._S1 = R, S1
        self._M_columns = M.transpose(1, 0, 2).reshape(A1, R * S1)  # [a, (q, k)]
        self._M_rows = self._M_columns.T.copy()
        self._K = K
        self._C, self._F, self._inverse_psi = C, F, 1.0 / np.asarray(psi, dtype=float)

    def __call__(self, X):
        D_l = X.shape[0]
        P = (X @ self._M_columns).reshape(D_l, self._R, self._S1).transpose(1, 0, 2)  # X M_q
        if self._C is None:
            P = np.swapaxes(self._F, 1, 2) @ (self._inverse_psi[None, :, None] * (self._F @ P))
        else:
            P = self._C @ P
        P = P @ self._K
        return P.transpose(1, 0, 2).reshape(D_l, self._R * self._S1) @ self._M_rows


class _RowBlocks:
    """The system restricted to one output unit at a time: ``blocks[i] + diag(extra[i])`` for each
    row i of Theta, factored once. Exact for the output layer, whose rows decouple; the
    block-Jacobi preconditioner of conjugate gradients for the hidden layers."""

    def __init__(self, blocks, extra):
        blocks = blocks.copy()
        idx = np.arange(blocks.shape[1])
        blocks[:, idx, idx] += extra
        # The inverses, formed once: conjugate gradients applies them at every step, where a batch
        # of small products is much cheaper than a batch of small solves.
        try:
            np.linalg.cholesky(blocks)  # positive definite: the inverse is well defined
            self._inverse = np.linalg.inv(blocks)
        except np.linalg.LinAlgError:
            # A unit with no data on some inputs: least squares (zero change there), as the dense
            # path's fallback does.
            self._inverse = np.linalg.pinv(blocks, hermitian=True)

    def solve(self, residual):
        return np.matmul(self._inverse, residual[:, :, None])[:, :, 0]


def _conjugate_gradients(apply, precondition, b, max_iter, rtol=None):
    """Preconditioned conjugate gradients for ``apply(X) = b`` from zero, on matrices; stops at a
    relative residual of ``rtol`` (``CG_RTOL``), after ``max_iter`` steps, where a step gains less
    than ``CG_GAIN_RTOL`` of the objective gained so far, or where a direction has no curvature
    left (semi-definite operator)."""
    rtol = CG_RTOL if rtol is None else rtol
    x = np.zeros_like(b)
    r = b.copy()
    z = precondition(r)
    p = z.copy()
    rz = float(np.vdot(r, z))
    stop = rtol * float(np.linalg.norm(b))
    gained = 0.0
    for _ in range(max_iter):
        if float(np.linalg.norm(r)) <= stop or rz <= 0:
            break
        Ap = apply(p)
        curvature = float(np.vdot(p, Ap))
        if not curvature > 0:
            break
        step = rz / curvature
        # The quadratic objective rises by step * rz / 2 at this step: stop where the steps left
        # add little to what has been gained.
        gain = 0.5 * step * rz
        gained += gain
        x += step * p
        if gain < CG_GAIN_RTOL * gained:
            break
        r -= step * Ap
        z = precondition(r)
        rz_next = float(np.vdot(r, z))
        p = z + (rz_next / rz) * p
        rz = rz_next
    return x


def _solve_spd(system, rebuild, rhs):
    """Solves the symmetric positive semi-definite normal equations, overwriting ``system``; least
    squares on ``rebuild()`` (the same matrix again) if singular (a unit that is off in every
    region with mass has no data on its incoming weights)."""
    try:
        # In place on the transpose (the same matrix, in LAPACK's column order): no copy of a
        # matrix of up to 5000^2 entries. np.linalg.cholesky then np.linalg.solve on each
        # triangle, as before, took 4x as long at 4160 unknowns (the solves factor again).
        factor = scipy.linalg.cho_factor(system.T, lower=True, overwrite_a=True, check_finite=False)
        return scipy.linalg.cho_solve(factor, rhs, check_finite=False)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(rebuild(), rhs, rcond=None)[0]
