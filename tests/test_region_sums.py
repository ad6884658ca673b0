"""The per-region E-step sums accumulated in the engine block by block (RegionStats.by_blocks)
against the sums formed in numpy from the whole E-step, and their memory."""

import json
import subprocess
import sys

import numpy as np
import pytest

import exactem
from exactem.em import RegionStats


def _reference(model, X, centre, block_rows):
    """numpy's sums (RegionStats of a whole E-step) of the same row blocks, added in order, the
    per-row log-likelihoods, and per statistic the sum of the absolute values of its terms: a
    sum of n terms added in another order differs by at most ~2 n u times this (u the unit
    roundoff). The blocks are the engine's, so that each row's E-step is the same computation:
    in a block of one or two rows the matrix product of the local Gaussians takes another path
    and may round differently in the last bits."""
    R, S = len(model.regions), model.latent_dim
    step = len(X) if block_rows is None else block_rows
    parts, log_p, scale = [], [], {}
    for start in range(0, len(X), step):
        rows = X[start:start + step]
        es = model.e_step(rows)
        parts.append(RegionStats(es, rows, R, centre=centre))
        log_p.append(es.log_likelihood)
        m0 = np.abs(es.m0.toarray())
        m1 = np.zeros((len(rows), R, S))
        m2 = np.zeros((len(rows), R, S, S))
        m1[es.points, es.regions] = np.abs(es.m1)
        m2[es.points, es.regions] = np.abs(es.m2)
        Xc = np.abs(rows - centre)
        terms = dict(s0=m0.sum(axis=0), s1=m1.sum(axis=0), s2=m2.sum(axis=0), sx0=m0.T @ Xc,
                     sx1=np.einsum("nqs,nd->qds", m1, Xc), sum_x2=(Xc * Xc).sum(axis=0))
        scale = {k: scale.get(k, 0) + v for k, v in terms.items()}
    return RegionStats.combine(parts), np.concatenate(log_p), scale


CASES = [
    # (widths, noise, rows): S = 1 with a few outputs (the blocks form their local Gaussians from
    # the points) and with many (stored products, residual forms), S = 2 with both noises.
    ([1, 6, 6, 3], 0.05, 300),
    ([1, 8, 40], 0.2, 250),
    ([2, 5, 3], 0.1, 200),
    ([2, 4, 20], np.linspace(0.1, 0.4, 20), 150),
]


@pytest.mark.parametrize("widths, noise, rows", CASES)
@pytest.mark.parametrize("block_rows", [None, 1, 7])
def test_block_sums_equal_numpys_sums_of_the_e_step(widths, noise, rows, block_rows):
    model = exactem.DGN(exactem.Decoder.random(widths, seed=len(widths) + widths[-1]), noise)
    X, _ = model.sample(rows, seed=3)
    X = X + 5.0  # an offset, so that the centre matters
    new, log_p = RegionStats.by_blocks(model, X, block_rows=block_rows)
    np.testing.assert_array_equal(new.centre, X.mean(axis=0))
    old, old_log_p, scale = _reference(model, X, new.centre, block_rows)
    if block_rows is None:  # one block: numpy's sums of the whole E-step, as the estimator had them
        whole = RegionStats(model.e_step(X), X, len(model.regions))
        assert all(np.array_equal(getattr(old, name), getattr(whole, name)) for name in RegionStats._SUMS)
    assert np.array_equal(log_p, old_log_p)
    assert (new.n_points, new.dim) == (old.n_points, old.dim) == X.shape
    for name in RegionStats._SUMS:
        a, b = getattr(new, name), getattr(old, name)
        assert a.shape == b.shape, name
        bound = 1e-12 * np.maximum(scale[name], np.finfo(float).tiny)
        assert np.all(np.abs(a - b) <= bound), (name, np.max(np.abs(a - b) / bound))


def test_block_sums_are_the_same_bits_every_time_and_take_a_given_centre():
    model = exactem.DGN(exactem.Decoder.random([1, 8, 8, 30], seed=1), 0.1)
    X, _ = model.sample(500, seed=0)
    centre = np.linspace(-1.0, 1.0, 30)
    a, _ = RegionStats.by_blocks(model, X, centre=centre, block_rows=64)
    b, _ = RegionStats.by_blocks(model, X, centre=centre, block_rows=64)
    for name in RegionStats._SUMS:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    old = RegionStats(model.e_step(X), X, len(model.regions), centre=centre)
    np.testing.assert_allclose(a.sx0, old.sx0, rtol=1e-12, atol=1e-12 * np.abs(old.sx0).max())
    # Sums of row blocks about one centre add up as the sums of all rows do.
    halves = RegionStats.combine([RegionStats.by_blocks(model, X[:200], centre=centre)[0],
                                  RegionStats.by_blocks(model, X[200:], centre=centre)[0]])
    np.testing.assert_allclose(halves.sx1, a.sx1, rtol=1e-12, atol=1e-12 * np.abs(a.sx1).max())


def test_bad_block_rows_and_centre_are_refused():
    model = exactem.DGN(exactem.Decoder.random([1, 4, 3], seed=0), 0.1)
    X, _ = model.sample(20, seed=0)
    with pytest.raises(ValueError, match="block_rows"):
        RegionStats.by_blocks(model, X, block_rows=0)
    with pytest.raises(ValueError, match="centre"):
        RegionStats.by_blocks(model, X, centre=np.zeros(2))
    with pytest.raises(ValueError, match="X"):
        RegionStats.by_blocks(model, X[:, :2])


MEMORY_CHILD = r"""
import json
import numpy as np
import exactem
from exactem.em import RegionStats

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

def growth(call):
    # The peak resident size over the call, less the size before it: writing 5 to clear_refs
    # resets the peak (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    call()
    return status("VmHWM") - before

model = exactem.DGN(exactem.Decoder.random([1, 6, 784], seed=0), 0.05)
X = model.sample(20000, seed=0)[0]
R = len(model.regions)
RegionStats.by_blocks(model, X[:64], block_rows=32)      # the engine and its threads, warmed up
streamed = growth(lambda: RegionStats.by_blocks(model, X, block_rows=64))
whole = growth(lambda: RegionStats(model.e_step(X), X, R))  # the whole E-step, then numpy's sums
print(json.dumps(dict(streamed=streamed, whole=whole, data=X.nbytes, regions=R)))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_memory_of_a_d784_e_step_in_small_blocks_does_not_grow_with_n():
    # 20000 rows x 784 (125 MB): in blocks of 64 rows the call holds one block's copy and
    # statistics (~1 MB), the R x D sums, the finiteness check of 4096 rows (3 MB) and what the
    # allocator keeps for the engine's threads (~10 MB here); the whole E-step copies the data
    # and numpy's sums form X - centre, each as large as the data (which shows that the
    # measurement sees them).
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["whole"] > r["data"], r
    assert r["streamed"] < 0.2 * r["data"], r
