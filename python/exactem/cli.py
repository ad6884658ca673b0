"""Command line: ``exactem fit`` trains by exact EM, ``exactem demo`` draws a partition,
``exactem compare`` sets exact EM against VAE/IWAE (also as ``python -m exactem ...``)."""

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


def _load_data(args):
    import numpy as np

    from . import datasets

    if args.data in ("wave", "circle"):
        return getattr(datasets, args.data)(args.n, args.data_noise, seed=args.seed)
    path = args.data
    try:
        if path.endswith(".npy"):
            X = np.load(path, allow_pickle=False)
        elif path.endswith(".csv"):
            X = np.loadtxt(path, delimiter=",", ndmin=2)
        else:
            raise ValueError(f"--data must be wave, circle, or a .npy/.csv file; got {path!r}")
    except OSError as err:
        raise ValueError(f"cannot read --data {path!r}: {err}") from None
    return X


def fit(args):
    import numpy as np

    from . import ExactEM
    from .plots import plot_fit

    X = _load_data(args)
    est = ExactEM(latent_dim=args.latent_dim, hidden=tuple(args.hidden), activation=args.activation,
                  alpha=args.alpha, noise=args.noise, max_iter=args.iterations, tol=args.tol,
                  weight_decay=args.weight_decay, max_regions=args.max_regions, random_state=args.seed,
                  verbose=not args.quiet, solver=args.solver)
    print(f"fitting {args.latent_dim}-D latent, hidden {tuple(args.hidden)}, {args.activation}, "
          f"{args.noise} noise, by {args.solver} on {X.shape[0]} points of dimension {X.shape[1]}")
    start = time.perf_counter()
    est.fit(X)
    elapsed = time.perf_counter() - start
    print(f"{est.n_iter_} iterations in {elapsed:.2f} s ({'converged' if est.converged_ else 'not converged'}); "
          f"exact log-likelihood per point {est.history_[0]:.4f} -> {est.history_[-1]:.4f}; "
          f"{est.n_regions_[-1]} regions")
    est.model_.save(args.model, history=np.array(est.history_), n_regions=np.array(est.n_regions_))
    print(f"wrote {args.model}")
    fig = plot_fit(est, X, seed=args.seed)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


def cost(args):
    from . import estimate_cost

    print(estimate_cost(args.widths, n_samples=args.n, activation=args.activation, alpha=args.alpha,
                        noise_var=args.noise_var, sample_size=args.sample_size, max_regions=args.max_regions,
                        seed=args.seed))
    return 0


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {value}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number; got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number; got {value}")
    return value


def add_cost_command(sub):
    """``exactem cost``: regions, time per EM iteration and memory, predicted before training."""
    p = sub.add_parser("cost", help="predict the regions, time per EM iteration and memory of a fit before training",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--widths", type=_widths, required=True, help="decoder widths S,D_1,...,D, e.g. 2,32,32,64")
    p.add_argument("--n", type=_positive_int, default=1000, help="training rows to predict for")
    p.add_argument("--activation", default="leaky_relu", choices=["relu", "leaky_relu", "abs", "linear"],
                   help="hidden activation of the random decoder measured")
    p.add_argument("--alpha", type=float, default=0.1, help="negative slope of leaky_relu")
    p.add_argument("--noise-var", type=_positive_float, default=0.1,
                   help="noise variance of the model the timed rows are drawn from (smaller: fewer regions per point)")
    p.add_argument("--sample-size", type=_positive_int, default=1000, help="rows the E-step and M-step are timed on")
    p.add_argument("--max-regions", type=_positive_int, default=1_000_000, help="refuse decoders with more regions")
    p.add_argument("--seed", type=int, default=0, help="seeds the random decoder and the timed rows")
    p.set_defaults(run=cost)


def _methods(text):
    from .compare import METHODS

    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise argparse.ArgumentTypeError(f"methods must be a comma-separated list of {','.join(METHODS)}; got {text!r}")
    return methods


def compare(args):
    from .compare import compare as run_comparison, load_data

    X = load_data(args.data, n=args.n, noise=args.data_noise, seed=0)
    result = run_comparison(X, methods=args.methods, seeds=args.seeds, latent_dim=args.latent_dim,
                            hidden=tuple(args.hidden), activation=args.activation, alpha=args.alpha, noise=args.noise,
                            test_fraction=args.test_fraction, validation_fraction=args.validation_fraction,
                            n_iter_no_change=args.n_iter_no_change, max_iter=args.max_iter,
                            time_budget=args.time_budget, max_regions=args.max_regions, name=args.data,
                            verbose=not args.quiet)
    print(result.table())
    result.to_csv(f"{args.out_prefix}.csv")
    print(f"wrote {args.out_prefix}.csv")
    fig = result.figure()
    fig.savefig(f"{args.out_prefix}.png", dpi=110)
    print(f"wrote {args.out_prefix}.png")
    return 0


def _add_compare_parser(sub):
    p = sub.add_parser(
        "compare", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="exact EM against VAE/IWAE: same data split, decoder and stopping rule, all scored exactly",
        description="Fits each method on the same seeded train/test split with the same decoder architecture, "
                    "early-stopping rule and time budget; prints a table of exact train and held-out "
                    "log-likelihoods (and held-out exact ELBO and gap for encoder methods), writes it to "
                    "PREFIX.csv and a figure to PREFIX.png.")
    p.add_argument("--data", default="wave",
                   help="wave, circle (built-in 2-D curves), digits (scikit-learn's 8x8 digits scaled to [0, 1]) "
                        "or a .npy/.csv file of rows")
    p.add_argument("--n", type=int, default=1000, help="points drawn from wave or circle")
    p.add_argument("--data-noise", type=float, default=0.1, help="noise level of wave or circle")
    p.add_argument("--methods", type=_methods, default="em,lbfgs,vae,iwae",
                   help="comma-separated methods among em, lbfgs (exact), vae, iwae (amortised variational)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds 0..N-1; each seed its own split and initialisation")
    p.add_argument("--latent-dim", type=int, default=1, help="latent dimension S")
    p.add_argument("--hidden", type=_widths, default="16,16", help="decoder hidden widths, comma-separated")
    p.add_argument("--activation", default="leaky_relu", choices=["relu", "leaky_relu", "abs", "linear"],
                   help="decoder activation")
    p.add_argument("--alpha", type=float, default=0.1, help="negative slope of leaky_relu")
    p.add_argument("--noise", default="isotropic", choices=["isotropic", "diagonal"], help="observation noise model")
    p.add_argument("--test-fraction", type=float, default=0.25, help="share of the rows held out for testing")
    p.add_argument("--validation-fraction", type=float, default=0.1,
                   help="share of the training part held out for early stopping (every method)")
    p.add_argument("--n-iter-no-change", type=int, default=10,
                   help="stop after this many iterations/epochs without a better validation log-likelihood")
    p.add_argument("--max-iter", type=int, default=500, help="iterations (epochs for vae/iwae) at most")
    p.add_argument("--time-budget", type=float, default=None, help="seconds of training per fit at most (None: no limit)")
    p.add_argument("--max-regions", type=int, default=1_000_000, help="region limit of the exact methods")
    p.add_argument("--out-prefix", default="compare", help="writes PREFIX.csv and PREFIX.png")
    p.add_argument("--quiet", action="store_true", help="no line per fit")
    p.set_defaults(run=compare)
    return p


def main(argv=None):
    parser = argparse.ArgumentParser(prog="exactem", description="Exact inference and EM for piecewise-affine deep generative networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fit", help="train a deep generative network by exact EM and draw the result")
    p.add_argument("--data", default="wave", help="wave (default), circle, or a .npy/.csv file of rows")
    p.add_argument("--n", type=int, default=1000, help="points drawn from a built-in dataset")
    p.add_argument("--data-noise", type=float, default=0.1, help="noise level of a built-in dataset")
    p.add_argument("--latent-dim", type=int, default=1)
    p.add_argument("--hidden", type=_widths, default=[16, 16], help="hidden widths, e.g. 16,16")
    p.add_argument("--activation", default="leaky_relu", choices=["relu", "leaky_relu", "abs", "linear"])
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--noise", default="isotropic", choices=["isotropic", "diagonal"])
    p.add_argument("--solver", default="em", choices=["em", "lbfgs"])
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--max-regions", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="exactem_model.npz", help="where to write the fitted model")
    p.add_argument("--out", default="exactem_fit.png", help="where to write the figure")
    p.add_argument("--quiet", action="store_true", help="no per-iteration progress")
    p.set_defaults(run=fit)
    p = sub.add_parser("demo", help="enumerate the regions of a random decoder and draw them")
    p.add_argument("--widths", type=_widths, default=[2, 32, 32, 10], help="S,D_1,...,D (default 2,32,32,10)")
    p.add_argument("--activation", default="leaky_relu", choices=["relu", "leaky_relu", "abs", "linear"])
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-regions", type=int, default=1_000_000)
    p.add_argument("--extent", type=float, default=4.0, help="half-width of the plotted square")
    p.add_argument("--out", default="partition.png")
    p.set_defaults(run=demo)
    add_cost_command(sub)
    _add_compare_parser(sub)
    args = parser.parse_args(argv)
    from . import ExactemError

    try:
        return args.run(args)
    except (ValueError, ExactemError) as err:
        print(f"exactem: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("exactem: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
