"""Command line: ``exactem demo`` (also ``python -m exactem demo``)."""

import argparse
import sys
import time


def _widths(text):
    try:
        return [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"widths must be comma-separated integers like 2,32,32,10; got {text!r}")


def demo(args):
    import numpy as np

    from . import Decoder
    from .plots import _pyplot, plot_partition

    decoder = Decoder.random(args.widths, activation=args.activation, alpha=args.alpha, seed=args.seed)
    start = time.perf_counter()
    part = decoder.regions(max_regions=args.max_regions)
    elapsed = time.perf_counter() - start
    print(f"decoder {decoder}")
    print(f"{len(part)} regions of R^{decoder.latent_dim} enumerated in {elapsed * 1e3:.1f} ms")
    n_facets = [len(part.facets(i)[1]) for i in range(min(len(part), 2000))]
    print(f"facets per region: mean {np.mean(n_facets):.2f}, max {max(n_facets)}; "
          f"bounded regions: {int(part.bounded.sum())}")
    rng = np.random.default_rng(args.seed)
    z = rng.standard_normal((100_000, decoder.latent_dim))
    seen = len(np.unique(part.locate(z)))
    print(f"100000 prior samples fall in {seen} of the {len(part)} regions")
    if decoder.latent_dim == 2:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6, 6))
        plot_partition(part, ax=ax, extent=args.extent)
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
        print(f"wrote {args.out}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="exactem", description="Exact inference and EM for piecewise-affine deep generative networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="enumerate the regions of a random decoder and draw them")
    p.add_argument("--widths", type=_widths, default=[2, 32, 32, 10], help="S,D_1,...,D (default 2,32,32,10)")
    p.add_argument("--activation", default="leaky_relu", choices=["relu", "leaky_relu", "abs", "linear"])
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-regions", type=int, default=1_000_000)
    p.add_argument("--extent", type=float, default=4.0, help="half-width of the plotted square")
    p.add_argument("--out", default="partition.png")
    p.set_defaults(run=demo)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as err:
        print(f"exactem: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
