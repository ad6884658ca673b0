"""Exact EM over Dask against the same fit on one machine: time per iteration and bytes moved.

    python benches/bench_dask.py [--rows 1000000] [--iterations 3]

One fit per row of the table, [1, 16, 16, 2] on wave, the same shards everywhere (so every fit
has the same bits, checked): locally (unsharded, and sharded as the cluster is), then on a
LocalCluster of worker processes with 1 and 2 workers of one thread each. Time per iteration is
the median over the fit's iterations. Bytes per iteration are the pickled sizes of what an
iteration sends: the model once to each worker and each shard's per-region sums back (the data
travel once, at the start, and are not counted).
"""

import argparse
import pickle
import time

import numpy as np

import exactem
from exactem.distributed import Shards, model_spec


def timed_fit(X, **kw):
    times = []
    est = exactem.ExactEM(latent_dim=1, hidden=(16, 16), random_state=0, tol=0.0,
                          callback=lambda it, e: times.append(time.perf_counter()), **kw)
    start = time.perf_counter()
    est.fit(X)
    return est, float(np.median(np.diff(times))), times[0] - start


def main():
    from dask.distributed import Client, LocalCluster

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--shards", type=int, default=8)
    args = parser.parse_args()
    X = exactem.datasets.wave(args.rows, 0.1, seed=0)
    kw = dict(max_iter=args.iterations)
    rows = []
    reference, t, t0 = timed_fit(X, **kw)
    rows.append(("local, unsharded", t, t0, None))
    sharded, t, t0 = timed_fit(X, n_shards=args.shards, **kw)
    rows.append((f"local, {args.shards} shards", t, t0, None))
    model = sharded.model_
    spec_bytes = len(pickle.dumps(model_spec(model.decoder, model.noise_var, model.max_regions)))
    stats = [Shards(part, 1).statistics(model.decoder, model.noise_var, model.max_regions)
             for part in np.array_split(X, args.shards)]
    sums_bytes = sum(len(pickle.dumps(s)) for s in stats)
    for workers in [1, 2]:
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            est, t, t0 = timed_fit(X, n_shards=args.shards, client=client, **kw)
            same = est.history_ == sharded.history_
            rows.append((f"LocalCluster, {workers} worker process{'es' if workers > 1 else ''}", t, t0, same))
            moved = workers * spec_bytes + sums_bytes
    print(f"[1, 16, 16, 2] on wave, N = {args.rows}, {args.shards} shards, {len(model.regions)} regions; "
          f"data {X.nbytes / 2**20:.0f} MiB")
    print("| where | time per iteration | start (to iteration 0) | same bits as local sharded |")
    print("|---|---|---|---|")
    for name, t, t0, same in rows:
        print(f"| {name} | {t:.3f} s | {t0:.2f} s | {'' if same is None else same} |")
    print(f"\nbytes per iteration: model {spec_bytes} B to each worker + per-region sums {sums_bytes} B back "
          f"({args.shards} shards) = {moved} B with 2 workers, against {X.nbytes} B of data")


if __name__ == "__main__":
    main()
