"""Pictures of partitions and models (matplotlib, imported lazily)."""

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_partition(partition, ax=None, extent=4.0, resolution=500, seed=0):
    """Draw the regions of a 2-D latent space on ``[-extent, extent]^2``.

    Each region gets a random colour; black dots are the regions' interior points.
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
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_title(f"{len(partition)} regions of {partition.decoder.widths}")
    return ax


def plot_fit(estimator, X, n_samples=2000, resolution=200, seed=0):
    """A four-panel figure of a fitted :class:`ExactEM` on 2-D data: the data, samples from the
    model, the model's exact log-density on a grid, and the exact log-likelihood per iteration."""
    X = np.asarray(X, dtype=float)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.4))
    lo, hi = X.min(axis=0), X.max(axis=0)
    pad = 0.15 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    Xs, _ = estimator.sample(n_samples, random_state=seed)
    for ax, pts, title in [(axes[0], X, f"data ({len(X)} points)"), (axes[1], Xs, f"{n_samples} model samples")]:
        ax.plot(pts[:, 0], pts[:, 1], ".", markersize=2, alpha=0.6)
        ax.set_title(title)
    if X.shape[1] == 2:
        g0, g1 = np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution)
        grid = np.stack(np.meshgrid(g0, g1), axis=-1).reshape(-1, 2)
        logp = estimator.score_samples(grid).reshape(resolution, resolution)
        floor = max(np.quantile(logp, 0.05), logp.max() - 12.0)  # keep the colour scale on the data
        im = axes[2].imshow(np.maximum(logp, floor), origin="lower", extent=(lo[0], hi[0], lo[1], hi[1]),
                            aspect="auto", cmap="viridis")
        fig.colorbar(im, ax=axes[2], label="exact log p(x)")
        axes[2].set_title("learned density")
    else:
        axes[2].text(0.5, 0.5, f"density shown for 2-D data only (D = {X.shape[1]})", ha="center", va="center")
        axes[2].set_axis_off()
    for ax in axes[:2]:
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
    axes[3].plot(np.arange(len(estimator.history_)), estimator.history_, "-")
    axes[3].set_xlabel("iteration")
    axes[3].set_ylabel("exact mean log-likelihood")
    axes[3].set_title(f"{estimator.solver.upper()}: {estimator.n_regions_[-1]} regions at the end")
    fig.suptitle(f"{estimator.decoder_!r}")
    fig.tight_layout()
    return fig
