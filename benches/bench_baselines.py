"""What the VAE and IWAE baselines reach on the built-in data, beside exact EM, all on the
decoder [1, 16, 16, 2] and scored by the exact held-out log-likelihood per point.

    python benches/bench_baselines.py [--data circle wave] [--seeds 0] [--max-epochs 500]
    python benches/bench_baselines.py --curves 4000     # long runs: held-out every 1000 epochs

Data: exactem.datasets.<name>(1000, noise=0.1, seed=0), split 75/25 by
exactem.datasets.train_test_split(X, 0.25, seed=0). Every estimator uses its default settings
apart from what a row names. The first row ("jit warm-up") is a one-epoch VAE and IWAE fit that
pays JAX's compilation; the rows after it reuse the compiled steps, so their times are training
time only (add the warm-up once per process and step shape for a cold start).
"""

import argparse
import time
import warnings

import numpy as np

import exactem
from exactem.baselines import IWAE, VAE
from sklearn.exceptions import ConvergenceWarning


def run(make, X_train, X_test):
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = make().fit(X_train)
    elapsed = time.perf_counter() - start
    return est.score(X_test), elapsed, est


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", nargs="+", default=["circle", "wave"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--max-epochs", type=int, default=500)
    parser.add_argument("--curves", type=int, default=0, metavar="EPOCHS",
                        help="instead: train EPOCHS epochs (seed 0) and print the held-out score every 1000")
    args = parser.parse_args()
    if args.curves:
        return curves(args)
    forever = 10**9  # n_iter_no_change that never fires: train for exactly max_epochs
    for name in args.data:
        X = getattr(exactem.datasets, name)(1000, 0.1, seed=0)
        X_train, X_test = exactem.datasets.train_test_split(X, test_fraction=0.25, seed=0)
        tenth = float(X_train.var(axis=0).mean()) / 10
        print(f"\n{name}: {len(X_train)} train, {len(X_test)} test, decoder [1, 16, 16, 2]")
        print(f"{'estimator':58s} {'seed':>4s} {'held-out ll/pt':>14s} {'time s':>8s} {'epochs/iters':>12s}")
        rows = [
            ("jit warm-up: VAE + IWAE, 1 epoch each", None),
            ("VAE defaults (stopping rule)", lambda s: VAE(random_state=s)),
            ("VAE max_epochs, no stopping rule", lambda s: VAE(random_state=s, max_epochs=args.max_epochs,
                                                                 n_iter_no_change=forever)),
            ("VAE early_stopping (exact held-out ll on 10 %)", lambda s: VAE(random_state=s, early_stopping=True,
                                                                                max_epochs=args.max_epochs)),
            ("IWAE k=5 defaults (stopping rule)", lambda s: IWAE(random_state=s)),
            ("IWAE k=5 max_epochs, no stopping rule", lambda s: IWAE(random_state=s, max_epochs=args.max_epochs,
                                                                       n_iter_no_change=forever)),
            ("VAE init_noise_var = data variance / 10 (NOT default)",
             lambda s: VAE(random_state=s, max_epochs=args.max_epochs, n_iter_no_change=forever,
                           init_noise_var=tenth)),
            ("IWAE k=5 init_noise_var = data variance / 10 (NOT default)",
             lambda s: IWAE(random_state=s, max_epochs=args.max_epochs, n_iter_no_change=forever,
                            init_noise_var=tenth)),
            ("VAE init=pca, no stopping rule", lambda s: VAE(random_state=s, init="pca", max_epochs=args.max_epochs,
                                                              n_iter_no_change=forever)),
            ("ExactEM defaults (init=pca)", lambda s: exactem.ExactEM(random_state=s)),
            ("ExactEM init=random (the VAE's initial model)", lambda s: exactem.ExactEM(random_state=s,
                                                                                       init="random")),
        ]
        for label, make in rows:
            for seed in args.seeds:
                if make is None:
                    start = time.perf_counter()
                    for cls in (VAE, IWAE):
                        run(lambda: cls(random_state=seed, max_epochs=1), X_train, X_test)
                    print(f"{label:58s} {seed:4d} {'':>14s} {time.perf_counter() - start:8.2f}")
                    break
                ll, elapsed, est = run(lambda: make(seed), X_train, X_test)
                print(f"{label:58s} {seed:4d} {ll:14.4f} {elapsed:8.2f} {est.n_iter_:12d}", flush=True)


def curves(args):
    """VAE and IWAE from the default start and from a noise variance a tenth of the data's, trained
    for a fixed number of epochs: (epoch, held-out exact log-likelihood per point, seconds)."""
    for name in args.data:
        X = getattr(exactem.datasets, name)(1000, 0.1, seed=0)
        X_train, X_test = exactem.datasets.train_test_split(X, test_fraction=0.25, seed=0)
        tenth = float(X_train.var(axis=0).mean()) / 10
        for label, cls, kw in [("VAE default start", VAE, {}), ("VAE init_noise_var=var/10", VAE, dict(init_noise_var=tenth)),
                               ("IWAE k=5 default start", IWAE, {}),
                               ("IWAE k=5 init_noise_var=var/10", IWAE, dict(init_noise_var=tenth))]:
            points = []

            def record(epoch, est):
                if epoch % 1000 == 0:
                    points.append((epoch, round(est.score(X_test), 4), round(est.history_[-1]["time"], 1)))

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                cls(random_state=0, max_epochs=args.curves, n_iter_no_change=10**9, callback=record, **kw).fit(X_train)
            print(f"{name} {label}: (epoch, held-out ll/pt, s) {points}", flush=True)


if __name__ == "__main__":
    main()
