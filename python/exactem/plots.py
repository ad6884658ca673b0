"""Pictures of partitions and models (matplotlib, imported lazily)."""

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_partition(partition, ax=None, extent=4.0, resolution=500, seed=0):
    """Draw the regions of a 2-D latent space on ``[-extent, extent]^2``.

    Each region gets a random colour, boundaries are drawn in black, and black dots are the
    regions' interior points.

    Parameters
    ----------
    partition : Partition
        The regions of a decoder with a 2-D latent space.
    ax : matplotlib Axes, optional
        Where to draw; a new figure when omitted.
    extent : float, default=4.0
        Half-width of the square drawn (latent units; the prior has unit variance).
    resolution : int, default=500
        Pixels per side.
    seed : int, default=0
        Seed of the colours.

    Returns
    -------
    ax : matplotlib Axes

    Examples
    --------
    >>> import exactem
    >>> from exactem.plots import plot_partition
    >>> ax = plot_partition(exactem.Decoder.random([2, 8, 8, 3], seed=0).regions(), resolution=100)
    >>> ax.get_xlabel()
    '$z_1$ (latent units)'
    """
    if partition.latent_dim != 2:
        raise ValueError(f"plot_partition draws 2-D latent spaces; this partition is in R^{partition.latent_dim}")
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    grid = np.linspace(-extent, extent, resolution)
    zz = np.stack(np.meshgrid(grid, grid), axis=-1).reshape(-1, 2)
    labels = partition.locate(zz).reshape(resolution, resolution)
    colours = np.random.default_rng(seed).uniform(0.25, 1.0, size=(len(partition), 3))
    ax.imshow(colours[labels], origin="lower", extent=(-extent, extent, -extent, extent), interpolation="nearest")
    # Region boundaries: where the label changes between neighbouring pixels.
    edge = np.zeros_like(labels, dtype=bool)
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    ax.imshow(np.where(edge[..., None], 0.0, np.nan) * np.ones(3), origin="lower",
              extent=(-extent, extent, -extent, extent), interpolation="nearest")
    pts = partition.interior_points
    inside = np.all(np.abs(pts) <= extent, axis=1)
    ax.plot(pts[inside, 0], pts[inside, 1], "k.", markersize=1.5)
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_xlabel("$z_1$ (latent units)")
    ax.set_ylabel("$z_2$ (latent units)")
    dec = partition.decoder
    acts = ", ".join(sorted(set(dec.activations))) or "linear"
    ax.set_title(f"{len(partition)} latent regions of decoder {dec.widths} ({acts})\n"
                 f"dots: a point inside each region; square [-{extent:g}, {extent:g}]^2 of R^2", fontsize="medium")
    return ax


def _describe(estimator, data_name, n_points):
    """The title: model, data, noise, final exact log-likelihood, convergence."""
    dec = estimator.decoder_
    acts = sorted(set(dec.activations)) or ["linear"]
    act = ", ".join(a + (f" (alpha {dec.alpha:g})" if a == "leaky_relu" else "") for a in acts)
    noise = estimator.noise_var_
    noise_text = (f"noise variance {noise:.3g}" if np.ndim(noise) == 0
                  else f"diagonal noise variances {np.min(noise):.3g} to {np.max(noise):.3g}")
    state = "converged" if estimator.converged_ else "not converged"
    data = f"{data_name}, " if data_name else ""
    return (f"Deep generative network {dec.widths} (latent, hidden..., output), {act}; fitted by "
            f"{estimator.solver.upper()} on {data}{n_points} points in {dec.output_dim}-D\n"
            f"{noise_text}; exact log-likelihood {estimator.history_[-1]:.4f} nats/point; "
            f"{state} after {estimator.n_iter_} iterations; {estimator.n_regions_[-1]} latent regions")


def _history_panel(ax, estimator, X_test):
    ax.plot(np.arange(len(estimator.history_)), estimator.history_, "-", color="C0", label="training data (exact)")
    if X_test is not None:
        ax.axhline(estimator.score(X_test), color="C3", linestyle="--",
                   label=f"held-out data, final model ({len(X_test)} points)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("exact log-likelihood (nats per point)")
    ax.set_title("exact log-likelihood per iteration")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)


def plot_fit(estimator, X, n_samples=2000, resolution=200, seed=0, data_name=None, X_test=None):
    """A figure of a fitted :class:`ExactEM`: data, model, exact density, training curve.

    The layout follows the data's dimension D. D = 1: a histogram of the data with the
    model's exact density ``p(x)`` drawn over it. D = 2: data and model samples overlaid, and
    the exact log-density on a grid with the data drawn over it. D > 2: a pairs plot of the
    first (up to four) coordinates, data and model samples overlaid (the exact density is
    D-dimensional and not drawn). Every figure also has the exact log-likelihood per
    iteration, and a title naming the model, data, noise, final log-likelihood and whether
    the fit converged.

    Parameters
    ----------
    estimator : ExactEM
        A fitted estimator.
    X : array-like of shape (n, D)
        The training data.
    n_samples : int, default=2000
        Draws from the model to show.
    resolution : int, default=200
        Grid points per axis of the density (D <= 2).
    seed : int, default=0
        Seed of the model draws.
    data_name : str, optional
        Name of the data set, for the title.
    X_test : array-like of shape (m, D), optional
        Held-out data; its exact log-likelihood per point is marked on the training curve.

    Returns
    -------
    fig : matplotlib.figure.Figure

    Examples
    --------
    >>> import exactem
    >>> from exactem.plots import plot_fit
    >>> X = exactem.datasets.circle(200, seed=0)
    >>> est = exactem.ExactEM(hidden=(8,), max_iter=400, tol=1e-4, random_state=0).fit(X)
    >>> fig = plot_fit(est, X, data_name="circle")
    >>> len(fig.axes)   # samples, density (and its colour bar), curve
    4
    """
    X = np.asarray(X, dtype=float)
    if X.ndim == 1:
        X = X[:, None]
    plt = _pyplot()
    D = X.shape[1]
    Xs, _ = estimator.sample(n_samples, random_state=seed)
    lo, hi = X.min(axis=0), X.max(axis=0)
    pad = 0.15 * np.maximum(hi - lo, 1e-12)
    lo, hi = lo - pad, hi + pad
    data_style = dict(s=4, alpha=0.6, color="C0", linewidths=0, label=f"data ({len(X)} points)")
    sample_style = dict(s=4, alpha=0.4, color="C1", linewidths=0, label=f"model samples ({n_samples})")
    if D == 1:
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
        grid = np.linspace(lo[0], hi[0], 2000)
        density = np.exp(estimator.score_samples(grid[:, None]))
        axes[0].hist(X[:, 0], bins=min(80, max(10, len(X) // 20)), density=True, color="C0", alpha=0.45,
                     label=f"data histogram ({len(X)} points)")
        axes[0].plot(grid, density, color="C3", lw=1.8, label="exact model density p(x)")
        axes[0].set_xlabel("$x$ (data units)")
        axes[0].set_ylabel("density (per data unit)")
        axes[0].set_xlim(lo[0], hi[0])
        axes[0].set_title("data and the model's exact density")
        axes[0].legend(fontsize="small")
        curve_ax = axes[1]
    elif D == 2:
        fig, axes = plt.subplots(1, 3, figsize=(19, 5.4))
        axes[0].scatter(X[:, 0], X[:, 1], **data_style)
        axes[0].scatter(Xs[:, 0], Xs[:, 1], **sample_style)
        axes[0].set_title("data and samples from the fitted model")
        axes[0].legend(loc="upper right", fontsize="small", markerscale=3)
        g0, g1 = np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution)
        grid = np.stack(np.meshgrid(g0, g1), axis=-1).reshape(-1, 2)
        logp = estimator.score_samples(grid).reshape(resolution, resolution)
        floor = max(np.quantile(logp, 0.05), logp.max() - 12.0)  # keep the colour scale on the data
        im = axes[1].imshow(np.maximum(logp, floor), origin="lower", extent=(lo[0], hi[0], lo[1], hi[1]),
                            aspect="auto", cmap="viridis")
        fig.colorbar(im, ax=axes[1], label=f"exact log p(x) (nats; clipped below at {floor:.1f})")
        axes[1].scatter(X[:, 0], X[:, 1], s=2, color="white", alpha=0.5, linewidths=0, label="data")
        axes[1].set_title("exact log-density of the fitted model, data overlaid")
        axes[1].legend(loc="upper right", fontsize="small", markerscale=3)
        for ax in axes[:2]:
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
            ax.set_xlabel("$x_1$ (data units)")
            ax.set_ylabel("$x_2$ (data units)")
        curve_ax = axes[2]
    else:
        k = min(D, 4)
        fig = plt.figure(figsize=(6.5 + 2.8 * k, 2.8 * k + 1.4))
        grid_spec = fig.add_gridspec(k, k + 1, width_ratios=[1.0] * k + [max(1.6, 0.7 * k)])
        for i in range(k):
            for j in range(k):
                ax = fig.add_subplot(grid_spec[i, j])
                if i == j:
                    bins = np.linspace(lo[i], hi[i], 40)
                    ax.hist(X[:, i], bins=bins, density=True, color="C0", alpha=0.5)
                    ax.hist(Xs[:, i], bins=bins, density=True, histtype="step", color="C1", lw=1.4)
                    ax.set_yticks([])
                else:
                    ax.scatter(X[:, j], X[:, i], **{**data_style, "s": 2})
                    ax.scatter(Xs[:, j], Xs[:, i], **{**sample_style, "s": 2})
                    ax.set_ylim(lo[i], hi[i])
                ax.set_xlim(lo[j], hi[j])
                if i == k - 1:
                    ax.set_xlabel(f"$x_{{{j + 1}}}$ (data units)")
                if j == 0 and i != 0:
                    ax.set_ylabel(f"$x_{{{i + 1}}}$ (data units)")
                if i == 0 and j == 1:
                    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.02), fontsize="small", markerscale=4, ncol=2)
        shown = f"the first {k} of {D} coordinates" if k < D else f"all {D} coordinates"
        fig.text(0.01, 0.005, f"Pairs plot of {shown}: data (blue) and model samples (orange); diagonal: "
                              f"marginal histograms. The exact density is {D}-dimensional and is not drawn.",
                 fontsize="small", ha="left", va="bottom")
        curve_ax = fig.add_subplot(grid_spec[:, k:])
    _history_panel(curve_ax, estimator, X_test)
    fig.suptitle(_describe(estimator, data_name, len(X)), fontsize="medium")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig
