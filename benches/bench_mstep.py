"""One M-step on digits with a [2, 32, 32, 64] decoder, the hidden layers' CG operator applied by
the engine against numpy's (the reference), alternated in one run, with the time spent in the
operator and in forming the layer systems.

    python benches/bench_mstep.py [--iterations 2] [--rounds 3]

The model is the one ExactEM reaches after ``--iterations`` iterations (random_state=0)."""

import argparse
import time
import warnings

import numpy as np
from sklearn.datasets import load_digits

import exactem
from exactem import em


class Timed:
    """Wraps a callable, adding its wall time and calls up."""

    def __init__(self, inner):
        self.inner, self.seconds, self.calls = inner, 0.0, 0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    X = load_digits().data / 16.0
    est = exactem.ExactEM(latent_dim=2, hidden=(32, 32), max_iter=args.iterations, random_state=0).fit(X)
    model = est.model_
    stats = em.RegionStats(model.e_step(X), X, len(model.regions))
    patterns = model.regions.patterns
    print(f"digits {X.shape}, [2, 32, 32, 64] after {args.iterations} iterations: {len(model.regions)} regions")
    engine_operator = em._KroneckerOperator
    builds = {"numpy operator": em._KroneckerOperatorNumpy, "engine operator": engine_operator}
    results = {name: [] for name in builds}
    outputs = {}
    for _ in range(args.rounds):
        for name, operator in builds.items():
            em._KroneckerOperator = operator
            calls = Timed(lambda *a, op=operator: Timed(op(*a)))
            layer_system = Timed(em._layer_system)
            em._KroneckerOperator, em._layer_system = calls, layer_system
            made = []
            calls.inner = lambda *a, op=operator: made.append(Timed(op(*a))) or made[-1]
            start = time.perf_counter()
            outputs[name] = em.m_step(model.decoder, patterns, model.noise_var, stats)
            total = time.perf_counter() - start
            em._layer_system = layer_system.inner
            applying = sum(m.seconds for m in made)
            applications = sum(m.calls for m in made)
            results[name].append((total, applying, applications, layer_system.seconds))
    em._KroneckerOperator = engine_operator
    print("| operator | M-step | operator applications | time in them | per application | _layer_system |")
    print("|---|---|---|---|---|---|")
    for name, rows in results.items():
        total, applying, applications, forming = np.median(np.array(rows), axis=0)
        print(f"| {name} | {total:.3f} s | {applications:.0f} | {applying:.3f} s | {1e3 * applying / applications:.2f} ms | {forming:.3f} s |")
    a, b = outputs["numpy operator"], outputs["engine operator"]
    diff = max(np.max(np.abs(x - y)) / max(np.max(np.abs(x)), 1e-300) for x, y in zip([*a[0], *a[1]], [*b[0], *b[1]]))
    print(f"largest relative difference of the updated parameters (numpy vs engine operator): {diff:.2e}")


if __name__ == "__main__":
    main()
