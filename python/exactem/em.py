"""Exact EM for deep generative networks (DESIGN.md §6).

The E-step is exact (:meth:`DGN.e_step`). With the E-step's activation masks frozen, the decoder
is affine in each layer's parameters, so every layer has a closed-form update; the layers are
updated in turn (block-coordinate ascent on the frozen-mask objective), then the noise. Because
regions move once the parameters change, each proposal's exact log-likelihood is computed and
the step is halved toward the previous parameters until it does not decrease.
"""

import contextlib
import functools

import numpy as np
import scipy.linalg
import scipy.sparse

from .decoder import Decoder
from .model import DGN


class RegionStats:
    """Per-region sums of the E-step statistics: all the M-step needs, independent of N.

    The sums over the data are of ``x - centre`` (``centre`` the data's mean): the frozen objective
    expands ``|x - A z - b|^2`` into sums that lose ``eps`` times ``|x|^2``, which for data offset
    by 1e8 was all of the residual. The functions below take the decoder in the data's frame and
    move its output bias into this one themselves (:func:`_in_frame`): the translation is exact
    algebra, so the updates are those of the data as given.
    """

    def __init__(self, es, X, n_regions):
        S = es.m1.shape[1]
        q = es.regions
        self.n_points, self.dim = X.shape
        self.centre = X.mean(axis=0) if len(X) else np.zeros(X.shape[1])
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
    R = factors[0].shape[0] if factors else 1
    S = weights[0].shape[1]
    E = np.broadcast_to(np.eye(S), (R, S, S))
    f = np.zeros((R, S))
    for k in range(layer):
        pre_E = weights[k] @ E
        pre_f = f @ weights[k].T + biases[k]
        E = factors[k][:, :, None] * pre_E
        f = factors[k] * pre_f
    D_l = weights[layer].shape[0]
    F = np.broadcast_to(np.eye(D_l), (R, D_l, D_l))
    r = np.zeros((R, D_l))
    for k in range(layer + 1, len(weights)):
        # u_k = W_k s(u_{k-1}) + b_k with s frozen: compose from the layer upward.
        step = weights[k] * factors[k - 1][:, None, :]
        F = step @ F
        r = np.einsum("rij,rj->ri", step, r) + biases[k]
    return E, f, F, r


def frozen_objective(weights, biases, factors, noise_var, stats):
    """The frozen-mask expected complete-data log-likelihood, up to the prior's constant."""
    psi = np.broadcast_to(noise_var, (stats.dim,))
    res = _expected_residuals(weights, biases, factors, stats)
    return float(-0.5 * (stats.n_points * np.sum(np.log(2 * np.pi * psi)) + np.sum(res / psi)))


def _expected_residuals(weights, biases, factors, stats):
    """Per output coordinate: sum_{n,q} E[(x_n - A_q z - b_q)^2 1_q], with A_q, b_q the output
    map of region q with its activation pattern frozen."""
    biases = _in_frame(biases, stats)
    E, f, _, _ = frozen_maps(weights, biases, factors, len(weights) - 1)
    A = weights[-1] @ E
    b = f @ weights[-1].T + biases[-1]
    res = stats.sum_x2.copy()
    res -= 2 * np.einsum("rd,rd->d", b, stats.sx0)
    res += np.einsum("r,rd->d", stats.s0, b * b)
    res -= 2 * np.einsum("rds,rds->d", A, stats.sx1)
    res += 2 * np.einsum("rd,rds,rs->d", b, A, stats.s1)
    res += np.einsum("rds,rst,rdt->d", A, stats.s2, A)
    return res


def _layer_system(weights, biases, factors, psi, stats, layer):
    """The frozen-mask normal equations of one layer: per region T_q, Y_q, F_q (see DESIGN §6),
    in the frame of ``stats`` (``biases`` in the data's)."""
    biases = _in_frame(biases, stats)
    K = stats.moment_matrix()
    E, f, F, r = frozen_maps(weights, biases, factors, layer)
    R, D_prev, S = E.shape
    # M maps [z; 1] to [a; 1]; T = M K M^T, Y = (sum x [z;1]^T - r [s1; s0]^T) M^T.
    M = np.zeros((R, D_prev + 1, S + 1))
    M[:, :D_prev, :S] = E
    M[:, :D_prev, S] = f
    M[:, D_prev, S] = 1.0
    T = M @ K @ np.swapaxes(M, 1, 2)
    Y = (stats.cross_matrix() - r[:, :, None] * K[:, S, :][:, None, :]) @ np.swapaxes(M, 1, 2)
    FtP = np.swapaxes(F, 1, 2) / psi  # (R, D_l, D)
    return T, Y, F, FtP


def layer_gradient(weights, biases, factors, psi, stats, layer, weight_decay=0.0):
    """d Q / d [W_l, b_l] = sum_q F_q^T Psi^-1 (Y_q - F_q Theta T_q) - weight_decay [W_l, 0]."""
    T, Y, F, FtP = _layer_system(weights, biases, factors, psi, stats, layer)
    theta = np.hstack([weights[layer], _in_frame(biases, stats)[layer][:, None]])
    grad = np.einsum("rid,rda->ia", FtP, Y - F @ theta[None] @ T)
    grad[:, :-1] -= weight_decay * weights[layer]
    return grad


# BLAS's own worker threads cost more than they give on the small systems of most layers: inside EM
# on 2 cores the Cholesky factorisation of a 272-unknown system took 1.9 ms with two threads
# against 0.12 ms with one (its threads wait for cores that exactem's workers hold), and they spin
# after each call while the next E-step runs (EM iteration, [1, 16, 16, 2], N = 1000: 16 ms against
# 6). From this many unknowns on, a factorisation lasts long enough for its threads to pay (4160
# unknowns: 0.29 s with two, 0.52 s with one).
BLAS_THREADS_FROM = 1500


@functools.cache
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def one_blas_thread():
    """A context in which BLAS uses one thread."""
    return _blas_controller().limit(limits=1, user_api="blas")


def _blas_threads_for(unknowns):
    """A context in which BLAS uses one thread, unless the system has BLAS_THREADS_FROM unknowns or
    more (then as configured)."""
    if unknowns >= BLAS_THREADS_FROM:
        return contextlib.nullcontext()
    return one_blas_thread()


def update_layer(weights, biases, factors, psi, stats, layer, weight_decay=0.0, damping=0.0):
    """The maximiser of the frozen-mask objective in layer `layer`'s weights and bias: the
    Kronecker-structured system ``sum_q C_q Theta T_q (+ decay) = sum_q F_q^T Psi^-1 Y_q``.

    ``damping`` > 0 maximises instead the objective minus a Marquardt proximal term
    ``damping / 2 * sum_i H_ii (theta_i - theta_old_i)^2`` (H the system's diagonal): the
    update then moves less, most of all in directions the frozen objective constrains weakly,
    which are the directions in which the frozen masks stop being true."""
    with _blas_threads_for(weights[layer].shape[0] * (weights[layer].shape[1] + 1)):
        return _update_layer(weights, biases, factors, psi, stats, layer, weight_decay, damping)


def _update_layer(weights, biases, factors, psi, stats, layer, weight_decay, damping):
    T, Y, F, FtP = _layer_system(weights, biases, factors, psi, stats, layer)
    R, A1 = T.shape[0], T.shape[1]
    D_prev = A1 - 1
    rhs = np.einsum("rid,rda->ia", FtP, Y)  # (D_l, D_prev+1)
    C = FtP @ F  # (R, D_l, D_l)
    D_l = C.shape[1]
    penalty = np.zeros((D_l, A1))
    penalty[:, :D_prev] = weight_decay
    theta_old = np.hstack([weights[layer], _in_frame(biases, stats)[layer][:, None]])
    # The system's diagonal: sum_q C_q[i, i] T_q[a, a] (+ decay).
    diagonal = np.einsum("rii,raa->ia", C, T) + penalty
    # A ridge at rounding level: directions the frozen objective does not constrain at all (a
    # unit with no posterior mass on one side) keep their values instead of taking arbitrary
    # ones; every other direction gets its exact maximiser. The unknown is the change delta.
    ridge = 1e-12 * max(diagonal.mean(), 1e-300)
    extra = damping * diagonal + ridge
    if D_l * A1 <= CG_THRESHOLD:
        def system_of(diagonal):
            # sum_q T_q (x) C_q as one matrix product; unknowns ordered theta[i, a] -> i * A1 + a.
            system = (T.reshape(R, A1 * A1).T @ C.reshape(R, D_l * D_l)).reshape(A1, A1, D_l, D_l)
            system = system.transpose(2, 0, 3, 1).reshape(D_l * A1, D_l * A1)
            system[np.diag_indices_from(system)] += diagonal.ravel()
            return system

        system = system_of(penalty)
        residual = rhs.ravel() - system @ theta_old.ravel()
        system[np.diag_indices_from(system)] += extra.ravel()
        delta = _solve_spd(system, lambda: system_of(penalty + extra), residual).reshape(D_l, A1)
    else:
        delta = _solve_cg(C, T, penalty, extra, diagonal, rhs, theta_old)
    theta = theta_old + delta
    bias = theta[:, D_prev] + (stats.centre if layer == len(weights) - 1 else 0.0)  # back to the data's frame
    return theta[:, :D_prev], bias


def m_step(decoder, patterns, noise_var, stats, weight_decay=0.0, min_noise_var=1e-6, diagonal=False, damping=0.0):
    """Closed-form updates of every layer (last to first), then the noise; masks frozen.
    ``damping`` as in :func:`update_layer`."""
    weights = [w.copy() for w in decoder.weights]
    biases = [b.copy() for b in decoder.biases]
    factors = layer_factors(decoder, patterns)
    psi = np.broadcast_to(np.asarray(noise_var, dtype=float), (stats.dim,))
    for layer in reversed(range(len(weights))):
        weights[layer], biases[layer] = update_layer(weights, biases, factors, psi, stats, layer, weight_decay,
                                                    damping)
    res = _expected_residuals(weights, biases, factors, stats) / stats.n_points
    new_noise = np.maximum(res if diagonal else np.full(stats.dim, res.mean()), min_noise_var)
    return weights, biases, new_noise


def noise_gradient(weights, biases, factors, psi, stats):
    """d Q / d psi per output coordinate: -N / (2 psi) + residual / (2 psi^2)."""
    res = _expected_residuals(weights, biases, factors, stats)
    return -stats.n_points / (2 * psi) + res / (2 * psi**2)


# Above this many unknowns in a layer (width ~70) the normal equations are solved by conjugate gradients
# on the Kronecker-structured operator instead of forming the dense system (whose size grows
# like width^4: 2 GB at width 128). CG stops at a tolerance or an iteration cap; an inexact
# solve still increases the frozen objective (CG from zero never increases the quadratic),
# and the exact likelihood check keeps EM monotone either way.
CG_THRESHOLD = 5000


def _solve_cg(C, T, penalty, extra, diagonal, rhs, theta_old):
    """Jacobi-preconditioned conjugate gradients for ``sum_q C_q X T_q + (penalty + extra) * X =
    rhs - (sum_q C_q theta_old T_q + penalty * theta_old)``, never forming the system."""
    from scipy.sparse.linalg import LinearOperator, cg

    shape = theta_old.shape
    n = theta_old.size

    def apply(x, with_extra=True):
        X = x.reshape(shape)
        out = np.matmul(np.matmul(C, X), T).sum(axis=0) + penalty * X
        if with_extra:
            out = out + extra * X
        return out.ravel()

    residual = rhs.ravel() - apply(theta_old.ravel(), with_extra=False)
    operator = LinearOperator((n, n), matvec=apply, dtype=float)
    preconditioner = LinearOperator((n, n), matvec=lambda v: v / (diagonal + extra).ravel(), dtype=float)
    delta, _ = cg(operator, residual, M=preconditioner, rtol=1e-10, atol=0.0, maxiter=10 * int(np.sqrt(n)) + 100)
    return delta.reshape(shape)


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
