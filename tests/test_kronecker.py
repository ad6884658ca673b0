"""The engine's M-step operator (``learning::kronecker``) against the numpy reference
(:class:`exactem.em._KroneckerOperatorNumpy`): ``X -> sum_q C_q X M_q K_q M_q^T``, with ``C_q``
given densely (D >= D_l) or applied through the output map ``F_q`` (D < D_l)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exactem import _core, em


def random_layer(rng, R, D_l, A1, S1, D, scale):
    """Factors as the M-step forms them: ``M_q`` with last row ``e_S`` (the bias input), ``K_q``
    a moment matrix (positive semi-definite), ``F_q``, ``Psi`` and ``C_q = F_q^T Psi^-1 F_q``."""
    M = scale * rng.standard_normal((R, A1, S1))
    M[:, -1, :] = 0.0
    M[:, -1, -1] = 1.0
    Z = rng.standard_normal((R, S1, S1 + 2))
    K = Z @ np.swapaxes(Z, 1, 2) * rng.uniform(0.0, 50.0, size=(R, 1, 1))
    # Regions share F_q (and C_q) as regions with one activation pattern above the layer do:
    # a few distinct ones, scattered over the regions.
    distinct = rng.standard_normal((max(1, R // 3), D, D_l)) / scale
    F = distinct[rng.integers(0, len(distinct), size=R)]
    psi = rng.uniform(0.05, 2.0, size=D)
    C = np.swapaxes(F, 1, 2) / psi @ F
    X = rng.standard_normal((D_l, A1))
    return C, F, M, K, psi, X


def rounding_bound(C, F, psi, M, K, X, through_F):
    """``50 n eps sum|terms|``: every entry is a sum of n products of the factors' entries (n
    counts the terms of one entry), each product rounded a few times and the sum once per term;
    ``sum|terms|`` is the same operator on the factors' absolute values."""
    R, A1, S1 = M.shape
    D_l, D = X.shape[0], F.shape[1]
    absF = np.abs(F)
    absC = np.swapaxes(absF, 1, 2) / psi @ absF if through_F else np.abs(C)
    magnitude = em._KroneckerOperatorNumpy(absC, None, np.abs(M), np.abs(K), psi)(np.abs(X))
    n_terms = max(R, 1) * (D if through_F else D_l) * A1 * S1 * S1 + 4
    return 50 * n_terms * np.finfo(float).eps * magnitude


@settings(max_examples=25, deadline=None)
@given(
    R=st.sampled_from([0, 1, 2, 7, 64, 65, 150]),
    D_l=st.integers(1, 12),
    A1=st.integers(1, 10),
    S1=st.integers(2, 6),
    D=st.integers(1, 14),
    scale=st.sampled_from([1.0, 1e-3, 1e3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_engine_operator_agrees_with_numpy(R, D_l, A1, S1, D, scale, seed):
    rng = np.random.default_rng(seed)
    C, F, M, K, psi, X = random_layer(rng, R, D_l, A1, S1, D, scale)
    dense = None if D < D_l else C  # C_q applied through F_q where the output is narrower
    engine = em._KroneckerOperator(dense, F, M, K, psi)(X)
    reference = em._KroneckerOperatorNumpy(dense, F, M, K, psi)(X)
    assert engine.shape == reference.shape == (D_l, A1)
    bound = rounding_bound(C, F, psi, M, K, X, through_F=D < D_l)
    assert np.all(np.abs(engine - reference) <= bound), np.max(np.abs(engine - reference) - bound)
    if R == 0:
        assert np.all(engine == 0.0)


def test_engine_operator_takes_any_layout_and_checks_shapes():
    rng = np.random.default_rng(1)
    C, F, M, K, psi, X = random_layer(rng, 9, 5, 4, 3, 7, 1.0)
    reference = em._KroneckerOperatorNumpy(C, F, M, K, psi)(X)
    # Fortran-ordered and strided views give the same operator.
    core = _core.KroneckerCore(np.asfortranarray(M), K[:, ::1, ::1], curvature=np.swapaxes(np.swapaxes(C, 1, 2).copy(), 1, 2))
    np.testing.assert_allclose(core(np.asfortranarray(X)), reference, rtol=1e-12, atol=1e-12 * np.abs(reference).max())
    with pytest.raises(ValueError, match="X must have shape"):
        core(X[:, :-1])
    with pytest.raises(ValueError, match="moments must have shape"):
        _core.KroneckerCore(M, K[:-1], curvature=C)
    with pytest.raises(ValueError, match="either curvature"):
        _core.KroneckerCore(M, K)
    with pytest.raises(ValueError, match="inverse_noise"):
        _core.KroneckerCore(M, K, output_map=F, inverse_noise=1 / psi[:-1])


CHILD = """
import json, numpy as np
from exactem import em
from tests_kronecker_layer import layer
C, F, M, K, psi, X = layer()
dense = em._KroneckerOperator(C, F, M, K, psi)(X)
through = em._KroneckerOperator(None, F[:, :3], M, K, psi[:3])(X)
print(json.dumps([dense.tobytes().hex(), through.tobytes().hex()]))
"""


def test_engine_operator_gives_the_same_bits_on_one_thread_and_on_two(tmp_path):
    # Chunks of regions are fixed and their partial sums added in order: the thread count must
    # not show in the bits. 700 regions: eleven chunks.
    (tmp_path / "tests_kronecker_layer.py").write_text(
        "import numpy as np\n"
        f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "from test_kronecker import random_layer\n"
        "def layer():\n"
        "    return random_layer(np.random.default_rng(5), 700, 16, 9, 3, 20, 1.0)\n"
    )
    out = []
    for threads in ["1", "2"]:
        env = dict(os.environ, RAYON_NUM_THREADS=threads, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
        result = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
        out.append(json.loads(result.stdout))
    assert out[0] == out[1]
