"""Exact EM at real size: time per iteration on digits, MNIST-sized data and wide layers; how the
number of regions and the time per iteration grow; estimate_cost's predictions against the
measured times.

    python benches/bench_scale.py targets            # the issue's targets, one table
    python benches/bench_scale.py scaling --out scaling.png
    python benches/bench_scale.py cost               # predicted against measured, held-out shapes

Time per iteration is the median over the iterations of one fit (each counts the exact E-step,
the M-step, and the enumeration, set-up and exact likelihood of every proposal, rejected ones
too). Peak memory is the process's maximum resident set size, each fit in a child process.
"""

import argparse
import json
import subprocess
import sys
import time

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


def run_fit(spec, timeout=3600):
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


TARGETS = [
    ("digits", dict(data="digits", widths=[1, 32, 32, 64], iterations=20), "< 50 ms"),
    ("digits", dict(data="digits", widths=[2, 32, 32, 64], iterations=5), "< 0.5 s"),
    ("MNIST-sized (synthetic)", dict(data="synthetic", n=60000, widths=[1, 64, 64, 784], iterations=3), "< 5 s, < 4 GB"),
    ("wave, width 128", dict(data="wave", n=1000, widths=[1, 128, 128, 2], iterations=5), "< 1 s"),
    ("wave, width 256", dict(data="wave", n=1000, widths=[1, 256, 256, 2], iterations=3), "runs"),
    ("wave, S = 3", dict(data="wave", n=1000, widths=[3, 16, 16, 2], iterations=2), "< 10 s ([3, 16, 16, 5])"),
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
        counts.append(est.fit(X).n_regions_[-1])
    return counts


def iteration_time(spec):
    r = run_fit(spec)
    return r.get("per_iter", float("nan")), r.get("regions", 0)


def scaling(args):
    from exactem.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    widths = [8, 16, 32, 64, 128]
    print("| S | width | regions, random (3 seeds) | regions, EM-trained on wave (3 seeds, 30 iterations) |")
    print("|---|---|---|---|")
    for S, marker in [(1, "o"), (2, "s"), (3, "^")]:
        ws = widths if S < 3 else widths[:3]
        random_counts = [regions_of([S, w, w, 2]) for w in ws]
        trained = [trained_regions([S, w, w, 2]) if S < 3 and w <= 64 else None for w in ws]
        for w, rc, tc in zip(ws, random_counts, trained):
            print(f"| {S} | {w} | {rc} | {tc if tc else 'not trained'} |", flush=True)
        axes[0].plot(ws, [np.mean(c) for c in random_counts], marker + "-", label=f"S = {S}, random init")
        tw = [w for w, t in zip(ws, trained) if t]
        if tw:
            axes[0].plot(tw, [np.mean(t) for t in trained if t], marker + "--", label=f"S = {S}, EM-trained (wave)")
    axes[0].set(xscale="log", yscale="log", xlabel="hidden width (two hidden layers)", ylabel="number of regions",
                title="Regions of [S, w, w, 2] decoders (mean of 3 seeds)")
    axes[0].legend(fontsize=8)
    depths = [1, 2, 3, 4]
    for S, marker in [(1, "o"), (2, "s")]:
        counts = [np.mean(regions_of([S] + [16] * d + [2])) for d in depths]
        axes[1].plot(depths, counts, marker + "-", label=f"S = {S}, width 16")
        print(f"| S = {S}, width 16, depth {depths} | regions {counts} |")
    axes[1].set(yscale="log", xlabel="hidden layers", ylabel="number of regions",
                title="Regions against depth (random init, mean of 3 seeds)")
    axes[1].legend(fontsize=8)
    print("\n| varied | decoder | rows x dim | regions | time per iteration |")
    print("|---|---|---|---|---|")
    for n in [1000, 4000, 16000, 64000]:
        t, r = iteration_time(dict(data="wave", n=n, widths=[1, 16, 16, 2], iterations=10))
        print(f"| N | [1, 16, 16, 2] | {n} x 2 | {r} | {t * 1e3:.1f} ms |", flush=True)
        axes[2].plot(n, t, "ko")
    dims = [2, 16, 64, 256, 784]
    d_times = []
    for d in dims:
        t, r = iteration_time(dict(data="synthetic", n=4000, widths=[1, 32, 32, d], iterations=6))
        d_times.append(t)
        print(f"| D | [1, 32, 32, {d}] | 4000 x {d} | {r} | {t * 1e3:.1f} ms |", flush=True)
    w_times = []
    for w in [16, 32, 64, 128]:
        t, r = iteration_time(dict(data="wave", n=1000, widths=[1, w, w, 2], iterations=6))
        w_times.append(t)
        print(f"| width | [1, {w}, {w}, 2] | 1000 x 2 | {r} | {t * 1e3:.1f} ms |", flush=True)
    s_times = []
    for S in [1, 2]:
        t, r = iteration_time(dict(data="wave", n=1000, widths=[S, 16, 16, 2], iterations=6))
        s_times.append(t)
        print(f"| S | [{S}, 16, 16, 2] | 1000 x 2 | {r} | {t * 1e3:.1f} ms |", flush=True)
    axes[2].plot([], [], "ko", label="N rows, [1, 16, 16, 2] (x: N)")
    axes[2].plot(np.array(dims) * 100, d_times, "bs-", label="output dim D, [1, 32, 32, D], 4000 rows (x: 100 D)")
    axes[2].plot(np.array([16, 32, 64, 128]) * 100, w_times, "r^-", label="width w, [1, w, w, 2], 1000 rows (x: 100 w)")
    axes[2].set(xscale="log", yscale="log", xlabel="N, or 100 x D, or 100 x width (see legend)",
                ylabel="seconds per EM iteration", title="Time per exact EM iteration (2 cores)")
    axes[2].legend(fontsize=8)
    fig.suptitle("exactem: region counts and EM cost (random-init decoders unless stated; wave data)")
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("targets")
    p.add_argument("--only", default="", help="run the rows whose name contains this")
    p.set_defaults(run=targets)
    p = sub.add_parser("scaling")
    p.add_argument("--out", default="scaling.png")
    p.set_defaults(run=scaling)
    sub.add_parser("cost").set_defaults(run=cost)
    args = parser.parse_args()
    start = time.perf_counter()
    args.run(args)
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
