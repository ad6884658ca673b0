"""Command line: ``exactem fit`` trains by exact EM, ``exactem demo`` draws a partition,
``exactem cost`` predicts what a fit costs, ``exactem compare`` sets exact EM against VAE/IWAE
(also as ``python -m exactem ...``).

Every input is checked before any training starts: the data file (its shape, a CSV header,
non-numeric fields, NaN rows named by their line), the numeric flags' ranges, and whether the
output files can be written. Errors are one line, ``exactem: error: ...``, and exit status 2.
"""

import argparse
import csv
import math
import os
import sys
import textwrap
import time
import warnings

BUILTIN_DATA = ("wave", "circle", "digits")
ACTIVATIONS = ["relu", "leaky_relu", "abs", "linear"]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help of every flag; descriptions keep their paragraphs (see _paragraphs)."""


def _paragraphs(*texts):
    return "\n\n".join(textwrap.fill(t, 88) for t in texts)


def _widths(text):
    try:
        return [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"widths must be comma-separated integers like 2,32,32,10; got {text!r}")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"exactem: warning: {message}", file=sys.stderr)


def _require(condition, message):
    if not condition:
        raise ValueError(message)


def _check_writable(path, flag):
    """Fail now, not after training, if ``path`` cannot be written."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    _require(not os.path.isdir(path), f"{flag} {path!r} is a directory; give a file name")
    _require(os.path.isdir(parent), f"{flag}: directory {parent!r} does not exist")
    if os.path.exists(path):
        _require(os.access(path, os.W_OK), f"{flag}: {path!r} exists and is not writable")
    else:
        _require(os.access(parent, os.W_OK), f"{flag}: cannot write to directory {parent!r}")


def _check_figure_path(path, flag):
    from matplotlib.figure import Figure

    _check_writable(path, flag)
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    formats = Figure().canvas.get_supported_filetypes()
    _require(ext in formats, f"{flag} {path!r}: the file name must end in one of "
                             f"{', '.join('.' + f for f in sorted(formats))} (it sets the image format)")


# -- data -----------------------------------------------------------------------------------------

def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def _read_csv(path, skip_header):
    """Rows of floats from a comma-separated file; a first line that is not all numbers is a
    header and is skipped (as is the first line with ``skip_header``). Empty fields are NaN.
    Returns (X, line numbers of the rows)."""
    with open(path, newline="") as handle:
        lines = [(i + 1, row) for i, row in enumerate(csv.reader(handle)) if row and any(f.strip() for f in row)]
    if lines and (skip_header or not all(_is_number(f) for f in lines[0][1] if f.strip())):
        lines = lines[1:]
    _require(lines, f"--data {path!r} has no data rows")
    width = len(lines[0][1])
    rows = []
    for line, fields in lines:
        _require(len(fields) == width, f"--data {path!r} line {line} has {len(fields)} fields, but the first "
                                       f"data line has {width}")
        row = []
        for col, field in enumerate(fields):
            field = field.strip()
            if field == "":
                row.append(math.nan)
            elif _is_number(field):
                row.append(float(field))
            else:
                raise ValueError(f"--data {path!r} line {line}, column {col + 1}: {field!r} is not a number "
                                 f"(only the first line may be a header)")
        rows.append(row)
    import numpy as np

    return np.array(rows, dtype=np.float64), [line for line, _ in lines]


def _read_npy(path):
    import numpy as np

    try:
        X = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"--data {path!r} is not a plain numeric .npy array ({err})") from None
    _require(isinstance(X, np.ndarray) and X.dtype.kind in "biuf",
             f"--data {path!r} must hold numbers; got dtype {getattr(X, 'dtype', type(X).__name__)}")
    if X.ndim == 1:
        # n numbers are n observations of dimension 1 (a 1-D density), as the README says.
        X = X.reshape(-1, 1)
    _require(X.ndim == 2, f"--data {path!r} must be a 2-D array (n_points, n_features) or a 1-D array of "
                          f"n_points numbers; got shape {X.shape}")
    return X.astype(np.float64), None


def _load_data(args):
    """The data as an (n, D) float array, checked: a clear ValueError otherwise."""
    import numpy as np

    from . import datasets

    if args.data == "digits":  # a fixed data set: --n, --data-noise do not apply
        return datasets.digits()
    if args.data in BUILTIN_DATA:
        return getattr(datasets, args.data)(args.n, args.data_noise, seed=args.seed)
    path = args.data
    _require(path.endswith((".npy", ".csv")),
             f"--data must be {', '.join(BUILTIN_DATA)}, or a .npy or .csv file of rows; got {path!r}")
    try:
        X, line_numbers = _read_npy(path) if path.endswith(".npy") else _read_csv(path, args.skip_header)
    except OSError as err:
        raise ValueError(f"cannot read --data {path!r}: {err.strerror or err}") from None
    bad = np.flatnonzero(~np.all(np.isfinite(X), axis=1))
    if len(bad):
        if line_numbers is not None:
            where = "lines " + ", ".join(str(line_numbers[i]) for i in bad[:10])
        else:
            where = "rows " + ", ".join(str(i) for i in bad[:10]) + " (counting from 0)"
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise ValueError(f"--data {path!r}: {len(bad)} row(s) contain NaN, infinite or missing values: "
                         f"{where}{more}; remove or impute them")
    _require(X.shape[0] >= 2 and X.shape[1] >= 1, f"--data {path!r} needs at least 2 rows; got shape {X.shape}")
    return X


# -- commands -------------------------------------------------------------------------------------

def _check_fit_args(args):
    _require(args.n >= 2, f"--n must be at least 2; got {args.n}")
    _require(args.data_noise >= 0, f"--data-noise must be >= 0; got {args.data_noise}")
    _require(args.latent_dim >= 1, f"--latent-dim must be at least 1; got {args.latent_dim}")
    _require(args.hidden and all(w >= 1 for w in args.hidden), f"--hidden widths must be >= 1; got {args.hidden}")
    _require(math.isfinite(args.alpha), f"--alpha must be finite; got {args.alpha}")
    _require(args.iterations >= 1, f"--iterations must be at least 1; got {args.iterations}")
    _require(args.tol >= 0, f"--tol must be >= 0; got {args.tol}")
    _require(args.weight_decay >= 0, f"--weight-decay must be >= 0; got {args.weight_decay}")
    _require(args.max_regions >= 1, f"--max-regions must be at least 1; got {args.max_regions}")
    _require(args.test_fraction is None or 0 < args.test_fraction < 1,
             f"--test-fraction must be between 0 and 1 (exclusive); got {args.test_fraction}")
    _check_writable(_npz_path(args.model), "--model")
    _check_figure_path(args.out, "--out")


def _npz_path(path):
    # np.savez appends .npz to a name without it; say where the file really goes.
    return path if path.endswith(".npz") else path + ".npz"


def _split(X, fraction, seed):
    import numpy as np

    n_test = int(round(fraction * len(X)))
    _require(2 <= n_test <= len(X) - 2, f"--test-fraction {fraction} of {len(X)} points leaves {n_test} test and "
                                        f"{len(X) - n_test} training points; both need at least 2")
    order = np.random.default_rng(seed).permutation(len(X))
    return X[np.sort(order[n_test:])], X[np.sort(order[:n_test])]


def demo(args):
    """``exactem demo``: enumerate a random decoder's regions; draw them when S = 2.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed flags of ``exactem demo``.

    Returns
    -------
    status : int
        0 on success.
    """
    import numpy as np

    from . import Decoder
    from .plots import _pyplot, plot_partition

    _require(len(args.widths) >= 2, f"--widths needs at least the latent and output widths; got {args.widths}")
    _require(all(w >= 1 for w in args.widths), f"--widths must all be >= 1; got {args.widths}")
    _require(args.extent > 0, f"--extent must be positive; got {args.extent}")
    _require(args.max_regions >= 1, f"--max-regions must be at least 1; got {args.max_regions}")
    if args.widths[0] == 2:
        _check_figure_path(args.out, "--out")
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


def fit(args):
    """``exactem fit``: check every input, train, report (held-out score too), save, draw.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed flags of ``exactem fit``.

    Returns
    -------
    status : int
        0 on success (errors are raised as ValueError before training).
    """
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning

    from . import ExactEM
    from .plots import plot_fit

    _check_fit_args(args)
    X = _load_data(args)
    X_test = None
    if args.test_fraction is not None:
        X, X_test = _split(X, args.test_fraction, args.seed)
    est = ExactEM(latent_dim=args.latent_dim, hidden=tuple(args.hidden), activation=args.activation,
                  alpha=args.alpha, noise=args.noise, max_iter=args.iterations, tol=args.tol,
                  weight_decay=args.weight_decay, max_regions=args.max_regions, random_state=args.seed,
                  verbose=not args.quiet, solver=args.solver)
    print(f"fitting {args.latent_dim}-D latent, hidden {tuple(args.hidden)}, {args.activation}, "
          f"{args.noise} noise, by {args.solver} on {X.shape[0]} points of dimension {X.shape[1]}"
          + (f" ({len(X_test)} held out)" if X_test is not None else ""))
    start = time.perf_counter()
    with warnings.catch_warnings():
        # The summary below says "not converged"; scikit-learn's warning would repeat it. Other
        # warnings (an underdetermined fit, say) are one line, like the errors.
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.showwarning = _show_warning
        est.fit(X)
    elapsed = time.perf_counter() - start
    print(f"{est.n_iter_} iterations in {elapsed:.2f} s ({'converged' if est.converged_ else 'not converged'}); "
          f"exact log-likelihood per point {est.history_[0]:.4f} -> {est.history_[-1]:.4f}; "
          f"{est.n_regions_[-1]} regions")
    if X_test is not None:
        print(f"held-out exact log-likelihood per point: {est.score(X_test):.4f} on {len(X_test)} points")
    model_path = _npz_path(args.model)
    est.model_.save(model_path, history=np.array(est.history_), n_regions=np.array(est.n_regions_))
    print(f"wrote {model_path}")
    fig = plot_fit(est, X, seed=args.seed, data_name=args.data, X_test=X_test)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


def add_fit_parser(sub):
    """Add the ``fit`` subcommand.

    Parameters
    ----------
    sub : argparse subparsers action
        From ``parser.add_subparsers()``.

    Returns
    -------
    parser : argparse.ArgumentParser
        The subcommand's parser.
    """
    p = sub.add_parser("fit", formatter_class=_Formatter,
                       help="train a deep generative network by exact EM and draw the result",
                       description=_paragraphs(
                           "Train a deep generative network by exact EM (or L-BFGS on the exact likelihood), "
                           "save it as .npz and draw data, samples, density and log-likelihood curve.",
                           "Data files: .npy holds an (n, D) array, or a 1-D array of n numbers read as n "
                           "points of dimension 1; .csv holds one point per line, comma-separated, and a first "
                           "line that is not all numbers is taken as a header (or use --skip-header)."))
    p.add_argument("--data", default="wave", help=f"{', '.join(BUILTIN_DATA)}, or a .npy/.csv file of rows")
    p.add_argument("--skip-header", action="store_true", help="skip the first line of a .csv file even if it is numeric")
    p.add_argument("--n", type=int, default=1000, help="points drawn from a built-in dataset")
    p.add_argument("--data-noise", type=float, default=0.1, help="noise standard deviation of a built-in dataset")
    p.add_argument("--test-fraction", type=float, default=None,
                   help="hold out this fraction of the points (at random, by --seed) and print their exact "
                        "log-likelihood per point")
    p.add_argument("--latent-dim", type=int, default=1, help="latent dimension S (1 and 2 are exact and fast)")
    p.add_argument("--hidden", type=_widths, default=[16, 16], help="hidden widths, comma-separated")
    p.add_argument("--activation", default="leaky_relu", choices=ACTIVATIONS, help="hidden activation")
    p.add_argument("--alpha", type=float, default=0.1, help="negative slope of leaky_relu")
    p.add_argument("--noise", default="isotropic", choices=["isotropic", "diagonal"], help="noise covariance")
    p.add_argument("--solver", default="em", choices=["em", "lbfgs"], help="exact EM, or L-BFGS on the exact likelihood")
    p.add_argument("--iterations", type=int, default=200, help="maximum number of iterations")
    p.add_argument("--tol", type=float, default=1e-6, help="stop when an iteration gains less (relative)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="L2 penalty on the weights")
    p.add_argument("--max-regions", type=int, default=1_000_000, help="largest number of latent regions allowed")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the initial network and the split")
    p.add_argument("--model", default="exactem_model.npz", help="where to write the fitted model (.npz)")
    p.add_argument("--out", default="exactem_fit.png", help="where to write the figure (.png, .pdf, .svg, ...)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=fit)
    return p


def add_demo_parser(sub):
    """Add the ``demo`` subcommand.

    Parameters
    ----------
    sub : argparse subparsers action
        From ``parser.add_subparsers()``.

    Returns
    -------
    parser : argparse.ArgumentParser
        The subcommand's parser.
    """
    p = sub.add_parser("demo", formatter_class=_Formatter,
                       help="enumerate the regions of a random decoder and draw them",
                       description="Enumerate every region of a random decoder's latent space, print a "
                                   "summary, and draw the partition when the latent space is 2-D.")
    p.add_argument("--widths", type=_widths, default=[2, 32, 32, 10], help="S,D_1,...,D: latent, hidden, output widths")
    p.add_argument("--activation", default="leaky_relu", choices=ACTIVATIONS, help="hidden activation")
    p.add_argument("--alpha", type=float, default=0.1, help="negative slope of leaky_relu")
    p.add_argument("--seed", type=int, default=0, help="seed of the random decoder")
    p.add_argument("--max-regions", type=int, default=1_000_000, help="largest number of regions allowed")
    p.add_argument("--extent", type=float, default=4.0, help="half-width of the plotted square")
    p.add_argument("--out", default="partition.png", help="where to write the figure")
    p.set_defaults(run=demo)
    return p


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


def add_cost_parser(sub):
    """``exactem cost``: regions, time per EM iteration and memory, predicted before training."""
    p = sub.add_parser("cost", help="predict the regions, time per EM iteration and memory of a fit before training",
                       formatter_class=_Formatter)
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
    from .compare import compare as run_comparison

    # The same checked reading as `fit` (CSV header, NaN rows named); the built-in curves drawn
    # with seed 0 whatever the seeds of the fits.
    X = _load_data(argparse.Namespace(data=args.data, n=args.n, data_noise=args.data_noise, seed=0,
                                      skip_header=args.skip_header))
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


def add_compare_parser(sub):
    p = sub.add_parser(
        "compare", formatter_class=_Formatter,
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
    p.add_argument("--skip-header", action="store_true", help="skip the first line of a .csv file even if it is numeric")
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


def build_parser():
    """The argument parser; each subcommand is added by one ``add_*_parser(sub)`` call.

    Returns
    -------
    parser : argparse.ArgumentParser
    """
    from . import __version__

    parser = argparse.ArgumentParser(prog="exactem", formatter_class=_Formatter,
                                     description="Exact inference and EM for piecewise-affine deep generative networks.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_fit_parser(sub)
    add_demo_parser(sub)
    add_cost_parser(sub)
    add_compare_parser(sub)
    return parser


def main(argv=None):
    """Run the command line.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (``sys.argv[1:]`` when omitted).

    Returns
    -------
    status : int
        0 on success, 2 for bad input (one line on stderr, ``exactem: error: ...``), 130 when
        interrupted.

    Examples
    --------
    >>> from exactem.cli import main
    >>> main(["fit", "--iterations", "0"])
    2
    """
    args = build_parser().parse_args(argv)
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
