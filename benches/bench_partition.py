"""Exact enumeration against what people do today: push many latent samples through the
decoder with numpy and collect the distinct activation patterns.

    python benches/bench_partition.py [--samples 1000000] [--repeats 5]

Both run in one process on the same decoders; times are medians over the repeats.
"""

import argparse

import numpy as np

import exactem
from timing import median_time


def sampled_patterns(dec, Z, chunk=200_000):
    """Distinct activation patterns of the points Z, numpy only (the peer)."""
    weights, biases, slopes = dec.weights, dec.biases, dec.slopes
    keys = set()
    for start in range(0, len(Z), chunk):
        h = Z[start:start + chunk]
        bits = []
        for layer, (w, b) in enumerate(zip(weights[:-1], biases[:-1])):
            h = h @ w.T + b
            bits.append(h >= 0)
            h = np.where(h >= 0, h, slopes[layer] * h)
        packed = np.packbits(np.concatenate(bits, axis=1), axis=1)
        keys.update(map(bytes, np.unique(packed, axis=0)))
    return keys



def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    nets = [[1, 256, 256, 784], [2, 32, 32, 2], [2, 64, 64, 10], [3, 32, 32, 2]]
    print(f"| decoder | regions (exact) | exact enumeration | sampling {args.samples:.0e} from N(0, I) | found | missed "
          f"| sampling uniform on [-20, 20]^S | found | missed | speed-up vs prior sampling |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for widths in nets:
        dec = exactem.Decoder.random(widths, activation="leaky_relu", alpha=0.1, seed=0)
        S = widths[0]
        t_exact, part = median_time(dec.regions, args.repeats)
        exact_keys = set(map(bytes, np.packbits(part.patterns, axis=1)))
        Z_prior = rng.standard_normal((args.samples, S))
        Z_box = rng.uniform(-20, 20, size=(args.samples, S))
        t_prior, prior_keys = median_time(lambda: sampled_patterns(dec, Z_prior), max(1, args.repeats // 2))
        t_box, box_keys = median_time(lambda: sampled_patterns(dec, Z_box), max(1, args.repeats // 2))
        assert prior_keys <= exact_keys and box_keys <= exact_keys, "sampling found a region enumeration missed"
        print(f"| {widths} | {len(part)} | {t_exact * 1e3:.1f} ms | {t_prior * 1e3:.0f} ms | {len(prior_keys)} "
              f"| {len(part) - len(prior_keys)} | {t_box * 1e3:.0f} ms | {len(box_keys)} | {len(part) - len(box_keys)} "
              f"| {t_prior / t_exact:.0f}x |")


if __name__ == "__main__":
    main()
