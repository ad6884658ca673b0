"""Exact EM at real size: time per iteration on digits, MNIST-sized data and wide layers; how the
number of regions and the time per iteration grow; estimate_cost's predictions against the
measured times.

    python benches/bench_scale.py targets            # the issue's targets, one table
    python benches/bench_scale.py scaling --out scaling.png
    python benches/bench_scale.py cost               # predicted against measured, held-out shapes
    python benches/bench_scale.py compare SPEC DIR [DIR ...] [--rounds 3]   # builds alternated

`compare` runs one fit (SPEC as JSON, as in TARGETS: e.g. '{"data": "wave", "n": 20, "widths":
[3, 16, 16, 2], "iterations": 3}') with each DIR first on the path (a copy of the built
package, as benches/compare_builds.py makes), the builds alternated round by round (the order
reversed every other round: this machine's speed drifts), and prints each build's time per
iteration in every round.

Time per iteration is the median over the iterations of one fit (each counts the exact E-step,
the M-step, and the enumeration, set-up and exact likelihood of every proposal, rejected ones
too). Peak memory is the process's maximum resident set size, each fit in a child process.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np

import exactem

CHILD = r"""
import json, resource, sys, time, warnings
import numpy as np
import exactem
warnings.simplefilter("ignore")
spec = json.loads(sys.argv[1])
if spec["data"] == "digits":
    from sklearn.datasets import load_digits
    X = load_digits().data / 16.0
elif spec["data"] == "wave":
    X = exactem.datasets.wave(spec["n"], 0.1, seed=0)
else:  # "synthetic": rows drawn from a random decoder of the fitted shape
    gen = exactem.DGN(exactem.Decoder.random(spec["widths"], seed=1), 0.05)
    X = gen.sample(spec["n"], seed=0)[0]
times = []
est = exactem.ExactEM(latent_dim=spec["widths"][0], hidden=tuple(spec["widths"][1:-1]), max_iter=spec["iterations"],
                      random_state=0, callback=lambda it, e: times.append(time.perf_counter()))
start = time.perf_counter()
est.fit(X)
per_iter = np.diff(times) if len(times) > 1 else [time.perf_counter() - start]
print(json.dumps(dict(rows=len(X), dim=X.shape[1], regions=est.n_regions_[-1], iterations=est.n_iter_,
                      init=times[0] - start, per_iter=float(np.median(per_iter)), ll=est.history_[-1],
                      peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def run_fit(spec, timeout=3600, path=None):
    env = None if path is None else dict(os.environ, PYTHONPATH=path)
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True,
                         timeout=timeout, env=env)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


TARGETS = [
    ("digits", dict(data="digits", widths=[1, 32, 32, 64], iterations=20), "< 50 ms"),
    ("digits", dict(data="digits", widths=[2, 32, 32, 64], iterations=5), "< 0.5 s"),
    ("MNIST-sized (synthetic)", dict(data="synthetic", n=60000, widths=[1, 64, 64, 784], iterations=3), "< 5 s, < 4 GB"),
    ("wave, width 128", dict(data="wave", n=1000, widths=[1, 128, 128, 2], iterations=5), "< 1 s"),
    ("wave, width 256", dict(data="wave", n=1000, widths=[1, 256, 256, 2], iterations=3), "runs"),
    ("S = 3 (100 rows; the target is for 1000)", dict(data="synthetic", n=100, widths=[3, 16, 16, 5], iterations=2),
     "< 10 s at 1000 rows"),
]


def targets(args):
    print("| data | decoder | rows x dim | regions | time per iteration | peak memory | target |")
    print("|---|---|---|---|---|---|---|")
    for name, spec, target in TARGETS:
        if args.only and args.only not in name:
            continue
        r = run_fit(spec)
        if "error" in r:
            print(f"| {name} | {spec['widths']} | | | failed: {r['error']} | | {target} |", flush=True)
            continue
        print(f"| {name} | {spec['widths']} | {r['rows']} x {r['dim']} | {r['regions']} | "
              f"{r['per_iter']:.3g} s | {r['peak_mib']:.0f} MiB | {target} |", flush=True)


def regions_of(widths, seeds=3):
    return [len(exactem.Decoder.random(widths, seed=s).regions()) for s in range(seeds)]


def trained_regions(widths, seeds=3, iterations=30):
    X = exactem.datasets.wave(1000, 0.1, seed=0)
    counts = []
    for s in range(seeds):
        est = exactem.ExactEM(latent_dim=widths[0], hidden=tuple(widths[1:-1]), max_iter=iterations, random_state=s)
        with warnings.catch_warnings():  # a fixed budget of 30 iterations: not converging is expected
            warnings.simplefilter("ignore")
            counts.append(est.fit(X).n_regions_[-1])
    return counts


def iteration_time(spec):
    r = run_fit(spec)
    return r.get("per_iter", float("nan")), r.get("regions", 0)


def _region_counts(path):
    """Region counts against width (random and EM-trained) and depth; read from ``path`` if it
    exists (they take minutes and do not depend on the machine's speed), else counted and
    written there."""
    import os

    if path and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    counts = {"width": {}, "depth": {}}
    for S in (1, 2, 3):
        ws = [8, 16, 32, 64, 128] if S < 3 else [8, 16, 32]
        counts["width"][str(S)] = [
            (w, regions_of([S, w, w, 2]), trained_regions([S, w, w, 2]) if w <= {1: 64, 2: 32, 3: 0}[S] else None)
            for w in ws]
    for S in (1, 2):
        counts["depth"][str(S)] = [(d, float(np.mean(regions_of([S] + [16] * d + [2])))) for d in (1, 2, 3, 4)]
    if path:
        with open(path, "w") as f:
            json.dump(counts, f)
    return counts


def scaling(args):
    from exactem.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(16, 9.5))
    (ax_width, ax_depth, ax_s), (ax_n, ax_d, ax_w) = axes
    regions = _region_counts(args.regions)
    print("| S | width | regions, random (3 seeds) | regions, EM-trained on wave (3 seeds, 30 iterations) |")
    print("|---|---|---|---|")
    for S, marker in [(1, "o"), (2, "s"), (3, "^")]:
        rows = regions["width"][str(S)]
        ws = [w for w, _, _ in rows]
        for w, rc, tc in rows:
            print(f"| {S} | {w} | {rc} | {tc if tc else 'not trained'} |", flush=True)
        ax_width.plot(ws, [np.mean(rc) for _, rc, _ in rows], marker + "-", label=f"S = {S}, random init")
        trained = [(w, np.mean(tc)) for w, _, tc in rows if tc]
        if trained:
            ax_width.plot(*zip(*trained), marker + "--", label=f"S = {S}, EM-trained on wave")
    ax_width.set(xscale="log", yscale="log", xlabel="hidden width w (two hidden layers)", ylabel="number of regions",
                 title="Regions of [S, w, w, 2] decoders (mean of 3 seeds)")
    ax_width.legend(fontsize=8)
    for S, marker in [(1, "o"), (2, "s")]:
        depths, counts = zip(*regions["depth"][str(S)])
        ax_depth.plot(depths, counts, marker + "-", label=f"S = {S}, width 16")
        print(f"| S = {S}, width 16, depth {list(depths)} | regions {list(counts)} |")
    ax_depth.set(yscale="log", xlabel="number of hidden layers (width 16)", ylabel="number of regions",
                 title="Regions against depth (random init, mean of 3 seeds)")
    ax_depth.legend(fontsize=8)
    if args.regions_only:
        return

    print("\n| varied | decoder | rows x dim | regions | time per iteration |")
    print("|---|---|---|---|---|")

    def timed(label, spec):
        t, r = iteration_time(spec)
        rows, dim = spec["n"], spec["widths"][-1]
        print(f"| {label} | {spec['widths']} | {rows} x {dim} | {r} | {t * 1e3:.1f} ms |", flush=True)
        return t

    ns = [1000, 4000, 16000, 64000]
    ax_n.plot(ns, [timed("N", dict(data="wave", n=n, widths=[1, 16, 16, 2], iterations=10)) for n in ns], "ko-",
              label="[1, 16, 16, 2], wave")
    ax_n.set(xscale="log", yscale="log", xlabel="training rows N", ylabel="seconds per EM iteration",
             title="Time per EM iteration against N")
    dims = [2, 16, 64, 256, 784]
    ax_d.plot(dims, [timed("D", dict(data="synthetic", n=4000, widths=[1, 32, 32, d], iterations=6)) for d in dims],
              "bs-", label="[1, 32, 32, D], 4000 rows drawn from a random decoder")
    ax_d.set(xscale="log", yscale="log", xlabel="output dimension D", ylabel="seconds per EM iteration",
             title="Time per EM iteration against D")
    ws = [16, 32, 64, 128]
    ax_w.plot(ws, [timed("width", dict(data="wave", n=1000, widths=[1, w, w, 2], iterations=6)) for w in ws], "r^-",
              label="[1, w, w, 2], wave, 1000 rows")
    ax_w.set(xscale="log", yscale="log", xlabel="hidden width w (two hidden layers)",
             ylabel="seconds per EM iteration", title="Time per EM iteration against width")
    # S = 3 costs ~1 s per row per iteration: fewer rows, the time shown per row.
    s_rows = {1: 1000, 2: 1000, 3: 20}
    per_row = [timed("S", dict(data="wave", n=s_rows[S], widths=[S, 16, 16, 2], iterations=3)) / s_rows[S]
               for S in (1, 2, 3)]
    ax_s.plot([1, 2, 3], np.array(per_row) * 1e3, "md-", label="[S, 16, 16, 2], wave (N = 1000; 20 for S = 3)")
    ax_s.set(yscale="log", xticks=[1, 2, 3], xlabel="latent dimension S", ylabel="ms per EM iteration per row",
             title="Time per EM iteration against S")
    for ax in (ax_n, ax_d, ax_w, ax_s):
        ax.legend(fontsize=8)
    fig.suptitle("exactem: number of regions and exact EM time per iteration (2 cores; random-init decoders unless "
                 "stated)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"\nwrote {args.out}")


def cost(args):
    print("| decoder | rows | predicted s / iteration | measured | ratio | predicted memory | measured peak |")
    print("|---|---|---|---|---|---|---|")
    for widths, data, n in [([1, 32, 32, 2], "wave", 4000), ([1, 64, 64, 10], "synthetic", 8000),
                            ([2, 16, 16, 2], "wave", 1000), ([1, 32, 32, 784], "synthetic", 8000)]:
        predicted = exactem.estimate_cost(widths, n_samples=n, sample_size=min(n, 1000))
        spec = dict(data=data, n=n, widths=widths, iterations=8)
        r = run_fit(spec)
        print(f"| {widths} | {n} | {predicted.iteration_seconds:.3g} | {r.get('per_iter', float('nan')):.3g} | "
              f"{r.get('per_iter', float('nan')) / predicted.iteration_seconds:.2f} | "
              f"{predicted.memory_bytes / 2**20:.0f} MiB | {r.get('peak_mib', float('nan')):.0f} MiB |", flush=True)


def compare(args):
    spec = json.loads(args.spec)
    times = {d: [] for d in args.dirs}
    for r in range(args.rounds):
        for d in args.dirs if r % 2 == 0 else args.dirs[::-1]:
            times[d].append(run_fit(spec, path=d).get("per_iter", float("nan")))
    print(f"{spec}: seconds per iteration, round by round")
    for d in args.dirs:
        print(f"| {d} | " + " | ".join(f"{t:.3g}" for t in times[d]) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("targets")
    p.add_argument("--only", default="", help="run the rows whose name contains this")
    p.set_defaults(run=targets)
    p = sub.add_parser("scaling")
    p.add_argument("--out", default="scaling.png")
    p.add_argument("--regions", default="scaling_regions.json",
                   help="region counts cached here (counted and written if the file does not exist)")
    p.add_argument("--regions-only", action="store_true", help="count the regions, skip the timings")
    p.set_defaults(run=scaling)
    sub.add_parser("cost").set_defaults(run=cost)
    p = sub.add_parser("compare")
    p.add_argument("spec")
    p.add_argument("dirs", nargs="+")
    p.add_argument("--rounds", type=int, default=3)
    p.set_defaults(run=compare)
    args = parser.parse_args()
    start = time.perf_counter()
    args.run(args)
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
