"""Exact EM and scoring over Dask: the same bits as on one machine, faults included."""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import exactem

distributed = pytest.importorskip("dask.distributed")
da = pytest.importorskip("dask.array")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def same_fit(a, b):
    return (a.history_ == b.history_
            and all(np.array_equal(x, y) for x, y in zip(a.decoder_.weights + a.decoder_.biases,
                                                          b.decoder_.weights + b.decoder_.biases))
            and np.array_equal(a.noise_var_, b.noise_var_))


@pytest.mark.parametrize("S, hidden, noise", [(1, (8, 8), "isotropic"), (2, (5,), "diagonal")])
def test_fit_on_a_cluster_has_the_bits_of_the_local_fit(client, S, hidden, noise):
    X = exactem.datasets.wave(600, 0.1, seed=S)
    kw = dict(latent_dim=S, hidden=hidden, noise=noise, max_iter=6, random_state=0, n_shards=3)
    local = exactem.ExactEM(**kw).fit(X)
    remote = exactem.ExactEM(client=client, **kw).fit(X)
    assert len(local.history_) >= 3
    assert same_fit(local, remote)
    # A dask array with the same row blocks is the same fit.
    chunked = exactem.ExactEM(client=client, **{**kw, "n_shards": None}).fit(da.from_array(X, chunks=(200, 2)))
    assert same_fit(local, chunked)


def test_sharded_sums_differ_from_unsharded_only_by_summation_order():
    # The same model's E-step over 7 shards against one pass: the per-region sums and the mean
    # log-likelihood agree to the rounding of the additions (each ~1e-16 relative per term).
    X = exactem.datasets.wave(700, 0.1, seed=4)
    model = exactem.DGN(exactem.Decoder.random([1, 8, 8, 2], seed=2), 0.2)
    from exactem.distributed import Shards
    from exactem.em import RegionStats

    stats, mean_ll = Shards(X, n_shards=7).statistics(model.decoder, model.noise_var, model.max_regions)
    es = model.e_step(X)
    whole = RegionStats(es, X, len(model.regions))
    for name in RegionStats._SUMS:
        a, b = getattr(stats, name), getattr(whole, name)
        assert np.allclose(a, b, rtol=1e-13, atol=1e-13 * np.abs(b).max())
    assert abs(mean_ll - es.log_likelihood.mean()) <= 1e-13 * np.abs(es.log_likelihood).mean()


def test_lbfgs_on_a_cluster_matches_the_local_sharded_fit(client):
    X = exactem.datasets.circle(400, 0.1, seed=0)
    kw = dict(hidden=(6,), max_iter=5, random_state=1, n_shards=2, solver="lbfgs")
    assert same_fit(exactem.ExactEM(**kw).fit(X), exactem.ExactEM(client=client, **kw).fit(X))


def test_log_likelihood_of_a_dask_array_with_uneven_chunks(client):
    model = exactem.DGN(exactem.Decoder.random([2, 6, 3], seed=0), np.array([0.1, 0.2, 0.3]))
    X, _ = model.sample(500, seed=1)
    Xd = da.from_array(X, chunks=((50, 199, 1, 250), 3))
    lazy = model.log_likelihood(Xd)
    assert isinstance(lazy, da.Array) and lazy.shape == (500,)
    expected = model.log_likelihood(X)
    assert np.array_equal(lazy.compute(scheduler="threads"), expected)
    assert np.array_equal(client.compute(lazy).result(), expected)
    blocks = [r.compute() for r in model.e_step(Xd)]
    assert [len(b.log_likelihood) for b in blocks] == [50, 199, 1, 250]
    whole = model.e_step(X)
    assert np.array_equal(np.concatenate([b.log_likelihood for b in blocks]), whole.log_likelihood)
    assert np.array_equal(np.concatenate([b.m1 for b in blocks]), whole.m1)
    est = exactem.ExactEM(hidden=(4,), max_iter=2, random_state=0).fit(exactem.datasets.wave(200, seed=0))
    assert np.array_equal(est.score_samples(da.from_array(exactem.datasets.wave(30, seed=1), chunks=(7, 2))).compute(),
                          est.score_samples(exactem.datasets.wave(30, seed=1)))


def test_a_shard_with_bad_rows_names_the_shard_and_row(client):
    X = exactem.datasets.wave(300, 0.1, seed=0)
    X[157, 1] = np.nan
    with pytest.raises(ValueError, match=r"shard 1 \(rows 100 to 199\).*row 157"):
        exactem.ExactEM(hidden=(4,), max_iter=2, random_state=0, client=client).fit(da.from_array(X, chunks=(100, 2)))
    with pytest.raises(ValueError, match="NaN"):  # a numpy array is checked before any work
        exactem.ExactEM(hidden=(4,), max_iter=2, client=client).fit(X)


def test_a_worker_killed_during_the_fit_does_not_change_it():
    X = exactem.datasets.wave(40000, 0.1, seed=3)
    kw = dict(hidden=(16, 16), max_iter=12, tol=0.0, random_state=0, n_shards=8)
    local = exactem.ExactEM(**kw).fit(X)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        pids = list(client.run(os.getpid).values())
        killed = []

        def kill_one_worker():
            os.kill(pids[0], signal.SIGKILL)  # the nanny starts a new worker; its tasks are redone
            killed.append(time.perf_counter())

        iterations_seen = []

        def at_iteration(iteration, est):
            iterations_seen.append((iteration, time.perf_counter()))
            if iteration == 2:
                threading.Timer(0.05, kill_one_worker).start()

        remote = exactem.ExactEM(client=client, callback=at_iteration, **kw).fit(X)
    assert killed and killed[0] < iterations_seen[-1][1], "the worker was killed after the fit ended"
    assert same_fit(local, remote)


def test_import_does_not_import_dask():
    code = "import sys, exactem; print('dask' in sys.modules or 'distributed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
