"""Wall time of one exactem call against its size, back to back and after the process has done
something else for 11 ms (a Python busy loop, or sleeping): what a call costs beyond its work,
mostly thread hand-offs, which a halted virtual CPU makes slow.

    python benches/bench_call_latency.py [--rounds 80]

S = 1 log_likelihood of a [1, 16, 16, 2] leaky-ReLU model at noise 1e-3, medians over the rounds.
"""

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

import exactem


def busy(seconds):
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=80)
    args = parser.parse_args()
    dec = exactem.Decoder.random([1, 16, 16, 2], activation="leaky_relu", alpha=0.1, seed=0)
    model = exactem.DGN(dec, 1e-3)
    X, _ = model.sample(4000, seed=0)
    model.log_likelihood(X)
    before = {"back to back": lambda: None, "after 11 ms busy": lambda: busy(0.011), "after 11 ms asleep": lambda: time.sleep(0.011)}
    print("| points | " + " | ".join(before) + " |")
    print("|---" * (len(before) + 1) + "|")
    for n in [16, 400, 4000]:
        times = {name: [] for name in before}
        for _ in range(args.rounds):
            for name, wait in before.items():
                wait()
                start = time.perf_counter()
                model.log_likelihood(X[:n])
                times[name].append(time.perf_counter() - start)
        print(f"| {n} | " + " | ".join("%.3f ms" % (np.median(t) * 1e3) for t in times.values()) + " |")


if __name__ == "__main__":
    main()
