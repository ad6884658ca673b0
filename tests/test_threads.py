"""The extension's worker threads: one per allowed CPU and kept there by default, left free
where asked or where there are fewer of them, the same results bit for bit either way, and a
pool of its own in each forked process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

# Each child process builds its own pool from its environment, then reports it with the bits of
# an E-step over several batches (a pool runs them on whichever worker is free).
CHILD = """
import json, os, numpy as np, exactem
from exactem import _core
dec = exactem.Decoder.random([1, 8, 8, 2], activation="leaky_relu", alpha=0.1, seed=3)
model = exactem.DGN(dec, 0.01)
X, _ = model.sample(3000, seed=4)
es = model.e_step(X)
digest = [es.log_likelihood.tobytes().hex()[:64], float(np.sum(es.m1.data)), float(np.sum(es.m2.data))]
print(json.dumps({"cpus": sorted(os.sched_getaffinity(0)), "workers": _core.worker_cpus(),
                  "ll": model.log_likelihood(X).tobytes().hex(), "digest": digest}))
"""


def run_child(script=CHILD, **env):
    child_env = {k: v for k, v in os.environ.items() if k not in ("RAYON_NUM_THREADS", "EXACTEM_PIN_THREADS")}
    child_env.update(env)
    out = subprocess.run([sys.executable, "-c", script], env=child_env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def default():
    return run_child()


def test_one_worker_per_cpu_each_kept_on_its_own(default):
    cpus, workers = default["cpus"], default["workers"]
    assert len(workers) == len(cpus)
    if len(cpus) > 1:
        assert sorted(w[0] for w in workers) == cpus
        assert all(len(w) == 1 for w in workers)
    else:
        assert workers == [cpus]


def test_workers_run_anywhere_when_asked_or_fewer_than_cpus(default):
    cpus = default["cpus"]
    free = run_child(EXACTEM_PIN_THREADS="0")
    assert free["workers"] == [cpus] * len(cpus)
    one = run_child(RAYON_NUM_THREADS="1")
    assert one["workers"] == [cpus]
    # Same bits whatever the threads and where they run.
    for other in (free, one):
        assert other["ll"] == default["ll"]
        assert other["digest"] == default["digest"]


@pytest.mark.parametrize("parent_first", [False, True], ids=["forked-after-import", "forked-after-computing"])
def test_forked_children_compute(parent_first):
    # Each process has a pool of its own: a child forked after the parent's first computation
    # (multiprocessing's default on Linux) would otherwise wait forever for threads that are not
    # in it.
    script = """
import multiprocessing as mp, sys
import exactem

def loglik(seed):
    dec = exactem.Decoder.random([1, 4, 2], seed=seed)
    model = exactem.DGN(dec, 0.1)
    X, _ = model.sample(500, seed=seed)
    return float(model.log_likelihood(X).sum())

if __name__ == "__main__":
    first = [loglik(0), loglik(1)] if sys.argv[1] == "True" else None
    with mp.get_context("fork").Pool(2) as pool:
        children = pool.map(loglik, [0, 1])
    assert children == (first or [loglik(0), loglik(1)]), children
    print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script, str(parent_first)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_calls_start_no_threads_but_the_pools():
    # The calling thread shares its batches with the extension's pool: no other pool (rayon's
    # global one, say) may start behind it, for large calls or small, at S = 1, 2 and 3.
    child = """
import json, os, exactem
for S, widths, n in [(1, [1, 16, 16, 2], 500), (2, [2, 8, 8, 3], 500), (3, [3, 6, 6, 3], 100)]:
    model = exactem.DGN(exactem.Decoder.random(widths, seed=0), 0.1)
    X, _ = model.sample(n, seed=1)
    model.log_likelihood(X), model.e_step(X), model.log_likelihood(X[:3]), model.e_step(X[:1])
    model.posterior(X[0]).sample(50, seed=2)
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
print(json.dumps({"names": names, "workers": len(exactem._core.worker_cpus())}))
"""
    out = run_child(child, OPENBLAS_NUM_THREADS="1")
    pool = sorted(name for name in out["names"] if name.startswith("exactem-"))
    assert pool == [f"exactem-{i}" for i in range(out["workers"])]
    assert len(out["names"]) == out["workers"] + 1, out["names"]


def test_ctrl_c_interrupts_a_long_log_likelihood():
    # The calling thread computes batches itself and checks for signals between them.
    import signal
    import threading
    import time

    import exactem

    model = exactem.DGN(exactem.Decoder.random([2, 32, 32, 10], seed=0), 0.1)
    X, _ = model.sample(100_000, seed=1)
    model.log_likelihood(X[:5])  # the regions and their constants, outside the timed call
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    start = time.perf_counter()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        model.log_likelihood(X)  # ~40 s uninterrupted on 2 cores
    assert time.perf_counter() - start < 5
    # The engine is usable after an interrupted call.
    assert np.isfinite(model.log_likelihood(X[:5])).all()


def test_one_thread_asked_for_one_thread_computes():
    # RAYON_NUM_THREADS=1: the calling thread shares its batches with no worker (CPU time of
    # each thread from /proc, in clock ticks, over ~0.1 s of log-likelihoods).
    child = """
import json, os, exactem
model = exactem.DGN(exactem.Decoder.random([1, 16, 16, 2], activation="leaky_relu", alpha=0.1, seed=3), 0.01)
X, _ = model.sample(4000, seed=4)
for _ in range(100):
    model.log_likelihood(X)
ticks = {}
for t in os.listdir("/proc/self/task"):
    fields = open(f"/proc/self/task/{t}/stat").read().rsplit(")", 1)[1].split()
    name = open(f"/proc/self/task/{t}/comm").read().strip()
    ticks[name] = int(fields[11]) + int(fields[12])
print(json.dumps(ticks))
"""
    ticks = run_child(child, OPENBLAS_NUM_THREADS="1", RAYON_NUM_THREADS="1")
    workers = {name: t for name, t in ticks.items() if name.startswith("exactem-")}
    assert list(workers) == ["exactem-0"]
    assert workers["exactem-0"] <= 1, ticks
    assert sum(ticks.values()) >= 5, ticks


def test_calls_from_several_python_threads_at_once_give_the_same_bits():
    # Each calling thread shares its batches with the one pool: concurrent callers must not
    # take each other's jobs or results.
    import threading

    import exactem

    models = [exactem.DGN(exactem.Decoder.random([1, 16, 16, 2], activation="leaky_relu", alpha=0.1, seed=s), 0.01) for s in (1, 2)]
    data = [m.sample(3000, seed=5)[0] for m in models]
    want = [(m.log_likelihood(X), m.e_step(X).m1) for m, X in zip(models, data)]
    got, errors = {}, []

    def work(k):
        try:
            m, X = models[k % 2], data[k % 2]
            for r in range(5):
                got[(k, r)] = (m.log_likelihood(X), m.e_step(X).m1)
        except Exception as err:  # reported below, not lost in the thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(got) == 20
    for (k, _), (ll, m1) in got.items():
        assert np.array_equal(ll, want[k % 2][0]) and np.array_equal(m1, want[k % 2][1])
