"""exactem's exact inference in latent dimensions 2, 3 and (with --s4) 4: log_likelihood and
e_step times, with the number of regions and of regions visited per point (the work grows with
both).

    python benches/bench_inference_2d3d.py [--repeats 5] [--skip-s3] [--s4]

Decoders from `Decoder.random(widths, seed=0)`, N points sampled from the model, one warm-up
call. S = 2 times are medians over the repeats; S = 3 runs once each, at rtol 1e-3, and at
rtol 1e-8 for the log-likelihood to show what the tighter tolerance costs and changes; S = 4
runs once at rtol 1e-3.
"""

import os

# OpenBLAS's worker threads busy-wait for a while after every numpy matrix product (sampling
# from the model runs the decoder in numpy) and take a core from exactem's thread pool on a
# 2-core machine: the first calls timed ran up to 2x slower. The products here are tiny, so
# numpy loses nothing with one BLAS thread.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse

import numpy as np

import exactem
from timing import median_time



def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-s3", action="store_true", help="leave out the S = 3 rows")
    parser.add_argument("--s4", action="store_true", help="also one S = 4 model (about a minute)")
    args = parser.parse_args()

    print(f"S = 2, medians of {args.repeats}")
    print(f"{'model':>16} {'noise':>6} {'N':>5} {'R':>5} {'visited':>8} {'log_likelihood':>15} {'e_step':>8} {'total':>8}")
    for widths, noise, n in [([2, 16, 16, 5], 0.1, 1000), ([2, 32, 32, 10], 0.1, 1000), ([2, 32, 32, 10], 0.001, 1000)]:
        model = exactem.DGN(exactem.Decoder.random(widths, seed=0), noise)
        X, _ = model.sample(n, seed=1)
        model.log_likelihood(X[:2])
        t_ll, _ = median_time(lambda: model.log_likelihood(X), args.repeats)
        t_es, es = median_time(lambda: model.e_step(X), args.repeats)
        visited = len(es.regions) / n
        print(f"{str(widths):>16} {noise:>6} {n:>5} {len(model.regions):>5} {visited:>8.0f} {t_ll:>13.3f} s {t_es:>6.3f} s {t_ll + t_es:>6.3f} s", flush=True)

    if not args.skip_s3:
        s3_rows(args)
    if args.s4:
        s4_row()


def s3_rows(args):
    print("\nS = 3, one run each")
    print(f"{'model':>16} {'noise':>6} {'N':>5} {'R':>5} {'log_likelihood':>15} {'e_step':>8} {'ll at rtol 1e-8':>16} {'max |diff|':>10}")
    for widths, noise, n in [([3, 5, 5, 2], 0.5, 10), ([3, 16, 16, 5], 0.1, 100)]:
        model = exactem.DGN(exactem.Decoder.random(widths, seed=0), noise, rtol=1e-3)
        X, _ = model.sample(n, seed=1)
        model.log_likelihood(X[:1])
        t_ll, ll = median_time(lambda: model.log_likelihood(X), 1)
        t_es, _ = median_time(lambda: model.e_step(X), 1)
        tight = exactem.DGN(exactem.Decoder.random(widths, seed=0), noise, rtol=1e-8)
        t_tight, ll_tight = median_time(lambda: tight.log_likelihood(X), 1)
        print(f"{str(widths):>16} {noise:>6} {n:>5} {len(model.regions):>5} {t_ll:>13.2f} s {t_es:>6.2f} s {t_tight:>14.2f} s"
              f" {np.max(np.abs(ll - ll_tight)):>10.1e}", flush=True)


def s4_row():
    print("\nS = 4, one run (rtol 1e-3)")
    print(f"{'model':>16} {'noise':>6} {'N':>5} {'R':>5} {'visited':>8} {'log_likelihood':>15} {'e_step':>8}")
    widths, noise, n = [4, 6, 6, 3], 0.1, 5
    model = exactem.DGN(exactem.Decoder.random(widths, seed=0), noise, rtol=1e-3)
    X, _ = model.sample(n, seed=1)
    t_ll, _ = median_time(lambda: model.log_likelihood(X), 1)
    t_es, es = median_time(lambda: model.e_step(X), 1)
    print(f"{str(widths):>16} {noise:>6} {n:>5} {len(model.regions):>5} {len(es.regions) / n:>8.0f} {t_ll:>13.2f} s {t_es:>6.2f} s", flush=True)


if __name__ == "__main__":
    main()
