"""Exact EM in latent dimensions 2 and 3 at real size: builds of exactem side by side on the
S = 2 digits E-step, and the time of an EM iteration split into E-step and M-step.

    python benches/bench_s2s3.py estep ROUNDS DIR [DIR ...]   # builds alternated, one sitting
    python benches/bench_s2s3.py estep ROUNDS DIR [DIR ...] --s3-rows 4   # the same at S = 3
    python benches/bench_s2s3.py iteration DIR [--s3-rows 1000]

Each DIR holds an `exactem` package (the Python sources with the built `_core` extension), as
`cp -r python/exactem DIR/` after building leaves it (see compare_builds.py).

estep: digits (1797 x 64, `load_digits().data / 16`) with the model that
`ExactEM(latent_dim=2, hidden=(32, 32), random_state=0, max_iter=2)` reaches (made once by the
first DIR's build and saved, so every build gets the same model): `e_step` and
`log_likelihood` of all rows, each build once per round (the order reversed every other
round: this machine's speed drifts), medians over rounds and the median ratio to the first
build within a round. With `--s3-rows N`: instead, the first N rows drawn from
`DGN(Decoder.random([3, 16, 16, 5], seed=1), 0.05)` (the issue's S = 3 shape) with the model
that `ExactEM(latent_dim=3, hidden=(16, 16), random_state=0, max_iter=1)` reaches on 30 of them.

iteration: `ExactEM(latent_dim=2, hidden=(32, 32), max_iter=4, random_state=0)` on digits, and
`ExactEM(latent_dim=3, hidden=(16, 16), max_iter=1, random_state=0)` on `--s3-rows` rows drawn
from `DGN(Decoder.random([3, 16, 16, 5], seed=1), 0.05)` (synthetic: the issue's S = 3 shape):
time per iteration and, within it, the time in the estimator's `_e_step` (the per-region sums of every E-step, proposals included),
the M-step and the rest (medians over the iterations, each taken within one iteration).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

SAVE = r"""
import sys, warnings, exactem
from sklearn.datasets import load_digits
warnings.simplefilter("ignore")
X = load_digits().data / 16.0
est = exactem.ExactEM(latent_dim=2, hidden=(32, 32), max_iter=2, random_state=0).fit(X)
est.model_.save(sys.argv[1])
"""

SAVE_S3 = r"""
import sys, warnings, exactem
warnings.simplefilter("ignore")
X = exactem.DGN(exactem.Decoder.random([3, 16, 16, 5], seed=1), 0.05).sample(30, seed=0)[0]
est = exactem.ExactEM(latent_dim=3, hidden=(16, 16), max_iter=1, random_state=0).fit(X)
est.model_.save(sys.argv[1])
"""

ESTEP = r"""
import json, sys, time, exactem
if len(sys.argv) > 2:
    X = exactem.DGN(exactem.Decoder.random([3, 16, 16, 5], seed=1), 0.05).sample(int(sys.argv[2]), seed=0)[0]
else:
    from sklearn.datasets import load_digits
    X = load_digits().data / 16.0
model = exactem.DGN.load(sys.argv[1])
model.log_likelihood(X[:1])
out = {}
for name in ["e_step", "log_likelihood"]:
    f = getattr(model, name)
    t0, c0 = time.perf_counter(), time.process_time()
    f(X)
    out[name] = (time.perf_counter() - t0, time.process_time() - c0)
out["regions"] = len(model.regions)
print(json.dumps(out))
"""

ITERATION = r"""
import json, sys, time, warnings
import numpy as np
import exactem
from exactem import estimator
warnings.simplefilter("ignore")
spec = json.loads(sys.argv[1])
if spec["data"] == "digits":
    from sklearn.datasets import load_digits
    X = load_digits().data / 16.0
else:
    X = exactem.DGN(exactem.Decoder.random([3, 16, 16, 5], seed=1), 0.05).sample(spec["rows"], seed=0)[0]
spent = {"e_step": 0.0, "m_step": 0.0}
def timed(owner, name, key):
    f = getattr(owner, name)
    def g(*a, **k):
        t0 = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            spent[key] += time.perf_counter() - t0
    setattr(owner, name, g)
timed(estimator.ExactEM, "_e_step", "e_step")
timed(estimator.ExactEM, "_m_step", "m_step")
stamps = []
est = exactem.ExactEM(latent_dim=spec["latent_dim"], hidden=tuple(spec["hidden"]), max_iter=spec["iterations"],
                      random_state=0, callback=lambda it, e: stamps.append((time.perf_counter(), dict(spent))))
est.fit(X)
# Per iteration: from one accepted iterate to the next (the first E-step, before iteration 0's
# callback, is left out).
steps = []
for a, b in zip(stamps, stamps[1:]):
    total, e, m = b[0] - a[0], b[1]["e_step"] - a[1]["e_step"], b[1]["m_step"] - a[1]["m_step"]
    steps.append((total, e, m, total - e - m))
total, e, m, rest = (float(np.median([s[i] for s in steps])) for i in range(4))
print(json.dumps(dict(rows=len(X), regions=est.n_regions_, iterations=est.n_iter_, per_iteration=total, e_step=e, m_step=m, rest=rest)))
"""


def child(code, directory, *args):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=directory)
    run = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def estep(args):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.npz")
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=args.dirs[0])
        subprocess.run([sys.executable, "-c", SAVE_S3 if args.s3_rows else SAVE, path], env=env, check=True)
        rows = [str(args.s3_rows)] if args.s3_rows else []
        results = {d: [] for d in args.dirs}
        for r in range(args.rounds):
            for d in args.dirs if r % 2 == 0 else args.dirs[::-1]:
                results[d].append(child(ESTEP, d, path, *rows))
    regions = results[args.dirs[0]][0]["regions"]
    what = (f"synthetic S = 3, [3, 16, 16, 5], {regions} regions, {args.s3_rows} rows" if args.s3_rows
            else f"digits S = 2, [2, 32, 32, 64], {regions} regions, 1797 rows")
    print(f"{what}; wall s (CPU s), medians of {args.rounds}")
    print("| call | " + " | ".join(os.path.basename(os.path.normpath(d)) for d in args.dirs) + " |")
    print("|---" * (len(args.dirs) + 1) + "|")
    base = results[args.dirs[0]]
    for name in ["e_step", "log_likelihood"]:
        cells = []
        for d in args.dirs:
            wall = np.median([row[name][0] for row in results[d]])
            cpu = np.median([row[name][1] for row in results[d]])
            ratio = np.median([row[name][0] / b[name][0] for row, b in zip(results[d], base)])
            cells.append(f"{wall:.3f} ({cpu:.3f}) x{ratio:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def iteration(args):
    specs = [("digits S = 2", dict(data="digits", latent_dim=2, hidden=[32, 32], iterations=4)),
             (f"synthetic S = 3, {args.s3_rows} rows", dict(data="s3", rows=args.s3_rows, latent_dim=3, hidden=[16, 16], iterations=1))]
    print("| data | regions | time per iteration | E-step (all calls) | M-step | rest |")
    print("|---|---|---|---|---|---|")
    for name, spec in specs:
        r = child(ITERATION, args.dirs[0], json.dumps(spec))
        print(f"| {name} | {r['regions']} | {r['per_iteration']:.3g} s | {r['e_step']:.3g} s | {r['m_step']:.3g} s | {r['rest']:.3g} s |", flush=True)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("estep")
    p.add_argument("rounds", type=int)
    p.add_argument("dirs", nargs="+")
    p.add_argument("--s3-rows", type=int, default=0)
    p = sub.add_parser("iteration")
    p.add_argument("dirs", nargs=1)
    p.add_argument("--s3-rows", type=int, default=1000)
    args = parser.parse_args()
    {"estep": estep, "iteration": iteration}[args.command](args)


if __name__ == "__main__":
    main()
