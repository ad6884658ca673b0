"""Two or more builds of exactem on the S = 1 benchmark of bench_inference.py, alternated in one
sitting: the machine's speed drifts by tens of percent over minutes, so each round runs every
build once (in turn, the order reversed every other round) and the table gives, per build, the
median over rounds and the median of its ratio to the first build within each round.

    python benches/compare_builds.py ROUNDS DIR [DIR ...] [--one-core] [--s2]

Each DIR holds an `exactem` package (the Python sources with the built `_core` extension), as
`cp -r python/exactem DIR/` after building leaves it. Default: wall time of log_likelihood and
e_step on 4000 points, medians of 15 calls "cold" (right after the numpy peer's call, as in
bench_inference.py) and "warm" (right after another call of exactem's). With --one-core: one
worker thread (RAYON_NUM_THREADS=1) and the least CPU time of 100 back-to-back calls, which
measures the kernels' cost apart from the threads. With --s2: [2, 32, 32, 10] at noise 0.1
and 1e-3 on 300 points instead, medians of 5 calls (the least CPU time of 5 with --one-core).
"""

import argparse
import os
import subprocess
import sys

import numpy as np

# What both children start with: the least CPU time of `calls` calls of f(X), in ms.
PRELUDE = r"""
import time


def least_cpu_ms(f, X, calls):
    cpu = []
    for _ in range(calls):
        t0 = time.process_time(); f(X); cpu.append(time.process_time() - t0)
    return min(cpu) * 1e3
"""

CHILD = PRELUDE + r"""
import sys, time, numpy as np, exactem
sys.path.insert(0, BENCHES)
from bench_inference import NumpyS1
dec = exactem.Decoder.random([1, 16, 16, 2], activation="leaky_relu", alpha=0.1, seed=0)
out = []
for noise in [0.05, 1e-3, 1e-5]:
    model = exactem.DGN(dec, noise)
    X, _ = model.sample(4000, seed=0)
    peer = NumpyS1(model.regions, noise)
    model.e_step(X[:10])
    for f in [model.log_likelihood, model.e_step]:
        if ONE_CORE:
            out += [least_cpu_ms(f, X, 100)]
        else:
            cold, warm = [], []
            for _ in range(15):
                peer.log_likelihood(X)
                t0 = time.perf_counter(); f(X); cold.append(time.perf_counter() - t0)
                t0 = time.perf_counter(); f(X); warm.append(time.perf_counter() - t0)
            out += [np.median(cold) * 1e3, np.median(warm) * 1e3]
print(" ".join("%.4f" % v for v in out))
"""

# S = 2: the case of issue 4's one-second target, on fewer points (each call takes ~0.1-0.5 s).
CHILD_S2 = PRELUDE + r"""
import time, numpy as np, exactem
dec = exactem.Decoder.random([2, 32, 32, 10], seed=0)
out = []
for noise in [0.1, 1e-3]:
    model = exactem.DGN(dec, noise)
    X, _ = model.sample(300, seed=0)
    model.e_step(X[:10])
    for f in [model.log_likelihood, model.e_step]:
        if ONE_CORE:
            out += [least_cpu_ms(f, X, 5)]
        else:
            wall = []
            for _ in range(5):
                t0 = time.perf_counter(); f(X); wall.append(time.perf_counter() - t0)
            out += [np.median(wall) * 1e3]
print(" ".join("%.4f" % v for v in out))
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("rounds", type=int)
    parser.add_argument("dirs", nargs="+")
    parser.add_argument("--one-core", action="store_true")
    parser.add_argument("--s2", action="store_true")
    args = parser.parse_args()
    benches = os.path.dirname(os.path.abspath(__file__))
    child = (CHILD_S2 if args.s2 else CHILD).replace("BENCHES", repr(benches)).replace("ONE_CORE", str(args.one_core))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    if args.one_core:
        env["RAYON_NUM_THREADS"] = "1"
    results = {d: [] for d in args.dirs}
    for r in range(args.rounds):
        for d in args.dirs if r % 2 == 0 else args.dirs[::-1]:
            run = subprocess.run([sys.executable, "-c", child], env=dict(env, PYTHONPATH=d), capture_output=True, text=True, check=True)
            results[d].append([float(v) for v in run.stdout.split()])
    if args.s2:
        kinds, noises = ["CPU ms (least)" if args.one_core else "ms"], ["0.1", "1e-3"]
    else:
        kinds, noises = ["CPU ms (least)"] if args.one_core else ["cold ms", "warm ms"], ["0.05", "1e-3", "1e-5"]
    names = [f"{noise} {op} {kind}" for noise in noises for op in ["log_likelihood", "e_step"] for kind in kinds]
    base = results[args.dirs[0]]
    print("| measure | " + " | ".join(os.path.basename(os.path.normpath(d)) for d in args.dirs) + " |")
    print("|---" * (len(args.dirs) + 1) + "|")
    for i, name in enumerate(names):
        cells = []
        for d in args.dirs:
            values = [row[i] for row in results[d]]
            ratio = np.median([row[i] / b[i] for row, b in zip(results[d], base)])
            cells.append("%.3f (x%.2f)" % (np.median(values), ratio))
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
